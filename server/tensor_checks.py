"""Open Inference Protocol tensors, protocol-neutral: what a front end (gRPC today) decodes a
request into, and the checks against one model version that turn bad input into
INVALID_ARGUMENT messages naming what was expected."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import NamedTuple

import numpy as np

from .errors import InvalidArgument
from .model_version import ModelVersion

DATATYPE = "FP32"
CLASSIFICATION = "classification"


# NamedTuples, not frozen dataclasses: every request builds them, and a frozen dataclass's
# __init__ costs several times a tuple's on that path.
class InputTensor(NamedTuple):
    """One request input as sent: raw little-endian bytes, or typed values (flat)."""

    name: str
    datatype: str
    shape: tuple[int, ...]
    raw: bytes | None = None
    values: Sequence[float] | None = None
    raw_field: str = "raw contents"  # how the protocol names the bytes, for messages
    values_field: str = "contents"


class RequestedOutput(NamedTuple):
    name: str
    # Triton's classification extension ("classification" output parameter); 0 for logits.
    class_count: int = 0


class InferOutcome(NamedTuple):
    model: ModelVersion
    logits: np.ndarray  # float32 (N, classes)
    class_count: int  # > 0: answer the top classes as strings instead of the logits

    def classification(self) -> list[bytes]:
        """Triton's classification output: per row the top class_count "value:index:label"
        strings ("value:index" for a model without labels), highest first."""
        mv = self.model
        labels = mv.labels if mv.has_labels else None
        return [
            (f"{row[i]:f}:{i}" + (f":{labels[i]}" if labels else "")).encode()
            for row, indices in zip(self.logits, top_classes(self.logits, self.class_count))
            for i in indices
        ]


NONFINITE = "holds NaN or infinite values; expected finite float32 numbers"


def check_finite(x: np.ndarray, what: str) -> None:
    if not np.isfinite(x).all():
        raise InvalidArgument(f"{what} {NONFINITE}")


def top_classes(values: np.ndarray, k: int) -> np.ndarray:
    """Per row the indices of the k highest values, highest first (ties: the lower index)."""
    return np.argsort(-values, axis=1, kind="stable")[:, :k]


def input_batch(
    inputs: Sequence[InputTensor],
    mv: ModelVersion,
    reject_nonfinite: bool = True,
    on_nonfinite: Callable[[ModelVersion], None] | None = None,
) -> np.ndarray:
    """The request's single input as float32 (N, C, H, W). An input holding NaN or infinite
    values is refused (INVALID_ARGUMENT) when reject_nonfinite, else accepted as Triton does
    (perf_analyzer's default random data holds such bit patterns); either way on_nonfinite(mv)
    is called first (the data plane counts them)."""
    if len(inputs) != 1:
        raise InvalidArgument(f"expected exactly 1 input tensor named {mv.input_name!r}, got {len(inputs)}")
    tensor = inputs[0]
    if tensor.name != mv.input_name:
        raise InvalidArgument(f"unknown input {tensor.name!r}; expected {mv.input_name!r}")
    if tensor.datatype != DATATYPE:
        raise InvalidArgument(f"input {tensor.name!r} has datatype {tensor.datatype!r}; expected {DATATYPE!r}")
    shape = tuple(tensor.shape)
    c, h, w = mv.input_shape
    if len(shape) != 4 or shape[1:] != mv.input_shape or shape[0] < 1:
        raise InvalidArgument(f"input {tensor.name!r} has shape {list(shape)}; expected [N, {c}, {h}, {w}] with N >= 1")
    n = shape[0]
    limit = mv.serving.batch_limit
    if n > limit:
        raise InvalidArgument(f"batch of {n} exceeds the max batch size of model {mv.name!r} ({limit})")
    if tensor.raw is not None:
        if len(tensor.raw) != n * mv.sample_nbytes:
            raise InvalidArgument(
                f"input {tensor.name!r}: {tensor.raw_field} hold {len(tensor.raw)} bytes; expected {n * mv.sample_nbytes} "
                f"(shape {list(shape)} x 4 bytes of little-endian float32)"
            )
        x = np.frombuffer(tensor.raw, dtype="<f4").reshape(shape)
    else:
        values = tensor.values if tensor.values is not None else ()
        if len(values) != n * mv.sample_size:
            raise InvalidArgument(
                f"input {tensor.name!r}: {tensor.values_field} holds {len(values)} values; "
                f"expected {n * mv.sample_size} for shape {list(shape)} (or send {tensor.raw_field})"
            )
        x = np.asarray(values, dtype=np.float32).reshape(shape)
    if not np.isfinite(x).all():  # one pass over the tensor, as the finite check always was
        if on_nonfinite is not None:
            on_nonfinite(mv)
        if reject_nonfinite:
            raise InvalidArgument(f"input {tensor.name!r} {NONFINITE}")
    return x


def class_count(outputs: Sequence[RequestedOutput], mv: ModelVersion) -> int:
    """The top classes asked for (0: the logits); as Triton, more classes than there are gives them all."""
    count = 0
    for wanted in outputs:
        if wanted.name != mv.output_name:
            raise InvalidArgument(f"unknown output {wanted.name!r}; expected {mv.output_name!r}")
        count = wanted.class_count or count
    return min(count, mv.num_classes)
