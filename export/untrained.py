"""Training-run folders holding untrained, fixed-seed weights.

For measuring what does not depend on training (file size, latency, export correctness) of an
architecture whose dataset is not on the machine, e.g. the CIFAR-10 models.
"""

from __future__ import annotations

from pathlib import Path

import torch

from edgecnn.training.checkpoint import CHECKPOINT_NAME, save_checkpoint
from edgecnn.training.datasets import get_info
from edgecnn.training.models import build_model, count_parameters


def fixed_seed_run(run_dir: Path, model_name: str, dataset: str, seed: int = 0, width_mult: float | None = None) -> Path:
    """Write run_dir/model.pt for an untrained model (test_accuracy None) and return run_dir."""
    info = get_info(dataset)
    kwargs: dict = {"num_classes": len(info.classes)}
    if model_name in ("lenet5", "cifar-cnn", "mobilenet-v2"):
        kwargs["in_channels"] = info.shape[0]
    if width_mult is not None:
        kwargs["width_mult"] = width_mult
    torch.manual_seed(seed)
    model = build_model(model_name, **kwargs).eval()
    run_dir = Path(run_dir)
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
        "test_accuracy": None,
        "seed": seed,
        "torch_version": str(torch.__version__),
    }
    save_checkpoint(run_dir / CHECKPOINT_NAME, model, meta)
    return run_dir
