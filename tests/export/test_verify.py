"""`edgecnn verify`: ONNX Runtime against the recorded PyTorch checkpoint, with clear failures."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from onnx import numpy_helper

from edgecnn.cli import main as cli_main
from edgecnn.export.onnx_export import ExportError, export_run
from edgecnn.export.verify import Thresholds, compare, find_breaches, verify_file
from edgecnn.training import datasets
from edgecnn.training.checkpoint import load_checkpoint, save_checkpoint
from tests.export.export_helpers import fixed_seed_run, one_line_error, refused_flag, snapshot


@pytest.fixture(scope="module")
def exported(tmp_path_factory, fashion_mnist_dir):
    """A LeNet-5 run exported once; tests copy the run and repository before changing them."""
    root = tmp_path_factory.mktemp("verify")
    run = fixed_seed_run(root / "run", "lenet5")
    export_run(run, root / "repo", samples=10, test_images=100)
    return root


@pytest.fixture
def workspace(exported, tmp_path):
    """A private copy of the exported repository, and the module's run it was exported from."""
    shutil.copytree(exported / "repo", tmp_path / "repo")
    return tmp_path / "repo" / "lenet5", exported / "run"


def test_verify_cli_passes_and_writes_the_report(workspace, capsys):
    model_dir, run = workspace
    (model_dir / "1" / "verification.json").unlink()
    code = cli_main(["verify", str(model_dir), "--run-dir", str(run), "--samples", "20", "--test-images", "300"])
    out = capsys.readouterr().out
    assert code == 0, out
    assert "verification PASSED" in out and "max abs error" in out and "top-1 agreement" in out
    report = json.loads((model_dir / "1" / "verification.json").read_text())
    assert report["passed"]
    assert [(c["inputs"], c["count"]) for c in report["comparisons"]] == [("random", 20), ("test", 300)]
    test = report["comparisons"][1]
    assert test["onnx_accuracy"] == test["torch_accuracy"] and "fashion-mnist test split" in test["source"]


def test_a_perturbed_onnx_file_fails_naming_the_worst_sample(workspace, capsys):
    model_dir, run = workspace
    path = model_dir / "1" / "model.onnx"
    model = onnx.load(path)
    bias = {i.name: i for i in model.graph.initializer}[model.graph.node[-1].input[2]]
    values = numpy_helper.to_array(bias).copy()
    values[3] += 5e-4
    bias.CopyFrom(numpy_helper.from_array(values, bias.name))
    onnx.save(model, path)

    args = ["verify", str(model_dir), "--run-dir", str(run), "--samples", "5", "--test-images", "50"]
    code = cli_main(args)
    out = capsys.readouterr().out
    assert code == 1
    assert "verification FAILED" in out and "BREACH" in out and "worst is test image #" in out
    report = json.loads((model_dir / "1" / "verification.json").read_text())
    assert not report["passed"] and report["comparisons"][0]["max_abs_error"] == pytest.approx(5e-4, rel=1e-2)
    # a looser tolerance accepts the same file
    assert cli_main(args + ["--atol", "1e-3"]) == 0


def test_a_changed_or_missing_checkpoint_fails_clearly(exported, tmp_path, capsys):
    run = tmp_path / "run"
    shutil.copytree(exported / "run", run)
    repo = tmp_path / "repo"
    export_run(run, repo, verify=False)
    model, meta = load_checkpoint(run)
    with torch.no_grad():
        next(model.parameters()).add_(1.0)
    save_checkpoint(run / "model.pt", model, meta)
    args = ["verify", str(repo / "lenet5"), "--run-dir", str(run)]
    assert cli_main(args) == 2
    assert "changed since export: sha256" in one_line_error(capsys, "verify")

    (run / "model.pt").unlink()
    assert cli_main(args) == 2
    assert "is gone" in one_line_error(capsys, "verify")
    assert not (repo / "lenet5" / "1" / "verification.json").exists()


