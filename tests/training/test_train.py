import io
import json
import sys

import pytest
import torch

from edgecnn.cli import main
from edgecnn.training import datasets
from edgecnn.training.checkpoint import load_checkpoint
from edgecnn.training.train import random_crop_flip
from edgecnn.training.models import count_parameters


def _train(tmp_path, data_dir, name, *extra):
    out = tmp_path / name
    argv = ["train", "lenet5", "--dataset", "fashion-mnist", "--data-dir", str(data_dir), "--epochs", "2",
            "--limit", "256", "--batch-size", "32", "--seed", "7", "--device", "cpu", "--out", str(out), "--no-progress", *extra]
    assert main(argv) == 0
    return out


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory, tiny_mnist_dir):
    return _train(tmp_path_factory.mktemp("train"), tiny_mnist_dir, "run")


def test_writes_every_file(run_dir):
    assert {p.name for p in run_dir.iterdir()} >= {"model.pt", "metrics.json", "curves.png"}
    assert (run_dir / "curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_metrics_fields_and_loss_goes_down(run_dir):
    m = json.loads((run_dir / "metrics.json").read_text())
    for key in ("model", "dataset", "params", "epochs", "train_loss", "test_accuracies", "test_accuracy",
                "train_seconds", "seed", "device", "torch_version"):
        assert key in m
    assert m["params"] == 44_426 and m["epochs"] == 2 and m["train_images"] == 256
    assert m["train_loss"][-1] < m["train_loss"][0]
    assert m["test_accuracy"] > 0.2  # the synthetic classes are learnable: chance is 0.1


def test_checkpoint_round_trip_with_weights_only(run_dir, tiny_mnist_dir):
    payload = torch.load(run_dir / "model.pt", weights_only=True)
    assert payload["model"] == "lenet5" and payload["classes"][0] == "T-shirt/top"
    model, meta = load_checkpoint(run_dir)
    assert count_parameters(model) == 44_426 and not model.training
    assert meta["input_shape"] == [1, 28, 28] and meta["mean"] == [0.2860]
    x = torch.randn(4, 1, 28, 28)
    again, _ = load_checkpoint(run_dir / "model.pt")
    with torch.no_grad():
        torch.testing.assert_close(model(x), again(x), rtol=0, atol=0)


def test_same_seed_same_result_on_cpu(tmp_path, tiny_mnist_dir, run_dir):
    again = _train(tmp_path, tiny_mnist_dir, "again")
    first = json.loads((run_dir / "metrics.json").read_text())
    second = json.loads((again / "metrics.json").read_text())
    assert first["train_loss"] == second["train_loss"]
    assert first["test_accuracies"] == second["test_accuracies"]


def test_cifar_training_with_augmentation(tmp_path, tiny_cifar_dir):
    out = tmp_path / "cifar"
    assert main(["train", "cifar-cnn", "--data-dir", str(tiny_cifar_dir), "--epochs", "1", "--limit", "64",
                 "--optimizer", "sgd", "--lr", "0.01", "--out", str(out), "--no-progress"]) == 0
    m = json.loads((out / "metrics.json").read_text())
    assert m["dataset"] == "cifar10" and m["config"]["augment"] == "auto" and m["params"] == 545_098


def test_threads_flag_sets_torch_threads(tmp_path, tiny_mnist_dir, capsys):
    before = torch.get_num_threads()
    try:
        out = _train(tmp_path, tiny_mnist_dir, "one-thread", "--threads", "1", "--epochs", "1")
        metrics = json.loads((out / "metrics.json").read_text())
        assert metrics["threads"] == 1 and metrics["config"]["threads"] == 1
    finally:
        torch.set_num_threads(before)


@pytest.mark.parametrize(
    "flag, value",
    [("--threads", "-1"), ("--lr", "nan"), ("--lr", "0"), ("--weight-decay", "-1"), ("--label-smoothing", "1"),
     ("--crop-padding", "-3"), ("--width-mult", "0"), ("--epochs", "0")],
)  # fmt: skip
def test_out_of_range_numbers_are_refused_before_training(tmp_path, capsys, flag, value):
    assert main(["train", "lenet5", flag, value, "--out", str(tmp_path / "bad"), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert f"out of range: {flag} {value}" in err and "Traceback" not in err
    assert not (tmp_path / "bad").exists()


def test_a_corrupt_dataset_file_is_a_clear_cli_error(tmp_path, tiny_mnist_dir, capsys):
    broken = tmp_path / "broken"
    broken.mkdir()
    for f in tiny_mnist_dir.iterdir():
        (broken / f.name).write_bytes(f.read_bytes())
    labels = broken / "train-labels-idx1-ubyte.gz"
    labels.write_bytes(labels.read_bytes()[:40])  # a cut-off download
    code = main(["train", "lenet5", "--data-dir", str(broken), "--out", str(tmp_path / "o"), "--no-progress"])
    assert code == 2
    err = capsys.readouterr().err
    assert "train-labels-idx1-ubyte.gz: corrupt or truncated" in err and "Traceback" not in err


def test_missing_data_is_a_clear_cli_error(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(datasets, "SYSTEM_DATA_ROOT", tmp_path / "system")
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.delenv("EDGECNN_DATA", raising=False)
    code = main(["train", "lenet5", "--dataset", "mnist", "--data-dir", str(tmp_path / "nothing"),
                 "--out", str(tmp_path / "out"), "--no-progress"])
    assert code == 2
    err = capsys.readouterr().err
    assert "not found" in err and str(tmp_path / "nothing") in err
    assert not (tmp_path / "out" / "model.pt").exists()


def test_wrong_input_size_is_rejected(tmp_path, tiny_cifar_dir, capsys):
    code = main(["train", "lenet5", "--dataset", "cifar10", "--data-dir", str(tiny_cifar_dir),
                 "--out", str(tmp_path / "o"), "--no-progress"])
    assert code == 2
    assert "28x28" in capsys.readouterr().err


def test_random_crop_flip_is_seeded_and_keeps_shape():
    x = torch.arange(2 * 1 * 28 * 28, dtype=torch.int64).reshape(2, 1, 28, 28).to(torch.uint8)
    a = random_crop_flip(x, torch.Generator().manual_seed(1))
    b = random_crop_flip(x, torch.Generator().manual_seed(1))
    assert a.shape == x.shape and a.dtype == torch.uint8
    assert torch.equal(a, b)
    assert not torch.equal(a, x)


def test_random_crop_flip_pixels_come_from_the_padded_image():
    x = torch.full((64, 3, 32, 32), 200, dtype=torch.uint8)
    out = random_crop_flip(x, torch.Generator().manual_seed(0))
    assert set(out.unique().tolist()) <= {0, 200}  # zero padding or the image itself
    assert (out == 0).any() and (out == 200).float().mean() > 0.8  # at most 4 px of padding


def test_swapped_idx_files_are_a_clear_error(tmp_path, tiny_mnist_dir, capsys):
    swapped = tmp_path / "swapped"
    swapped.mkdir()
    for prefix in ("train", "t10k"):
        images, labels = f"{prefix}-images-idx3-ubyte.gz", f"{prefix}-labels-idx1-ubyte.gz"
        (swapped / images).write_bytes((tiny_mnist_dir / labels).read_bytes())
        (swapped / labels).write_bytes((tiny_mnist_dir / images).read_bytes())
    code = main(["train", "lenet5", "--data-dir", str(swapped), "--out", str(tmp_path / "o"), "--no-progress"])
    assert code == 2
    assert "swapped" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


@pytest.mark.parametrize("terminal", [False, True])
def test_progress_bars_on_a_terminal_only(tmp_path, tiny_mnist_dir, monkeypatch, capsys, terminal):
    if terminal:
        monkeypatch.setattr(sys, "stderr", _Terminal())
    argv = ["train", "lenet5", "--dataset", "fashion-mnist", "--data-dir", str(tiny_mnist_dir), "--epochs", "1",
            "--limit", "64", "--batch-size", "32", "--device", "cpu", "--out", str(tmp_path / "run")]  # fmt: skip
    assert main(argv) == 0
    captured = capsys.readouterr()
    err = sys.stderr.getvalue() if terminal else captured.err
    assert ("epoch 1/1: 100%" in err) == terminal, err  # the bar; a log file gets none
    assert "epoch 1: train loss" in captured.out + err  # the epoch's summary line, either way
