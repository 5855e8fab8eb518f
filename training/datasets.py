"""Image-classification datasets read from their standard files (numpy only, no torch).

- mnist, fashion-mnist: the four idx files, gzipped or not.
- cifar10: the python pickled batches (``cifar-10-batches-py``).

Each dataset is looked for in ``--data-dir`` when one is given (only there: a typo must not
silently fall back to other files), else in, in order: ``$EDGECNN_DATA``,
``/usr/share/datasets/<name>`` (Debian's dataset packages) and ``~/.cache/edgecnn/<name>``.
Within a place, the files may lie directly in it, in ``<place>/<name>/`` or in torchvision's
layout (``<place>/FashionMNIST/raw``, ``<place>/MNIST/raw``, ``<place>/cifar-10-batches-py``).
``download=True`` fetches through torchvision into the first place (needs torch).
"""

from __future__ import annotations

import gzip
import os
import pickle
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

FASHION_CLASSES = [
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
    "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
]
DIGIT_CLASSES = [str(i) for i in range(10)]
CIFAR10_CLASSES = [
    "airplane", "automobile", "bird", "cat", "deer",
    "dog", "frog", "horse", "ship", "truck",
]


@dataclass(frozen=True)
class DatasetInfo:
    name: str
    classes: list[str]
    shape: tuple[int, int, int]  # (C, H, W)
    mean: tuple[float, ...]
    std: tuple[float, ...]
    torchvision_dir: str  # folder name torchvision uses under its root
    debian_package: str | None


DATASETS: dict[str, DatasetInfo] = {
    "mnist": DatasetInfo(
        "mnist", DIGIT_CLASSES, (1, 28, 28), (0.1307,), (0.3081,), "MNIST", "dataset-mnist"
    ),
    "fashion-mnist": DatasetInfo(
        "fashion-mnist", FASHION_CLASSES, (1, 28, 28), (0.2860,), (0.3530,), "FashionMNIST",
        "dataset-fashion-mnist",
    ),
    "cifar10": DatasetInfo(
        "cifar10", CIFAR10_CLASSES, (3, 32, 32), (0.4914, 0.4822, 0.4465),
        (0.2470, 0.2435, 0.2616), "cifar-10-batches-py", None,
    ),
}

IDX_FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}
CIFAR_FILES = {"train": [f"data_batch_{i}" for i in range(1, 6)], "test": ["test_batch"]}


SYSTEM_DATA_ROOT = Path("/usr/share/datasets")  # where Debian's dataset-* packages install


class DatasetNotFoundError(FileNotFoundError):
    pass


class DatasetFileError(ValueError):
    """A dataset file is there but unreadable (truncated, corrupt, or another dataset's)."""


# The first test labels of the real MNIST and Fashion-MNIST: their idx files share names, and a
# folder of one must not be read as the other.
FIRST_TEST_LABELS = {"mnist": [7, 2, 1, 0, 4, 1, 4, 9, 5, 9], "fashion-mnist": [9, 2, 1, 1, 6, 1, 4, 6, 5, 7]}


@dataclass
class Split:
    """One split held in memory: uint8 images (N, C, H, W) and int64 labels (N,)."""

    name: str
    split: str
    images: np.ndarray
    labels: np.ndarray
    classes: list[str]
    mean: tuple[float, ...]
    std: tuple[float, ...]

    def __len__(self) -> int:
        return len(self.labels)

    def normalized(self, start: int = 0, stop: int | None = None) -> np.ndarray:
        """Float32 NCHW images scaled to [0, 1] then standardized with the dataset's mean/std."""
        return normalize(self.images[start:stop], self.mean, self.std)


def normalize(images: np.ndarray, mean: tuple[float, ...], std: tuple[float, ...]) -> np.ndarray:
    x = images.astype(np.float32) / 255.0
    m = np.asarray(mean, dtype=np.float32).reshape(1, -1, 1, 1)
    s = np.asarray(std, dtype=np.float32).reshape(1, -1, 1, 1)
    return (x - m) / s


