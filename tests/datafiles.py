"""Write small datasets in the standard on-disk formats (idx.gz, CIFAR-10 python batches).

The images carry a learnable signal: each class draws a bright square at its own position,
so a few steps of training lower the loss.
"""

from __future__ import annotations

import gzip
import pickle
import struct
from pathlib import Path

import numpy as np


def _images_for(labels: np.ndarray, shape: tuple[int, int, int], rng: np.random.Generator) -> np.ndarray:
    c, h, w = shape
    images = rng.integers(0, 60, size=(len(labels), c, h, w), dtype=np.uint8)
    for i, label in enumerate(labels):
        row, col = divmod(int(label), 4)
        images[i, :, row * 6 + 2 : row * 6 + 8, col * 6 + 2 : col * 6 + 8] = 250
    return images


def write_idx(path: Path, array: np.ndarray) -> None:
    header = struct.pack(">BBBB", 0, 0, 0x08, array.ndim) + struct.pack(f">{array.ndim}I", *array.shape)
    with gzip.open(path, "wb") as f:
        f.write(header + array.astype(np.uint8).tobytes())


def write_idx_dataset(folder: Path, n_train: int = 512, n_test: int = 128, seed: int = 0) -> Path:
    """MNIST-format files (gzipped idx) in ``folder``."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        labels = rng.integers(0, 10, size=n).astype(np.uint8)
        images = _images_for(labels, (1, 28, 28), rng)[:, 0]
        write_idx(folder / f"{prefix}-images-idx3-ubyte.gz", images)
        write_idx(folder / f"{prefix}-labels-idx1-ubyte.gz", labels)
    return folder


def write_cifar_dataset(root: Path, per_batch: int = 100, n_test: int = 100, seed: int = 0) -> Path:
    """CIFAR-10 python batches under ``root/cifar-10-batches-py`` (torchvision's layout)."""
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    names = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]
    for name in names:
        n = n_test if name == "test_batch" else per_batch
        labels = rng.integers(0, 10, size=n)
        images = _images_for(labels, (3, 32, 32), rng)
        batch = {b"data": images.reshape(n, -1), b"labels": labels.tolist(), b"batch_label": name.encode()}
        with open(folder / name, "wb") as f:
            pickle.dump(batch, f)
    return root
