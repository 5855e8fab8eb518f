"""The checkpoint a training run writes: weights plus everything needed to rebuild the model.

Only tensors, numbers, strings, lists and dicts go in, so ``torch.load(weights_only=True)``
reads it back.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import torch
from torch import nn

from edgecnn.training.datasets import DatasetInfo
from edgecnn.training.models import build_model

CHECKPOINT_NAME = "model.pt"
FORMAT = "edgecnn-checkpoint/1"


def checkpoint_meta(
    model_name: str,
    model_kwargs: dict[str, Any],
    dataset: DatasetInfo,
    input_shape: list[int],
    params: int,
    test_accuracy: float | None,
    seed: int,
) -> dict[str, Any]:
    """Everything besides the weights that a checkpoint records (export and verify read it)."""
    return {
        "model": model_name,
        "model_kwargs": model_kwargs,
        "input_shape": list(input_shape),
        "dataset": dataset.name,
        "classes": list(dataset.classes),
        "mean": list(dataset.mean),
        "std": list(dataset.std),
        "params": params,
        "test_accuracy": test_accuracy,
        "seed": seed,
        "torch_version": str(torch.__version__),
    }


def save_checkpoint(path: Path, model: nn.Module, meta: dict[str, Any]) -> None:
    payload = {"format": FORMAT, **meta, "state_dict": model.state_dict()}
    tmp = path.with_suffix(path.suffix + ".tmp")
    torch.save(payload, tmp)
    tmp.replace(path)


def load_checkpoint(path: str | Path) -> tuple[nn.Module, dict[str, Any]]:
    """Rebuild the model from a checkpoint (a run dir or the file itself), in eval mode."""
    path = Path(path)
    if path.is_dir():
        path = path / CHECKPOINT_NAME
    if not path.is_file():
        raise FileNotFoundError(f"no checkpoint at {path} (expected a run dir holding {CHECKPOINT_NAME})")
    payload = torch.load(path, map_location="cpu", weights_only=True)
    if payload.get("format") != FORMAT:
        raise ValueError(f"{path}: not an edgecnn checkpoint (format {payload.get('format')!r})")
    meta = {k: v for k, v in payload.items() if k != "state_dict"}
    model = build_model(meta["model"], **meta["model_kwargs"])
    model.load_state_dict(payload["state_dict"])
    model.eval()
    return model, meta


def file_sha256(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()
