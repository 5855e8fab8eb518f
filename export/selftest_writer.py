"""A version's load-time self-test: golden inputs and the logits its exported file gives for them.

`edgecnn export` writes V/selftest.npz (edgecnn.repository.SELFTEST_NAME) next to V/model.onnx,
inside the same atomic move into the repository. A server runs `inputs` through its own session
(whatever execution provider it chose) when it loads the version and refuses the version when
edgecnn.repository.check_selftest does not accept the outputs. The format (np.savez):

    inputs  float32 [N, C, H, W]  real test images preprocessed as the server preprocesses image
                                  files (else standard-normal random inputs)
    logits  float32 [N, K]        ONNX Runtime CPU outputs of the exported model.onnx itself
    atol    float32 scalar        the tolerance check_selftest applies:
    rtol    float32 scalar          |output - logit| <= atol + rtol * |logit|, and the same top-1
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from edgecnn.export.cpu_inference import make_session, run_batched
from edgecnn.export.data import dataset_pixels, random_inputs
from edgecnn.repository import Meta

SELFTEST_IMAGES = 8
# Candidates the golden inputs are picked from: those whose top-1 class wins by more than twice the
# tolerance, so that an execution provider within tolerance cannot flip it.
CANDIDATES = 64
# INT8/FP16 on another execution provider: a QDQ graph runs integer kernels on the CPU but may run
# dequantized float kernels (or fuse differently) on CUDA, which moves a logit by a few of its
# quantization steps (one step is ~0.4% of the logit range at 8 bits); FP16 accumulates in a
# different order on tensor cores (~1e-3 relative per layer). Both errors scale with the logits'
# range, not with each logit, hence an absolute tolerance of 5% of the largest |logit|, and at least
# 1e-2 for models whose logits are all small (untrained ones).
LOW_PRECISION_ATOL = 1e-2
LOW_PRECISION_RELATIVE = 0.05


def server_preprocess(pixels: np.ndarray, metadata: dict[str, Any]) -> np.ndarray:
    """uint8 NCHW pixels to the float32 input the server computes from an image file, with the same
    float32 operations (server/images.py: pixels * pixel_scale - mean, / std, per channel)."""
    channels = pixels.shape[1]
    mean = np.asarray(metadata[Meta.MEAN], dtype=np.float32).reshape(-1)
    std = np.asarray(metadata[Meta.STD], dtype=np.float32).reshape(-1)
    mean, std = (np.repeat(a, channels) if a.size == 1 else a for a in (mean, std))
    x = pixels.astype(np.float32) * float(metadata[Meta.PIXEL_SCALE])
    return ((x - mean.reshape(channels, 1, 1)) / std.reshape(channels, 1, 1)).astype(np.float32)


def selftest_tolerance(quantization: str, logits: np.ndarray, atol: float, rtol: float) -> tuple[float, float]:
    """(atol, rtol) for check_selftest. FP32: the verification's bar; verification scales rtol with a
    sample's largest |logit| and check_selftest with each logit, so it is folded into atol.
    INT8/FP16: see LOW_PRECISION_ATOL (the largest |logit| of the candidate inputs)."""
    largest = float(np.abs(logits).max(initial=0.0))
    if quantization == "none":
        return atol + rtol * largest, 0.0
    return max(LOW_PRECISION_ATOL, LOW_PRECISION_RELATIVE * largest), 0.0


def _pick(logits: np.ndarray, atol: float, count: int) -> np.ndarray:
    """count row indices, ascending: the first rows whose top-1 leads the runner-up by more than
    2 * atol, topped up (if too few do) with the others of largest lead."""
    ranked = np.sort(logits, axis=1)
    margin = ranked[:, -1] - ranked[:, -2] if logits.shape[1] > 1 else np.full(len(logits), np.inf)
    clear = margin > 2 * atol
    order = np.lexsort((np.where(clear, np.arange(len(logits)), -margin), ~clear))
    return np.sort(order[:count])


def build_selftest(
    onnx_path: Path, metadata: dict[str, Any], atol: float, rtol: float, data_dir: str | Path | None, seed: int = 0
) -> dict[str, np.ndarray]:
    """The arrays of selftest.npz for the exported file at onnx_path (atol/rtol: the verification's)."""
    input_shape = metadata[Meta.INPUT_SHAPE]
    pixels, _ = dataset_pixels(metadata[Meta.DATASET], "test", CANDIDATES, input_shape, data_dir)
    if pixels is not None:
        candidates = server_preprocess(pixels, metadata)
    else:
        candidates = random_inputs(CANDIDATES, input_shape, seed)
    logits = run_batched(make_session(onnx_path), candidates).astype(np.float32)
    atol, rtol = selftest_tolerance(metadata.get(Meta.QUANTIZATION, "none"), logits, atol, rtol)
    rows = _pick(logits, atol, SELFTEST_IMAGES)
    return {
        "inputs": np.ascontiguousarray(candidates[rows]),
        "logits": np.ascontiguousarray(logits[rows]),
        "atol": np.float32(atol),
        "rtol": np.float32(rtol),
    }


def write_selftest(path: Path, arrays: dict[str, np.ndarray]) -> None:
    with open(path, "wb") as f:  # a file object: np.savez adds no suffix to it
        np.savez(f, **arrays)
