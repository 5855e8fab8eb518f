"""Images for verification and calibration: the run's dataset when it is found, else random inputs.

Callers always learn which one they got (Images.real / Images.source), so a fallback to random
inputs is reported, never silent.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from edgecnn.training.datasets import DatasetNotFoundError, Split, load_split, normalize, search_places


@dataclass(frozen=True)
class Images:
    x: np.ndarray  # float32 NCHW, normalized like training
    labels: np.ndarray | None  # int64, None for random inputs
    source: str  # what these images are, for reports

    @property
    def real(self) -> bool:
        return self.labels is not None


def run_data_dir(run_dir: Path) -> str | None:
    """The --data-dir a training run used (recorded in its metrics.json), if it still exists
    (else None: the usual places are searched)."""
    metrics = Path(run_dir) / "metrics.json"
    if not metrics.is_file():
        return None
    recorded = (json.loads(metrics.read_text()).get("config") or {}).get("data_dir")
    return recorded if recorded and Path(recorded).is_dir() else None


def random_inputs(count: int, input_shape: list[int] | tuple[int, ...], seed: int = 0) -> np.ndarray:
    """Standard-normal inputs: the range normalized images have."""
    return np.random.default_rng(seed).standard_normal((count, *input_shape), dtype=np.float32)


def _load(dataset: str, split: str, input_shape: list[int] | tuple[int, ...], data_dir: str | Path | None) -> tuple[Split | None, str]:
    try:
        loaded = load_split(dataset, split, data_dir)
    except DatasetNotFoundError:
        places = ", ".join(str(p) for p in search_places(dataset, data_dir))
        return None, f"dataset {dataset!r} not found (looked under {places}; pass --data-dir)"
    if list(loaded.images.shape[1:]) != list(input_shape):
        raise ValueError(
            f"{dataset} {split} images are {list(loaded.images.shape[1:])} but the model expects {list(input_shape)}"
        )
    return loaded, ""


def dataset_images(
    dataset: str,
    split: str,
    count: int | None,
    input_shape: list[int] | tuple[int, ...],
    data_dir: str | Path | None = None,
) -> tuple[Images | None, str]:
    """The first count images of a split (all when count is None), or None and why not."""
    loaded, why = _load(dataset, split, input_shape, data_dir)
    if loaded is None:
        return None, why
    total = len(loaded)
    n = total if count is None else min(count, total)
    source = f"{dataset} {split} split, first {n} of {total} images"
    return Images(loaded.normalized(0, n), loaded.labels[:n], source), source


def dataset_sample(
    dataset: str, split: str, count: int, input_shape: list[int] | tuple[int, ...], data_dir: str | Path | None, seed: int = 0
) -> tuple[Images | None, str]:
    """count images of a split drawn at random (seeded), or None and why not; only those are
    normalized (all of CIFAR-10's training split in float32 would be 600 MB)."""
    loaded, why = _load(dataset, split, input_shape, data_dir)
    if loaded is None:
        return None, why
    pick = np.sort(np.random.default_rng(seed).choice(len(loaded), size=min(count, len(loaded)), replace=False))
    source = f"{len(pick)} random images of the {dataset} {split} split (seed {seed})"
    x = normalize(loaded.images[pick], loaded.mean, loaded.std)
    return Images(x, loaded.labels[pick], source), source


def dataset_pixels(
    dataset: str, split: str, count: int, input_shape: list[int] | tuple[int, ...], data_dir: str | Path | None = None
) -> tuple[np.ndarray | None, str]:
    """The first count images of a split as stored (uint8 NCHW, not normalized), or None and why not."""
    loaded, why = _load(dataset, split, input_shape, data_dir)
    if loaded is None:
        return None, why
    n = min(count, len(loaded))
    return loaded.images[:n], f"{dataset} {split} split, first {n} of {len(loaded)} images"
