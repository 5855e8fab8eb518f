"""Helpers for the export tests (imported by tests/test_export.py, test_verify.py, test_quantize.py)."""

from __future__ import annotations

import json
from pathlib import Path

import torch

from edgecnn.training.checkpoint import save_checkpoint
from edgecnn.training.datasets import get_info
from edgecnn.training.models import build_model, count_parameters

# The dataset each architecture is exported for in the tests.
DATASET_FOR = {
    "lenet5": "fashion-mnist",
    "mlp": "fashion-mnist",
    "cifar-cnn": "cifar10",
    "cifar-mlp": "cifar10",
    "mobilenet-v2": "cifar10",
}


def fixed_seed_run(run_dir: Path, model_name: str, dataset: str | None = None, seed: int = 0,
                   data_dir: Path | None = None, width_mult: float | None = None) -> Path:
    """A training run dir holding an untrained fixed-seed checkpoint (and metrics.json with data_dir)."""
    dataset = dataset or DATASET_FOR[model_name]
    info = get_info(dataset)
    kwargs: dict = {"num_classes": len(info.classes)}
    if model_name in ("lenet5", "cifar-cnn", "mobilenet-v2"):
        kwargs["in_channels"] = info.shape[0]
    if width_mult is not None:
        kwargs["width_mult"] = width_mult
    torch.manual_seed(seed)
    model = build_model(model_name, **kwargs).eval()
    run_dir.mkdir(parents=True, exist_ok=True)
    meta = {
        "model": model_name,
        "model_kwargs": kwargs,
        "input_shape": list(info.shape),
        "dataset": dataset,
        "classes": list(info.classes),
        "mean": list(info.mean),
        "std": list(info.std),
        "params": count_parameters(model),
        "test_accuracy": 0.1,
        "seed": seed,
        "torch_version": str(torch.__version__),
    }
    save_checkpoint(run_dir / "model.pt", model, meta)
    metrics = {"model": model_name, "dataset": dataset, "config": {"data_dir": str(data_dir) if data_dir else None}}
    (run_dir / "metrics.json").write_text(json.dumps(metrics))
    return run_dir


def snapshot(root: Path) -> dict[str, bytes | None]:
    """Every path under root (folders as None, files with their bytes); {} when root is absent."""
    if not root.exists():
        return {}
    return {
        str(p.relative_to(root)): (p.read_bytes() if p.is_file() else None) for p in sorted(root.rglob("*"))
    }
