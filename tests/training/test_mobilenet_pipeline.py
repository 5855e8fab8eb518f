"""MobileNetV2 on real Fashion-MNIST, the whole path: `edgecnn train` (a few hundred images) ->
`edgecnn export` (verified against PyTorch) -> `edgecnn verify` -> `edgecnn serve` -> Classify
on Fashion-MNIST test images sent as PNG files, answered as PyTorch answers them."""

from __future__ import annotations

import io
import json

import pytest
import torch
from PIL import Image

from edgecnn.cli import main
from edgecnn.client import EdgeClient
from edgecnn.training.checkpoint import load_checkpoint
from edgecnn.training.datasets import load_split
from tests.servers import running_server

PNGS = 16


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory, fashion_mnist_dir):
    out = tmp_path_factory.mktemp("mobilenet") / "run"
    argv = ["train", "mobilenet-v2", "--dataset", "fashion-mnist", "--width-mult", "0.5", "--epochs", "1",
            "--limit", "384", "--test-limit", "500", "--lr", "3e-3", "--augment", "crop-flip", "--crop-padding", "2", "--seed", "0",
            "--device", "cpu", "--out", str(out), "--no-progress"]  # fmt: skip
    assert main(argv) == 0
    return out


def test_trains_on_the_one_channel_images(run_dir):
    m = json.loads((run_dir / "metrics.json").read_text())
    assert m["model"] == "mobilenet-v2" and m["train_images"] == 384 and m["test_images"] == 500
    assert m["config"]["width_mult"] == 0.5
    model, meta = load_checkpoint(run_dir)
    assert meta["input_shape"] == [1, 28, 28] and model.features[0][0].in_channels == 1
    # trained channels-last (auto on the CPU), saved in the usual layout
    assert all(t.is_contiguous() for t in model.state_dict().values())


def test_export_verify_serve_classify_pngs(run_dir, tmp_path):
    repository = tmp_path / "models"
    assert main(["export", str(run_dir), "--repository", str(repository), "--name", "mobilenet-v2", "--test-images", "300"]) == 0
    report = json.loads((repository / "mobilenet-v2" / "1" / "verification.json").read_text())
    assert report["passed"]
    test = next(c for c in report["comparisons"] if c["inputs"] == "test")
    assert test["count"] == 300 and test["top1_agreement"] == 1.0
    verify = ["verify", str(repository / "mobilenet-v2"), "--run-dir", str(run_dir), "--samples", "4", "--test-images", "300"]
    assert main(verify) == 0

    split = load_split("fashion-mnist", "test", limit=PNGS)
    pngs = []
    for image in split.images:
        buffer = io.BytesIO()
        Image.fromarray(image[0]).save(buffer, format="PNG")
        pngs.append(buffer.getvalue())
    model, _ = load_checkpoint(run_dir)
    with torch.no_grad():
        probabilities = torch.softmax(model(torch.from_numpy(split.normalized(0, PNGS))), 1).numpy()
    expected = probabilities.argmax(1)

    with running_server(repository) as address:
        client = EdgeClient(address, model="mobilenet-v2")
        predictions = client.classify(pngs, top_k=3)
    assert [p[0].index for p in predictions] == expected.tolist()
    for top, row in zip(predictions, probabilities):
        assert [p.label for p in top] == [split.classes[p.index] for p in top]
        assert [p.score for p in top] == pytest.approx([row[p.index] for p in top], abs=1e-4)
        assert top[0].score >= top[1].score >= top[2].score
