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

import numpy as np
from PIL import Image

from edgecnn.protos import classifier_pb2

from .errors import InvalidArgument
from .runtime import ModelVersion
from .settings import DEFAULT_MAX_IMAGE_PIXELS
from .tensors import check_finite

_MODES = {1: "L", 3: "RGB"}
# Pillow warns on opening an image of > 89M pixels; decode_image refuses those itself, before decoding.
warnings.filterwarnings("ignore", category=Image.DecompressionBombWarning)


FORMATS = ("PNG", "JPEG")


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


def decode_tensor(tensor: classifier_pb2.FloatTensor, mv: ModelVersion, what: str) -> np.ndarray:
    c, h, w = mv.input_shape
    if tuple(tensor.shape) != mv.input_shape:
        raise InvalidArgument(f"{what}: tensor shape {list(tensor.shape)}; expected [{c}, {h}, {w}]")
    if len(tensor.data) != mv.sample_nbytes:
        raise InvalidArgument(
            f"{what}: tensor data holds {len(tensor.data)} bytes; expected {mv.sample_nbytes} "
            f"({c}x{h}x{w} little-endian float32)"
        )
    x = np.frombuffer(tensor.data, dtype="<f4").reshape(mv.input_shape)
    check_finite(x, what)
    return x


def has_encoded(images) -> bool:
    return any(image.WhichOneof("source") == "encoded" for image in images)


def images_to_batch(images, mv: ModelVersion, max_pixels: int = DEFAULT_MAX_IMAGE_PIXELS) -> np.ndarray:
    """Stack Classify's images into a float32 (N, C, H, W) batch (blocking when images are encoded)."""
    if not images:
        raise InvalidArgument("no images; expected at least one encoded image or tensor")
    rows = []
    for i, image in enumerate(images):
        what = f"image {i}"
        source = image.WhichOneof("source")
        if source == "encoded":
            rows.append(decode_image(image.encoded, mv, what, max_pixels))
        elif source == "tensor":
            rows.append(decode_tensor(image.tensor, mv, what))
        else:
            raise InvalidArgument(f"{what} is empty; expected encoded PNG/JPEG bytes or a float tensor")
    return np.ascontiguousarray(np.stack(rows), dtype=np.float32)


def softmax(logits: np.ndarray) -> np.ndarray:
    shifted = logits - logits.max(axis=1, keepdims=True)
    exp = np.exp(shifted)
    return exp / exp.sum(axis=1, keepdims=True)
