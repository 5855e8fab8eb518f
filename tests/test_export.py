"""`edgecnn export`: each architecture exports to a verified, Triton-style repository version;
a broken export leaves the repository exactly as it was."""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
import torch
from google.protobuf import text_format
from onnx import numpy_helper

from edgecnn import __version__
from edgecnn.cli import main as cli_main
from edgecnn.export import onnx_export
from edgecnn.export.checks import CheckError
from edgecnn.export.metadata import read_metadata
from edgecnn.export.onnx_export import ExportError, VerificationFailed, export_run
from edgecnn.export.runtime import make_session
from edgecnn.protos import model_config_pb2
from edgecnn.repository import Meta, read_labels
from edgecnn.training.checkpoint import file_sha256, load_checkpoint
from edgecnn.training.datasets import get_info, load_split
from tests.datafiles import write_cifar_dataset
from tests.export_helpers import DATASET_FOR, fixed_seed_run, snapshot

HEAVY = {"cifar-mlp", "mobilenet-v2"}


@pytest.fixture(scope="module")
def cifar_1000(tmp_path_factory):
    """A synthetic CIFAR-10 with 1,000 test images (the real one is not on the test machines)."""
    return write_cifar_dataset(tmp_path_factory.mktemp("cifar-1000"), per_batch=10, n_test=1000)


@pytest.fixture(scope="module")
def lenet_run(tmp_path_factory, fashion_mnist_dir):
    return fixed_seed_run(tmp_path_factory.mktemp("runs") / "lenet5", "lenet5")


@pytest.fixture(scope="module")
def lenet_repo(tmp_path_factory, lenet_run):
    repository = tmp_path_factory.mktemp("repo")
    export_run(lenet_run, repository, samples=20, test_images=200)
    return repository


@pytest.mark.parametrize("arch", ["lenet5", "mlp", "cifar-cnn", "cifar-mlp", "mobilenet-v2"])
def test_each_architecture_exports_and_meets_the_fp32_bar(arch, tmp_path, cifar_1000, fashion_mnist_dir):
    dataset = DATASET_FOR[arch]
    # the CIFAR runs record their data dir in metrics.json, as `edgecnn train --data-dir` does
    run = fixed_seed_run(tmp_path / "run", arch, data_dir=cifar_1000 if dataset == "cifar10" else None)
    # MobileNetV2 is slow in PyTorch on CPU: fewer images keep the suite fast
    test_images = 250 if arch == "mobilenet-v2" else 1000
    result = export_run(run, tmp_path / "repo", samples=16 if arch in HEAVY else 100, test_images=test_images)

    assert (result.name, result.version) == (arch, 1)
    info = get_info(dataset)
    config = text_format.Parse((result.model_dir / "config.pbtxt").read_text(), model_config_pb2.ModelConfig())
    assert config.name == arch and config.platform == "onnxruntime_onnx" and config.max_batch_size == 64
    assert [(i.name, i.data_type, list(i.dims)) for i in config.input] == [
        ("input", model_config_pb2.TYPE_FP32, list(info.shape))
    ]
    assert [(o.name, o.data_type, list(o.dims)) for o in config.output] == [("logits", model_config_pb2.TYPE_FP32, [10])]
    assert read_labels(result.model_dir) == info.classes

    model = onnx.load(result.onnx_path)
    assert {o.domain: o.version for o in model.opset_import}[""] == 18
    (inp,) = model.graph.input
    dims = inp.type.tensor_type.shape.dim
    assert dims[0].dim_param and [d.dim_value for d in dims[1:]] == list(info.shape)
    assert inp.type.tensor_type.elem_type == onnx.TensorProto.FLOAT

    report = json.loads(result.verification_path.read_text())
    assert report["passed"] and not report["breaches"] and not report["notes"]
    test = next(c for c in report["comparisons"] if c["inputs"] == "test")
    assert test["count"] == test_images and dataset in test["source"]
    for c in report["comparisons"]:
        assert c["max_abs_error"] <= 1e-4 and c["top1_agreement"] == 1.0 and c["max_rel_error"] < 1e-4
    assert test["onnx_accuracy"] == test["torch_accuracy"]