def test_unknown_version_is_refused(workspace, capsys):
    model_dir, run = workspace
    assert cli_main(["verify", str(model_dir), "--run-dir", str(run), "--version", "9"]) == 2
    assert "no version 9" in one_line_error(capsys, "verify")


def test_verify_needs_the_run_dir_and_finds_a_moved_run_by_it(workspace, tmp_path, capsys):
    """The ONNX file records the checkpoint's file name and sha256, not where it was: --run-dir says."""
    model_dir, run = workspace
    assert cli_main(["verify", str(model_dir)]) == 2
    assert "needs --run-dir RUN_DIR" in one_line_error(capsys, "verify")
    moved = tmp_path / "elsewhere" / "run"
    shutil.copytree(run, moved)
    args = ["--samples", "4", "--test-images", "20"]
    assert cli_main(["verify", str(model_dir), "--run-dir", str(moved), *args]) == 0, capsys.readouterr().err
    # the checkpoint file itself works as well
    assert cli_main(["verify", str(model_dir), "--run-dir", str(moved / "model.pt"), *args]) == 0


def _unknown_op(path: Path) -> None:
    """Keep the file decodable with its metadata, but give ONNX Runtime an operator it does not know."""
    model = onnx.load(path)
    model.graph.node[0].op_type = "NoSuchOperator"
    onnx.save(model, path)


@pytest.mark.parametrize(
    ("damage", "expected"),
    [
        (lambda path: path.write_bytes(b"\x08\x07garbage\xff\xff"), "is not a readable ONNX file"),
        (lambda path: path.write_bytes(path.read_bytes()[:-1000]), "is not a readable ONNX file"),
        (_unknown_op, "ONNX Runtime cannot load"),
        (lambda path: onnx.save(onnx.helper.make_model(onnx.helper.make_graph([], "g", [], [])), path),
         "lacks the edgecnn metadata"),
    ],
    ids=["garbage", "truncated", "unknown-op", "foreign"],
)
def test_an_unreadable_onnx_file_gives_one_clear_line(workspace, capsys, damage, expected):
    model_dir, run = workspace
    (model_dir / "1" / "verification.json").unlink()
    damage(model_dir / "1" / "model.onnx")
    assert cli_main(["verify", str(model_dir), "--run-dir", str(run), "--samples", "2", "--test-images", "0"]) == 2
    assert expected in one_line_error(capsys, "verify")
    assert not (model_dir / "1" / "verification.json").exists()


@pytest.mark.parametrize(("flag", "value"), [("--samples", "-1"), ("--test-images", "-2"), ("--rtol", "nan"), ("--version", "x")])
def test_verify_refuses_out_of_range_numbers(workspace, capsys, flag, value):
    model_dir, run = workspace
    with pytest.raises(SystemExit) as exited:
        cli_main(["verify", str(model_dir), "--run-dir", str(run), flag, value])
    assert exited.value.code == 2
    refused_flag(capsys, flag)


