"""Request builders and response readers for both APIs, shared by the client and the load tester.

Images for Classify are either encoded files (PNG/JPEG bytes, preprocessed by the server) or
float32 [C, H, W] tensors that are already scaled and normalized like the model's input.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np

from edgecnn.protos import classifier_pb2, inference_pb2
from edgecnn.repository import INPUT_NAME

FP32 = "FP32"
INFER_METHOD = "/inference.GRPCInferenceService/ModelInfer"
CLASSIFY_METHOD = "/edgecnn.v1.Classifier/Classify"

ImageInput = bytes | np.ndarray


@dataclass(frozen=True)
class Prediction:
    label: str
    index: int
    score: float


def as_batch(array: np.ndarray) -> np.ndarray:
    """float32 little-endian (N, C, H, W); a single (C, H, W) sample becomes a batch of one."""
    x = np.asarray(array)
    if not np.issubdtype(x.dtype, np.floating):
        raise ValueError(f"infer input has dtype {x.dtype}; expected float32 (a preprocessed tensor)")
    if x.ndim == 3:
        x = x[None]
    if x.ndim != 4 or x.shape[0] < 1:
        raise ValueError(f"infer input has shape {list(x.shape)}; expected [C, H, W] or [N, C, H, W]")
    return np.ascontiguousarray(x, dtype="<f4")


def infer_request(model: str, version: int | None, array: np.ndarray, input_name: str = INPUT_NAME) -> inference_pb2.ModelInferRequest:
    x = as_batch(array)
    request = inference_pb2.ModelInferRequest(model_name=model, model_version="" if version is None else str(version))
    request.inputs.add(name=input_name, datatype=FP32, shape=list(x.shape))
    request.raw_input_contents.append(x.tobytes())
    return request


def read_logits(response: inference_pb2.ModelInferResponse) -> np.ndarray:
    """The first output of a ModelInfer response as float32 of its declared shape."""
    if not response.outputs:
        raise ValueError("the ModelInfer response holds no output tensor")
    out = response.outputs[0]
    if out.datatype != FP32:
        raise ValueError(f"output {out.name!r} has datatype {out.datatype!r}; expected {FP32!r}")
    shape = tuple(int(d) for d in out.shape)
    if response.raw_output_contents:
        values = np.frombuffer(response.raw_output_contents[0], dtype="<f4")
    else:
        values = np.asarray(out.contents.fp32_contents, dtype=np.float32)
    if values.size != int(np.prod(shape)):
        raise ValueError(f"output {out.name!r} holds {values.size} values; its shape {list(shape)} needs {int(np.prod(shape))}")
    return values.astype(np.float32).reshape(shape)


def image_message(image: ImageInput) -> classifier_pb2.Image:
    if isinstance(image, bytes | bytearray | memoryview):
        return classifier_pb2.Image(encoded=bytes(image))
    if isinstance(image, np.ndarray):
        if not np.issubdtype(image.dtype, np.floating) or image.ndim != 3:
            raise ValueError(
                f"image tensor has dtype {image.dtype} and shape {list(image.shape)}; "
                "expected a float32 [C, H, W] preprocessed tensor (or encoded PNG/JPEG bytes)"
            )
        x = np.ascontiguousarray(image, dtype="<f4")
        return classifier_pb2.Image(tensor=classifier_pb2.FloatTensor(shape=list(x.shape), data=x.tobytes()))
    raise TypeError(f"image of type {type(image).__name__}; expected encoded PNG/JPEG bytes or a float32 [C, H, W] array")


def classify_request(
    model: str, version: int | None, images: Iterable[ImageInput], top_k: int = 1
) -> classifier_pb2.ClassifyRequest:
    if top_k < 1:
        raise ValueError(f"top_k {top_k}: expected a positive number of classes")
    request = classifier_pb2.ClassifyRequest(model=model, top_k=top_k)
    if version is not None:
        request.version = version
    request.images.extend(image_message(image) for image in images)
    if not request.images:
        raise ValueError("no images to classify; expected at least one")
    return request


def read_predictions(response: classifier_pb2.ClassifyResponse) -> list[list[Prediction]]:
    return [[Prediction(p.label, p.index, p.score) for p in result.predictions] for result in response.results]