def get_info(name: str) -> DatasetInfo:
    try:
        return DATASETS[name]
    except KeyError:
        raise ValueError(f"unknown dataset {name!r}; known datasets: {', '.join(DATASETS)}") from None


def search_places(name: str, data_dir: str | os.PathLike | None = None) -> list[Path]:
    if data_dir:
        return [Path(data_dir)]
    places: list[Path] = []
    if os.environ.get("EDGECNN_DATA"):
        places.append(Path(os.environ["EDGECNN_DATA"]))
    places.append(SYSTEM_DATA_ROOT / name)
    places.append(Path.home() / ".cache" / "edgecnn" / name)
    return places


def download_root(name: str, data_dir: str | os.PathLike | None = None) -> Path:
    """Where --download puts files: the user's data dir, else a per-user cache (never /usr/share)."""
    if data_dir:
        return Path(data_dir)
    if os.environ.get("EDGECNN_DATA"):
        return Path(os.environ["EDGECNN_DATA"])
    return Path.home() / ".cache" / "edgecnn" / name


def _candidate_dirs(info: DatasetInfo, place: Path) -> list[Path]:
    tv = info.torchvision_dir
    if info.name == "cifar10":
        return [place, place / tv, place / info.name / tv, place / info.name]
    return [place, place / info.name, place / tv / "raw", place / info.name / tv / "raw"]


def _find_file(folder: Path, stem: str) -> Path | None:
    for candidate in (folder / f"{stem}.gz", folder / stem):
        if candidate.is_file():
            return candidate
    return None


def _has_files(info: DatasetInfo, folder: Path) -> bool:
    if info.name == "cifar10":
        return all((folder / f).is_file() for f in CIFAR_FILES["train"] + CIFAR_FILES["test"])
    return all(_find_file(folder, stem) for pair in IDX_FILES.values() for stem in pair)


def locate(name: str, data_dir: str | os.PathLike | None = None) -> Path:
    """The folder that holds the dataset's files, or a DatasetNotFoundError naming every place."""
    info = get_info(name)
    looked: list[Path] = []
    for place in search_places(name, data_dir):
        for folder in _candidate_dirs(info, place):
            looked.append(folder)
            if _has_files(info, folder):
                return folder
    how = [f"pass --download to fetch it through torchvision into {download_root(name, data_dir)}"]
    if info.debian_package:
        how.insert(0, f"on Debian: apt-get install {info.debian_package}")
    how.append("or put the standard files in one of these places (or point --data-dir / $EDGECNN_DATA at them)")
    raise DatasetNotFoundError(
        f"dataset {name!r} not found. Looked in:\n"
        + "\n".join(f"  - {p}" for p in looked)
        + "\nTo get it: "
        + "; ".join(how)
    )


def _open(path: Path):
    return gzip.open(path, "rb") if path.suffix == ".gz" else open(path, "rb")


_REDOWNLOAD = "corrupt or truncated; delete it and fetch it again (--download, or reinstall the package)"


def read_idx(path: Path) -> np.ndarray:
    """Read an idx file (the MNIST format): big-endian magic, dims, then unsigned bytes."""
    try:
        with _open(path) as f:
            data = f.read()
    except (OSError, EOFError, zlib.error) as exc:  # gzip.BadGzipFile is an OSError
        raise DatasetFileError(f"{path}: {_REDOWNLOAD} ({type(exc).__name__}: {exc})") from None
    if len(data) < 4 or data[0] != 0 or data[1] != 0:
        raise DatasetFileError(f"{path}: not an idx file (bad magic)")
    if data[2] != 0x08:
        raise DatasetFileError(f"{path}: idx type 0x{data[2]:02x} unsupported (expected unsigned byte 0x08)")
    ndim = data[3]
    if len(data) < 4 + 4 * ndim:
        raise DatasetFileError(f"{path}: {_REDOWNLOAD} (the header of {ndim} dimensions is cut off)")
    dims = np.frombuffer(data, dtype=">u4", count=ndim, offset=4).astype(np.int64)
    offset = 4 + 4 * ndim
    expected = int(np.prod(dims))
    if len(data) - offset != expected:
        raise DatasetFileError(f"{path}: header says {expected} bytes of data, file has {len(data) - offset}; {_REDOWNLOAD}")
    return np.frombuffer(data, dtype=np.uint8, offset=offset).reshape(tuple(dims))


