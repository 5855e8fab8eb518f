"""Image files for Classify: PNG/JPEG go to the server as encoded bytes; a .npy holds one
preprocessed float32 tensor [C, H, W] or a stack of them [N, C, H, W]."""

from __future__ import annotations

import io
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from .messages import ImageInput

ENCODED_SUFFIXES = {".png", ".jpg", ".jpeg"}
# What the suffix promises, checked against the file's first bytes.
_MAGIC = {".png": b"\x89PNG\r\n\x1a\n", ".jpg": b"\xff\xd8\xff", ".jpeg": b"\xff\xd8\xff"}


class InputFileError(ValueError):
    """A file the client cannot send: missing, unreadable or of the wrong kind."""


@dataclass(frozen=True)
class NamedImage:
    name: str  # the file, with [i] for one sample of a .npy stack
    image: ImageInput


def _read_npy(path: Path) -> list[NamedImage]:
    try:
        array = np.load(path, allow_pickle=False)
    except (ValueError, OSError, EOFError) as exc:
        raise InputFileError(f"{path}: not a readable .npy file ({exc})") from None
    if not isinstance(array, np.ndarray):  # np.load reads an .npz archive whatever its name
        array.close()
        raise InputFileError(f"{path}: an .npz archive; expected a .npy file holding one array")
    if not np.issubdtype(array.dtype, np.floating):
        raise InputFileError(f"{path}: dtype {array.dtype}; expected a float32 preprocessed tensor")
    if array.ndim == 3:
        return [NamedImage(str(path), array.astype(np.float32))]
    if array.ndim == 4 and array.shape[0] >= 1:
        return [NamedImage(f"{path}[{i}]", sample.astype(np.float32)) for i, sample in enumerate(array)]
    raise InputFileError(f"{path}: shape {list(array.shape)}; expected [C, H, W] or [N, C, H, W]")


def read_image_file(path: Path | str) -> list[NamedImage]:
    """The images in one file, in order."""
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix != ".npy" and suffix not in ENCODED_SUFFIXES:
        raise InputFileError(f"{path}: unsupported file type {suffix or '(none)'!r}; expected .png, .jpg, .jpeg or .npy")
    if not path.is_file():
        raise InputFileError(f"{path}: no such file")
    if suffix == ".npy":
        return _read_npy(path)
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise InputFileError(f"{path}: cannot read it ({exc.strerror})") from None
    if not data.startswith(_MAGIC[suffix]):
        raise InputFileError(f"{path}: not a {suffix[1:].upper()} file (its first bytes do not match)")
    return [NamedImage(str(path), data)]


def read_image_files(paths: list[Path | str]) -> list[NamedImage]:
    return [image for path in paths for image in read_image_file(path)]


def encode_png(pixels: np.ndarray) -> bytes:
    """PNG bytes of uint8 pixels laid out [C, H, W] with C = 1 (grey) or 3 (RGB)."""
    if pixels.dtype != np.uint8 or pixels.ndim != 3 or pixels.shape[0] not in (1, 3):
        raise ValueError(f"pixels of dtype {pixels.dtype}, shape {list(pixels.shape)}; expected uint8 [1 or 3, H, W]")
    image = Image.fromarray(pixels[0]) if pixels.shape[0] == 1 else Image.fromarray(pixels.transpose(1, 2, 0))
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()
