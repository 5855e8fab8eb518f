"""Helpers for the export tests (imported by tests/test_export.py, test_verify.py, test_quantize.py)."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from torch import nn

from edgecnn.export import untrained
from edgecnn.training.checkpoint import load_checkpoint, save_checkpoint

# The dataset each architecture is exported for in the tests.
DATASET_FOR = {
    "lenet5": "fashion-mnist",
    "mlp": "fashion-mnist",
    "cifar-cnn": "cifar10",
    "cifar-mlp": "cifar10",
    "mobilenet-v2": "cifar10",
}


def fixed_seed_run(run_dir: Path, model_name: str, dataset: str | None = None, data_dir: Path | None = None) -> Path:
    """An untrained fixed-seed run dir, with a metrics.json recording data_dir as `edgecnn train` does."""
    dataset = dataset or DATASET_FOR[model_name]
    untrained.fixed_seed_run(run_dir, model_name, dataset)
    model, meta = load_checkpoint(run_dir)
    if _randomize_batch_norm(model, meta["input_shape"]):
        save_checkpoint(run_dir / "model.pt", model, meta)
    config = {"data_dir": str(data_dir) if data_dir else None}
    (run_dir / "metrics.json").write_text(json.dumps({"model": model_name, "dataset": dataset, "config": config}))
    return run_dir


def _randomize_batch_norm(model: nn.Module, input_shape: list[int]) -> bool:
    """Give BatchNorm layers non-trivial affine weights and statistics measured on random inputs,
    so the exporter's BN folding is really tested (a fresh MobileNetV2 has logits near 1e-9)."""
    norms = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for bn in norms:
            bn.weight.copy_(0.5 + torch.rand(bn.num_features, generator=g))
            bn.bias.copy_(0.1 * torch.randn(bn.num_features, generator=g))
            bn.reset_running_stats()
            bn.momentum = None  # cumulative average over the batches below
        model.train()
        for _ in range(2):
            model(torch.randn((32, *input_shape), generator=g))
        model.eval()
        for bn in norms:
            bn.momentum = 0.1
    return bool(norms)


def snapshot(root: Path) -> dict[str, bytes | None]:
    """Every path under root (folders as None, files with their bytes); {} when root is absent."""
    if not root.exists():
        return {}
    return {str(p.relative_to(root)): (p.read_bytes() if p.is_file() else None) for p in sorted(root.rglob("*"))}


def one_line_error(capsys, command: str) -> str:
    """A CLI command's error as it must look: exactly one `edgecnn COMMAND:` line, no traceback."""
    captured = capsys.readouterr()
    lines = [line for line in captured.err.splitlines() if line.startswith(f"edgecnn {command}:")]
    assert len(lines) == 1 and "Traceback" not in captured.err, captured.err
    return lines[0]