def test_metadata_round_trip_is_all_a_consumer_needs(lenet_repo, lenet_run):
    onnx_path = lenet_repo / "lenet5" / "1" / "model.onnx"
    meta = read_metadata(onnx_path)
    _, ckpt = load_checkpoint(lenet_run)
    assert meta[Meta.MODEL] == "lenet5"
    assert meta[Meta.LABELS] == ckpt["classes"]
    assert meta[Meta.MEAN] == pytest.approx(ckpt["mean"]) and meta[Meta.STD] == pytest.approx(ckpt["std"])
    assert meta[Meta.PIXEL_SCALE] == pytest.approx(1 / 255)
    assert meta[Meta.INPUT_LAYOUT] == "NCHW" and meta[Meta.INPUT_SHAPE] == [1, 28, 28]
    assert meta[Meta.PARAMS] == 44_426 and meta[Meta.DATASET] == "fashion-mnist"
    assert meta[Meta.TEST_ACCURACY] == ckpt["test_accuracy"]
    assert meta[Meta.CHECKPOINT_SHA256] == file_sha256(lenet_run / "model.pt")
    assert meta[Meta.CHECKPOINT_PATH] == str((lenet_run / "model.pt").resolve())
    assert meta[Meta.TORCH_VERSION] == str(torch.__version__) and meta[Meta.EDGECNN_VERSION] == __version__
    assert meta[Meta.QUANTIZATION] == "none"

    # Preprocess raw uint8 pixels with the metadata alone and name the class, as a server would.
    split = load_split("fashion-mnist", "test", limit=8)
    scale = np.float32(meta[Meta.PIXEL_SCALE])
    mean = np.asarray(meta[Meta.MEAN], np.float32).reshape(1, -1, 1, 1)
    std = np.asarray(meta[Meta.STD], np.float32).reshape(1, -1, 1, 1)
    x = ((split.images.astype(np.float32) * scale - mean) / std).astype(np.float32)
    (logits,) = make_session(onnx_path).run(None, {"input": x})
    model, _ = load_checkpoint(lenet_run)
    with torch.no_grad():
        expected = model(torch.from_numpy(split.normalized())).numpy()
    np.testing.assert_allclose(logits, expected, atol=1e-4)
    names = [meta[Meta.LABELS][i] for i in logits.argmax(1)]
    assert names == [ckpt["classes"][i] for i in expected.argmax(1)]


def test_next_export_is_version_2_and_an_existing_version_is_refused(lenet_repo, lenet_run):
    result = export_run(lenet_run, lenet_repo, verify=False)
    assert result.version == 2 and result.onnx_path.is_file() and not result.verification_path.exists()
    before = snapshot(lenet_repo)
    with pytest.raises(ExportError, match="already exists"):
        export_run(lenet_run, lenet_repo, version=1, verify=False)
    assert snapshot(lenet_repo) == before


def _perturbed(real_to_onnx):
    """A converter that yields a valid graph whose last layer's bias is off by 1e-3."""

    def convert(*args, **kwargs):
        model = real_to_onnx(*args, **kwargs)
        names = {init.name: init for init in model.graph.initializer}
        bias = names[model.graph.node[-1].input[2]]
        bias.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(bias) + np.float32(1e-3), bias.name))
        return model

    return convert


def test_broken_export_is_caught_and_leaves_the_repository_untouched(lenet_repo, lenet_run, tmp_path, monkeypatch):
    monkeypatch.setattr(onnx_export, "to_onnx", _perturbed(onnx_export.to_onnx))
    before = snapshot(lenet_repo)
    with pytest.raises(VerificationFailed) as caught:
        export_run(lenet_run, lenet_repo, samples=10, test_images=50)
    assert snapshot(lenet_repo) == before
    assert not caught.value.report["passed"]
    message = str(caught.value)
    assert "logits differ by up to 0.001" in message and "worst is random input #" in message

    # a brand-new repository is not even created, so no config.pbtxt or labels.txt appear
    fresh = tmp_path / "fresh-repo"
    with pytest.raises(VerificationFailed):
        export_run(lenet_run, fresh, name="brand-new", samples=10, test_images=50)
    assert not fresh.exists()


def test_a_graph_breaking_the_contract_fails_the_structural_checks(lenet_repo, lenet_run, monkeypatch):
    real = onnx_export.to_onnx

    def renamed_output(*args, **kwargs):
        model = real(*args, **kwargs)
        model.graph.output[0].name = "probabilities"
        return model

    monkeypatch.setattr(onnx_export, "to_onnx", renamed_output)
    before = snapshot(lenet_repo)
    with pytest.raises(CheckError):
        export_run(lenet_run, lenet_repo, verify=False)
    assert snapshot(lenet_repo) == before


def test_cli_export_with_name_version_opset_and_no_verify(lenet_run, tmp_path, capsys):
    repository = tmp_path / "repo"
    code = cli_main([
        "export", str(lenet_run), "--repository", str(repository), "--name", "fashion", "--version", "7",
        "--opset", "17", "--no-verify",
    ])
    assert code == 0, capsys.readouterr().err
    assert "verification skipped" in capsys.readouterr().out
    onnx_path = repository / "fashion" / "7" / "model.onnx"
    assert {o.domain: o.version for o in onnx.load(onnx_path).opset_import}[""] == 17
    assert not (repository / "fashion" / "7" / "verification.json").exists()
    config = text_format.Parse((repository / "fashion" / "config.pbtxt").read_text(), model_config_pb2.ModelConfig())
    assert config.name == "fashion"


def test_bad_arguments_are_refused_clearly(lenet_run, tmp_path, capsys):
    with pytest.raises(ValueError, match="opset must be >= 17"):
        export_run(lenet_run, tmp_path / "r", opset=16)
    with pytest.raises(ExportError, match="model name"):
        export_run(lenet_run, tmp_path / "r", name="../escape")
    assert cli_main(["export", str(tmp_path / "no-run"), "--repository", str(tmp_path / "r")]) == 1
    assert "no checkpoint at" in capsys.readouterr().err
    assert not (tmp_path / "r").exists()
