"""Classify's inputs -> the model's normalized float32 (C, H, W): encoded PNG/JPEG files are
decoded with pillow, converted to the model's channels, resized, scaled and normalized.

Only PNG and JPEG are opened, and an image's dimensions (read from its header) are checked
against a pixel budget before anything is decoded: a few KB of PNG can declare 13000x13000
pixels and would otherwise cost gigabytes. Decoding is blocking work; callers run
images_to_batch off the event loop when a request holds encoded images.
"""

from __future__ import annotations

import io
import warnings
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from PIL import Image

from .errors import InvalidArgument
from .model_version import ModelVersion
from .settings import DEFAULT_MAX_IMAGE_PIXELS
from .tensor_checks import check_finite

_MODES = {1: "L", 3: "RGB"}
# Pillow warns on opening an image of > 89M pixels; decode_image refuses those itself, before decoding.
warnings.filterwarnings("ignore", category=Image.DecompressionBombWarning)


FORMATS = ("PNG", "JPEG")


@dataclass(frozen=True)
class ImageInput:
    """One image to classify as a front end received it: encoded file bytes, or a preprocessed
    float32 tensor (shape and little-endian bytes); neither: an empty image."""

    encoded: bytes | None = None
    tensor_shape: tuple[int, ...] | None = None
    tensor_data: bytes = b""


def decode_image(data: bytes, mv: ModelVersion, what: str, max_pixels: int = DEFAULT_MAX_IMAGE_PIXELS) -> np.ndarray:
    c, h, w = mv.input_shape
    mode = _MODES.get(c)
    if mode is None:
        raise InvalidArgument(f"model {mv.name!r} takes {c}-channel input; send preprocessed tensors instead of image files")
    try:
        with Image.open(io.BytesIO(data), formats=FORMATS) as image:
            width, height = image.size
            if width * height > max_pixels:
                raise InvalidArgument(
                    f"{what}: {width}x{height} pixels exceed the server's limit of {max_pixels} pixels per image "
                    f"(--max-image-pixels); expected a smaller PNG or JPEG, e.g. {w}x{h} like the model's input"
                )
            image = image.convert(mode)
            if image.size != (w, h):
                image = image.resize((w, h), Image.Resampling.BILINEAR)
            pixels = np.asarray(image, dtype=np.float32)
    except InvalidArgument:
        raise
    except Exception as exc:  # noqa: BLE001 - Pillow's decoders raise many types on corrupt bytes (SyntaxError, EOFError, zlib.error, ...)
        raise InvalidArgument(f"{what}: cannot decode the image ({exc}); expected PNG or JPEG file bytes") from None
    chw = pixels[None] if c == 1 else pixels.transpose(2, 0, 1)
    return (chw * mv.pixel_scale - mv.mean) / mv.std


def decode_tensor(shape: tuple[int, ...], data: bytes, mv: ModelVersion, what: str) -> np.ndarray:
    c, h, w = mv.input_shape
    if tuple(shape) != mv.input_shape:
        raise InvalidArgument(f"{what}: tensor shape {list(shape)}; expected [{c}, {h}, {w}]")
    if len(data) != mv.sample_nbytes:
        raise InvalidArgument(
            f"{what}: tensor data holds {len(data)} bytes; expected {mv.sample_nbytes} "
            f"({c}x{h}x{w} little-endian float32)"
        )
    x = np.frombuffer(data, dtype="<f4").reshape(mv.input_shape)
    check_finite(x, what)
    return x


def has_encoded(images: Sequence[ImageInput]) -> bool:
    return any(image.encoded is not None for image in images)


def images_to_batch(images: Sequence[ImageInput], mv: ModelVersion, max_pixels: int = DEFAULT_MAX_IMAGE_PIXELS) -> np.ndarray:
    """Stack Classify's images into a float32 (N, C, H, W) batch (blocking when images are encoded)."""
    if not images:
        raise InvalidArgument("no images; expected at least one encoded image or tensor")
    rows = []
    for i, image in enumerate(images):
        what = f"image {i}"
        if image.encoded is not None:
            rows.append(decode_image(image.encoded, mv, what, max_pixels))
        elif image.tensor_shape is not None:
            rows.append(decode_tensor(image.tensor_shape, image.tensor_data, mv, what))
        else:
            raise InvalidArgument(f"{what} is empty; expected encoded PNG/JPEG bytes or a float tensor")
    return np.ascontiguousarray(np.stack(rows), dtype=np.float32)


def softmax(logits: np.ndarray) -> np.ndarray:
    shifted = logits - logits.max(axis=1, keepdims=True)
    exp = np.exp(shifted)
    return exp / exp.sum(axis=1, keepdims=True)
