"""Fixed batch shapes for the CUDA provider: one ONNX Runtime session per batch size bucket.

ONNX Runtime's CUDA convolutions set themselves up again (cuDNN descriptors, algorithm choice,
workspace) whenever a session is called with an input shape other than its previous call's.
On an H100 (ONNX Runtime 1.31, cuDNN 9; docs/benchmarks-gpu.md) a change of batch size cost
about 6 ms for LeNet-5 and 1.6 s for MobileNetV2 (read off the latencies), so a dynamic batcher,
whose batch sizes vary from call to call, spent its time setting up kernels: batching on served
MobileNetV2 at 1% of batching off's requests per second. Here a batch is padded with zero rows up to the next bucket (powers of two
up to the max batch size) and runs in that bucket's own session, which therefore only ever sees
one shape; every bucket is warmed up at load. The padding is cheap where this is used: on a GPU
a small model's batch of 8 costs about what a batch of 5 does.
"""

from __future__ import annotations

import bisect
from collections.abc import Callable

import numpy as np
import onnxruntime as ort


def bucket_sizes(max_batch_size: int) -> list[int]:
    """1, 2, 4, ... below max_batch_size, then max_batch_size itself."""
    sizes = [1]
    while sizes[-1] * 2 < max_batch_size:
        sizes.append(sizes[-1] * 2)
    if max_batch_size > 1:
        sizes.append(max_batch_size)
    return sizes


class ShapeBuckets:
    def __init__(
        self,
        first: ort.InferenceSession,
        open_session: Callable[[], ort.InferenceSession],
        max_batch_size: int,
        input_name: str,
        output_name: str,
    ) -> None:
        self.sizes = bucket_sizes(max_batch_size)
        self.sessions = {size: first if size == 1 else open_session() for size in self.sizes}
        self._input, self._output = input_name, output_name

    def bucket(self, rows: int) -> int | None:
        """The bucket a batch of `rows` runs in (None: more rows than the largest bucket)."""
        i = bisect.bisect_left(self.sizes, rows)
        return self.sizes[i] if i < len(self.sizes) else None

    def run(self, batch: np.ndarray) -> np.ndarray:
        rows = len(batch)
        size = self.bucket(rows)
        if size is None:  # more rows than the server ever batches: in pieces of the largest bucket
            top = self.sizes[-1]
            return np.concatenate([self.run(batch[i : i + top]) for i in range(0, rows, top)])
        if size > rows:
            padded = np.zeros((size, *batch.shape[1:]), dtype=batch.dtype)
            padded[:rows] = batch
            batch = padded
        return self.sessions[size].run([self._output], {self._input: batch})[0][:rows]
