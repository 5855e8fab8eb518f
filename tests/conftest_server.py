"""Shared helpers for the server tests (imported by tests/test_server*.py; not a pytest conftest).

Builds a small model repository from fixed-seed LeNet-5 checkpoints, the way the project's
exporter does, plus Fashion-MNIST test images and a reference ONNX Runtime session.
"""

from __future__ import annotations

import io
import shutil
import subprocess
from pathlib import Path

import numpy as np

from edgecnn import repository as repo

FASHION = "fashion-mnist"
PARAMS_LENET5 = 44_426


def fashion_test_split():
    from edgecnn.training.datasets import load_split

    return load_split(FASHION, "test")


def write_checkpoint(run_dir: Path, seed: int) -> Path:
    """A fixed-seed, untrained LeNet-5 training run dir (model.pt with the real meta)."""
    import torch

    from edgecnn.training.checkpoint import save_checkpoint
    from edgecnn.training.models import build_model, count_parameters

    split = fashion_test_split()
    torch.manual_seed(seed)
    model = build_model("lenet5", in_channels=1, num_classes=10).eval()
    run_dir.mkdir(parents=True, exist_ok=True)
    meta = {
        "model": "lenet5",
        "model_kwargs": {"in_channels": 1, "num_classes": 10},
        "input_shape": [1, 28, 28],
        "dataset": FASHION,
        "classes": list(split.classes),
        "mean": [float(v) for v in np.ravel(split.mean)],
        "std": [float(v) for v in np.ravel(split.std)],
        "params": count_parameters(model),
        "test_accuracy": 0.1,
        "seed": seed,
        "torch_version": str(torch.__version__),
    }
    save_checkpoint(run_dir / "model.pt", model, meta)
    return run_dir


def export(run_dir: Path, repository: Path, name: str, version: int, max_queue_delay_us: int, max_batch_size: int) -> Path:
    """Export a run with the project's exporter (verified against PyTorch) into
    repository/name/version, then set the batching in config.pbtxt."""
    from edgecnn.export.onnx_export import export_run

    exported = export_run(run_dir, repository, name=name, version=version, samples=16, test_images=64)
    config = repo.read_config(exported.model_dir)
    config.max_batch_size = max_batch_size
    config.dynamic_batching.max_queue_delay_microseconds = max_queue_delay_us
    (exported.model_dir / repo.CONFIG_NAME).write_text(repo.config_to_text(config))
    return exported.onnx_path


def copy_model(repository: Path, source: str, target: str, max_queue_delay_us: int, max_batch_size: int) -> Path:
    """Serve an exported model under a second name with other batching settings."""
    shutil.copytree(repository / source, repository / target)
    config = repo.read_config(repository / target)
    config.name = target
    config.max_batch_size = max_batch_size
    config.dynamic_batching.max_queue_delay_microseconds = max_queue_delay_us
    (repository / target / repo.CONFIG_NAME).write_text(repo.config_to_text(config))
    return repository / target


def png_bytes(image_chw: np.ndarray) -> bytes:
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(image_chw[0], mode="L").save(buffer, format="PNG")
    return buffer.getvalue()


def reference_logits(onnx_path: Path, x: np.ndarray) -> np.ndarray:
    import onnxruntime as ort

    session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    return session.run(["logits"], {"input": x})[0]


def self_signed_cert(folder: Path) -> tuple[Path, Path]:
    """A throw-away certificate for 127.0.0.1 / localhost (openssl CLI)."""
    cert, key = folder / "server.crt", folder / "server.key"
    subprocess.run(
        [
            "openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
            "-subj", "/CN=localhost", "-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1",
            "-keyout", str(key), "-out", str(cert),
        ],
        check=True, capture_output=True,
    )
    return cert, key


def _openssl(*args: str | Path) -> None:
    subprocess.run(["openssl", *map(str, args)], check=True, capture_output=True, timeout=60)


def mtls_certs(folder: Path) -> dict[str, Path]:
    """A throw-away CA and, signed by it, a server certificate for 127.0.0.1 / localhost and a
    client certificate: keys ca, server_cert, server_key, client_cert, client_key."""
    f = {name: folder / f"{name}.pem" for name in ("ca", "ca_key", "server_cert", "server_key", "client_cert", "client_key")}
    _openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=edgecnn test CA",
             "-keyout", f["ca_key"], "-out", f["ca"])  # fmt: skip
    for who, subject, ext in (
        ("server", "/CN=localhost", "subjectAltName=DNS:localhost,IP:127.0.0.1"),
        ("client", "/CN=edgecnn test client", "extendedKeyUsage=clientAuth"),
    ):
        csr, extfile = folder / f"{who}.csr", folder / f"{who}.ext"
        extfile.write_text(ext + "\n")
        _openssl("req", "-new", "-newkey", "rsa:2048", "-nodes", "-subj", subject, "-keyout", f[f"{who}_key"], "-out", csr)
        _openssl("x509", "-req", "-in", csr, "-CA", f["ca"], "-CAkey", f["ca_key"], "-CAcreateserial", "-days", "1",
                 "-extfile", extfile, "-out", f[f"{who}_cert"])  # fmt: skip
    return f