def test_missing_dataset_falls_back_to_random_inputs_and_says_so(tmp_path, monkeypatch, capsys):
    """CIFAR-10 is nowhere to be found: FP32 is compared on random inputs, loudly; INT8 calibration
    refuses random inputs unless explicitly allowed, and then cannot pass verification."""
    monkeypatch.setattr(datasets, "SYSTEM_DATA_ROOT", tmp_path / "system")  # even where CIFAR-10 is installed
    monkeypatch.delenv("EDGECNN_DATA", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    run = fixed_seed_run(tmp_path / "run", "cifar-cnn")
    repository = tmp_path / "repo"
    result = export_run(run, repository, samples=30)
    report = json.loads(result.verification_path.read_text())
    assert report["passed"] and [c["inputs"] for c in report["comparisons"]] == ["random"]
    assert report["notes"] and report["notes"][0].startswith("NO TEST IMAGES: dataset 'cifar10' not found")

    before = snapshot(repository)
    with pytest.raises(ExportError, match=r"INT8 calibration needs cifar10 training images: dataset 'cifar10' not found") as caught:
        export_run(run, repository, name="cnn-int8", quantize="int8", verify=False, calibration_images=16)
    assert str(tmp_path / "home" / ".cache" / "edgecnn" / "cifar10") in str(caught.value)
    assert str(tmp_path / "system" / "cifar10") in str(caught.value) and "--calibrate-on-random" in str(caught.value)
    args = ["export", str(run), "--repository", str(repository), "--quantize", "int8", "--no-verify"]
    assert cli_main(args) == 2
    assert "INT8 calibration needs cifar10 training images" in one_line_error(capsys, "export")
    assert snapshot(repository) == before

    int8 = export_run(run, repository, quantize="int8", verify=False, calibration_images=16, calibrate_on_random=True)
    calibration = onnx_metadata(int8.onnx_path)["edgecnn.calibration"]
    assert calibration.startswith("16 standard-normal random inputs (--calibrate-on-random; dataset 'cifar10' not found")
    failed = verify_file(int8.onnx_path, run, samples=8)
    assert not failed["passed"]
    assert any("accuracy-drop gate needs test images" in b for b in failed["breaches"])


def onnx_metadata(path: Path) -> dict[str, str]:
    return {p.key: p.value for p in onnx.load(path).metadata_props}


def test_compare_and_breaches_name_the_worst_sample():
    expected = np.array([[1.0, 2.0, 0.0], [5.0, 1.0, 0.0], [0.0, 0.0, 3.0]], np.float32)
    got = expected.copy()
    got[1, 0] -= 4.5  # sample 1 now picks class 1
    got[2, 2] += 2e-4
    labels = np.array([1, 0, 2])
    c = compare("test", "unit", expected, got, labels, Thresholds(atol=1e-4))
    assert c.worst_sample == 1 and c.max_abs_error == pytest.approx(4.5) and not c.within_tolerance
    assert c.top1_agreement == pytest.approx(2 / 3) and c.disagreeing_samples == [1]
    assert c.max_rel_error == pytest.approx(4.5 / 5.0)
    assert c.torch_accuracy == pytest.approx(1.0) and c.accuracy_drop_points == pytest.approx(100 / 3)
    names = ["a", "b", "c"]
    fp32 = find_breaches(c, "none", Thresholds(atol=1e-4), True, names, labels)
    assert len(fp32) == 2 and "test image #1 (label 'a')" in fp32[0] and "first disagreement" in fp32[1]
    int8 = find_breaches(c, "int8", Thresholds(max_accuracy_drop=1.0), True, names, labels)
    assert len(int8) == 1 and "33.33 points below" in int8[0]
    # rtol scales with the sample's largest |logit|: 2e-4 on a logit of 3 passes at rtol 1e-4
    got[1, 0] = expected[1, 0]
    loose = compare("test", "unit", expected, got, labels, Thresholds(atol=0.0, rtol=1e-4))
    assert loose.within_tolerance and loose.worst_sample == 2


def test_a_drop_of_exactly_the_limit_passes_the_gate():
    """921 vs 911 right of 1000 is a drop of exactly 1 point: within --max-accuracy-drop 1
    (as fractions it came out as 1.0000000000000009 and was refused)."""
    labels = np.zeros(1000, dtype=np.int64)
    expected = np.zeros((1000, 2), np.float32)
    expected[:921, 0] = 1.0
    expected[921:, 1] = 1.0
    got = expected.copy()
    got[911:921] = [0.0, 1.0]  # ten images fewer right
    c = compare("test", "unit", expected, got, labels, Thresholds())
    assert (c.torch_accuracy, c.onnx_accuracy, c.accuracy_drop_points) == (0.921, 0.911, 1.0)
    assert find_breaches(c, "int8", Thresholds(max_accuracy_drop=1.0), True, ["a", "b"], labels) == []
    assert find_breaches(c, "int8", Thresholds(max_accuracy_drop=0.9), True, ["a", "b"], labels)