def _read_cifar_batches(folder: Path, files: list[str]) -> tuple[np.ndarray, np.ndarray]:
    images, labels = [], []
    for fname in files:
        path = folder / fname
        try:
            with open(path, "rb") as f:
                batch = pickle.load(f, encoding="bytes")
            images.append(np.asarray(batch[b"data"], dtype=np.uint8).reshape(-1, 3, 32, 32))
            labels.append(np.asarray(batch[b"labels"], dtype=np.int64).reshape(-1))
        except (OSError, EOFError, pickle.UnpicklingError, KeyError, TypeError, ValueError, IndexError) as exc:
            raise DatasetFileError(
                f"{path}: not a CIFAR-10 python batch (a dict with b'data' N x 3072 bytes and b'labels'); "
                f"{_REDOWNLOAD} ({type(exc).__name__}: {exc})"
            ) from None
    return np.concatenate(images), np.concatenate(labels)


def _check_labels(name: str, split: str, folder: Path, labels: np.ndarray, classes: list[str]) -> None:
    if len(labels) and (labels.min() < 0 or labels.max() >= len(classes)):
        raise DatasetFileError(
            f"{name}/{split} in {folder}: labels range {labels.min()}..{labels.max()}, expected 0..{len(classes) - 1}; {_REDOWNLOAD}"
        )
    if split == "test":
        for other, first in FIRST_TEST_LABELS.items():
            if other != name and labels[: len(first)].tolist() == first:
                raise DatasetFileError(
                    f"{folder} holds {other}, not {name} (the idx files share names); point --data-dir at the {name} files"
                )


def load_split(
    name: str,
    split: str = "train",
    data_dir: str | os.PathLike | None = None,
    download: bool = False,
    limit: int | None = None,
) -> Split:
    """Load ``split`` ("train" or "test") of a dataset into memory."""
    if split not in ("train", "test"):
        raise ValueError(f"split must be 'train' or 'test', not {split!r}")
    info = get_info(name)
    folder = locate_or_download(name, data_dir, download)
    if name == "cifar10":
        images, labels = _read_cifar_batches(folder, CIFAR_FILES[split])
    else:
        image_stem, label_stem = IDX_FILES[split]
        images = read_idx(_find_file(folder, image_stem))
        labels = read_idx(_find_file(folder, label_stem)).astype(np.int64)
        if images.ndim != 3 or labels.ndim != 1:
            raise DatasetFileError(
                f"{name}/{split} in {folder}: expected images (N, H, W) and labels (N,), "
                f"got {images.shape} and {labels.shape} (are the image and label files swapped?)"
            )
        images = images[:, None, :, :]
    if len(images) != len(labels):
        raise DatasetFileError(f"{name}/{split} in {folder}: {len(images)} images but {len(labels)} labels")
    _check_labels(name, split, folder, labels, info.classes)
    if limit is not None:
        images, labels = images[:limit], labels[:limit]
    # A copy: frombuffer arrays are read-only, and torch wants writable memory.
    return Split(name, split, np.array(images, order="C"), labels, list(info.classes), info.mean, info.std)


def locate_or_download(name: str, data_dir: str | os.PathLike | None = None, download: bool = False) -> Path:
    """The dataset's folder (locate); when it is not found and `download`, fetched first."""
    try:
        return locate(name, data_dir)
    except DatasetNotFoundError:
        if not download:
            raise
        return download_dataset(name, download_root(name, data_dir))


def download_dataset(name: str, root: Path) -> Path:
    """Fetch a dataset with torchvision into ``root`` and return the folder holding its files."""
    from torchvision import datasets as tv  # only here: the readers above need no torch

    root.mkdir(parents=True, exist_ok=True)
    cls = {"mnist": tv.MNIST, "fashion-mnist": tv.FashionMNIST, "cifar10": tv.CIFAR10}[name]
    for train in (True, False):
        cls(str(root), train=train, download=True)
    return locate(name, root)
