"""Training-run folders holding untrained, fixed-seed weights.

For measuring what does not depend on training (file size, latency, export correctness) of an
architecture whose dataset is not on the machine, e.g. the CIFAR-10 models.
"""

from __future__ import annotations

from pathlib import Path

import torch

from edgecnn.training.checkpoint import CHECKPOINT_NAME, checkpoint_meta, save_checkpoint
from edgecnn.training.datasets import get_info
from edgecnn.training.models import build_model, count_parameters, model_kwargs


def fixed_seed_run(run_dir: Path, model_name: str, dataset: str, seed: int = 0, width_mult: float | None = None) -> Path:
    """Write run_dir/model.pt for an untrained model (test_accuracy None) and return run_dir."""
    info = get_info(dataset)
    kwargs = model_kwargs(model_name, info.shape[0], len(info.classes), width_mult)
    torch.manual_seed(seed)
    model = build_model(model_name, **kwargs).eval()
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    meta = checkpoint_meta(model_name, kwargs, info, list(info.shape), count_parameters(model), None, seed)
    save_checkpoint(run_dir / CHECKPOINT_NAME, model, meta)
    return run_dir
