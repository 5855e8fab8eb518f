"""Helpers for the export tests in tests/export (export, verify, quantize, selftest)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
from torch import nn

from edgecnn.export import untrained
from edgecnn.export.cpu_inference import make_session
from edgecnn.export.selftest_writer import SELFTEST_IMAGES
from edgecnn.repository import INPUT_NAME, check_selftest
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


def refused_flag(capsys, flag: str) -> str:
    """argparse's error for a flag value out of range, as it must look: naming the flag and what it expects."""
    err = capsys.readouterr().err
    line = next((line for line in err.splitlines() if f"argument {flag}: " in line), "")
    assert "expected" in line.partition(f"argument {flag}: ")[2], err
    return line


SELFTEST_KEYS = {"inputs", "logits", "atol", "rtol"}


def load_selftest(path) -> dict[str, np.ndarray]:
    with np.load(path) as npz:
        assert set(npz.files) == SELFTEST_KEYS
        return {k: npz[k] for k in npz.files}


def assert_reproduces(version, input_shape, classes=10) -> dict[str, np.ndarray]:
    """The npz of an exported version has the format the server reads, and its own file reproduces it."""
    selftest = load_selftest(version.selftest_path)
    inputs, logits = selftest["inputs"], selftest["logits"]
    assert inputs.dtype == logits.dtype == np.float32
    assert inputs.shape == (SELFTEST_IMAGES, *input_shape) and logits.shape == (SELFTEST_IMAGES, classes)
    assert selftest["atol"].dtype == selftest["rtol"].dtype == np.float32
    assert selftest["atol"].shape == selftest["rtol"].shape == ()
    (again,) = make_session(version.onnx_path).run(None, {INPUT_NAME: inputs})
    np.testing.assert_allclose(again, logits, rtol=0, atol=1e-5)
    assert check_selftest(again, logits, selftest["atol"], selftest["rtol"]) is None
    return selftest
