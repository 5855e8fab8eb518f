"""`make demo`: the whole pipeline on Fashion-MNIST, through the same CLI a user runs.

train LeNet-5 -> export to ONNX and verify against PyTorch -> serve over gRPC -> classify 8
real test images through the client -> a 5-second load test -> stop the server.
Every artifact lands under demo-output/.
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
EDGECNN = str(BIN / "edgecnn")


def step(title: str) -> None:
    print(f"\n\033[1m== {title}\033[0m", flush=True)


def run(*argv: str) -> None:
    print("$ edgecnn " + " ".join(argv[1:]), flush=True)
    subprocess.run(argv, check=True)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_healthy(server: str, proc: subprocess.Popen, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"the server exited with code {proc.returncode}; see its log above")
        if subprocess.run([EDGECNN, "health", "--server", server], capture_output=True).returncode == 0:
            return
        time.sleep(0.3)
    raise SystemExit(f"the server did not become healthy within {timeout:.0f} s")


def write_test_images(folder: Path, count: int) -> list[Path]:
    """The first ``count`` Fashion-MNIST test images as PNGs named after their true label."""
    from PIL import Image

    from edgecnn.training.datasets import load_split

    test = load_split("fashion-mnist", "test", limit=count)
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i, (image, label) in enumerate(zip(test.images, test.labels)):
        name = test.classes[label].replace("/", "-").replace(" ", "-")
        path = folder / f"{i:02d}-true-{name}.png"
        Image.fromarray(image[0]).save(path)
        paths.append(path)
    return paths


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", default=str(ROOT / "demo-output"))
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--limit", type=int, help="train on the first N training images only (smoke runs)")
    parser.add_argument("--download", action="store_true", help="fetch Fashion-MNIST through torchvision if missing")
    args = parser.parse_args()
    out = Path(args.out)
    if out.exists():
        shutil.rmtree(out)
    run_dir, repository, images = out / "run", out / "models", out / "images"
    started = time.monotonic()

    step(f"1. Train LeNet-5 on Fashion-MNIST ({args.epochs} epochs)")
    run(EDGECNN, "train", "lenet5", "--dataset", "fashion-mnist", "--epochs", str(args.epochs),
        "--out", str(run_dir), *(["--download"] if args.download else []), *(["--limit", str(args.limit)] if args.limit else []))

    step("2. Export to ONNX (Triton model repository) and verify against PyTorch")
    run(EDGECNN, "export", str(run_dir), "--repository", str(repository))
    run(EDGECNN, "export", str(run_dir), "--repository", str(repository), "--name", "lenet5-int8", "--quantize", "int8")

    step("3. Serve the repository over gRPC")
    port, metrics_port = free_port(), free_port()
    server = f"127.0.0.1:{port}"
    log = open(out / "server.log", "w")
    proc = subprocess.Popen(
        [EDGECNN, "serve", "--repository", str(repository), "--host", "127.0.0.1", "--port", str(port),
         "--metrics-port", str(metrics_port), "--http-port", "0"],
        stdout=log, stderr=subprocess.STDOUT, env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    try:
        wait_healthy(server, proc)
        run(EDGECNN, "health", "--server", server, "--model", "lenet5")

        step("4. Classify 8 real test images through the client (file names carry the true label)")
        paths = write_test_images(images, 8)
        run(EDGECNN, "classify", "--server", server, "--model", "lenet5", "--top-k", "1", *map(str, paths))

        step("5. A 5-second load test")
        run(EDGECNN, "loadtest", "--server", server, "--model", "lenet5", "--concurrency", "8",
            "--duration", "5", "--warmup", "0.5", "--out", str(out / "loadtest.json"),
            "--csv", str(out / "loadtest.csv"), "--plot", str(out / "loadtest.png"))
    finally:
        step("6. Stop the server (SIGTERM: drain, then exit)")
        proc.send_signal(signal.SIGTERM)
        code = proc.wait(timeout=30)
        log.close()
        print(f"server exited with code {code}")

    step(f"Done in {time.monotonic() - started:.0f} s. Artifacts:")
    for label, path in [
        ("checkpoint, metrics, training curves", run_dir),
        ("model repository (FP32 + INT8, with verification.json)", repository),
        ("test images", images),
        ("server log", out / "server.log"),
        ("load test JSON / CSV / plot", out / "loadtest.json"),
        ("metrics scraped at", f"http://127.0.0.1:{metrics_port}/metrics (while serving)"),
    ]:
        print(f"  {label:<55} {path}")
    sys.path.insert(0, str(ROOT / "scripts"))
    from results import train_command  # scripts/results.py: the recipes of `make results`

    print("\nA trained MobileNetV2 (width 0.5; about 75 minutes on 2 CPU cores), as `make results` trains it")
    print("into runs/ and `make bench` then serves it:")
    print(f"  {train_command('mobilenet-v2')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
