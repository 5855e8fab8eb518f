"""`edgecnn export`: each architecture exports to a verified, Triton-style repository version;
a broken export leaves the repository exactly as it was."""

from __future__ import annotations

import json
import shutil

import numpy as np
import onnx
import pytest
import torch
from google.protobuf import text_format
from onnx import numpy_helper

from edgecnn import __version__
from edgecnn.cli import main as cli_main
from edgecnn.export import onnx_export
from edgecnn.export.onnx_checks import CheckError
from edgecnn.export.metadata import read_metadata
from edgecnn.export.onnx_export import ExportError, VerificationFailed, export_run
from edgecnn.export.cpu_inference import make_session
from edgecnn.protos import model_config_pb2
from edgecnn.repository import Meta, read_labels, versions
from edgecnn.training.checkpoint import file_sha256, load_checkpoint, save_checkpoint
from edgecnn.training.models import build_model
from edgecnn.training.datasets import get_info, load_split
from tests.datafiles import write_cifar_dataset
from tests.export.export_helpers import DATASET_FOR, fixed_seed_run, one_line_error, refused_flag, snapshot

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
def test_each_architecture_exports_and_meets_the_fp32_bar(arch, tmp_path, request):
    """The issue's FP32 bar: max abs error <= 1e-4 and 100% top-1 agreement on 1,000 test images."""
    dataset = DATASET_FOR[arch]
    # only the Fashion-MNIST models need the real dataset; the CIFAR ones use the synthetic files,
    # their run recording the data dir in metrics.json as `edgecnn train --data-dir` does
    data_dir = request.getfixturevalue("cifar_1000" if dataset == "cifar10" else "fashion_mnist_dir")
    run = fixed_seed_run(tmp_path / "run", arch, data_dir=data_dir if dataset == "cifar10" else None)
    test_images = 1000
    # the heavy models are slow in PyTorch on CPU: fewer random inputs, never fewer test images
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
    assert meta[Meta.CHECKPOINT_FILE] == "model.pt"
    # no machine path travels with the file: nothing in its metadata names where the run was
    props = {p.key: p.value for p in onnx.load(onnx_path).metadata_props}
    assert "edgecnn.checkpoint_path" not in props
    assert not [k for k, v in props.items() if str(lenet_run.parent) in v or str(lenet_run.resolve().parent) in v]
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
    assert result.selftest_path.is_file()  # --no-verify still writes the load-time self-test
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
    with pytest.raises(ExportError, match="asked for opset 30, but torch.onnx produced opset"):
        export_run(lenet_run, tmp_path / "r", opset=30, verify=False)
    assert not (tmp_path / "r").exists()
    with pytest.raises(ExportError, match="model name"):
        export_run(lenet_run, tmp_path / "r", name="../escape")
    with pytest.raises(ValueError, match="max_batch_size must be >= 1"):
        export_run(lenet_run, tmp_path / "r", max_batch_size=0)
    with pytest.raises(ValueError, match="calibration_images must be >= 1"):
        export_run(lenet_run, tmp_path / "r", quantize="int8", calibration_images=0)
    with pytest.raises(ValueError, match="only applies to --quantize int8"):
        export_run(lenet_run, tmp_path / "r", calibrate_on_random=True)
    assert cli_main(["export", str(tmp_path / "no-run"), "--repository", str(tmp_path / "r")]) == 2
    assert "no checkpoint at" in one_line_error(capsys, "export")
    assert not (tmp_path / "r").exists()


@pytest.mark.parametrize(
    ("flag", "value"),
    [("--max-batch-size", "0"), ("--samples", "-1"), ("--test-images", "-2"), ("--calibration-images", "0"),
     ("--version", "0"), ("--atol", "-1e-4")],
)
def test_cli_refuses_out_of_range_numbers(flag, value, lenet_run, tmp_path, capsys):
    with pytest.raises(SystemExit) as exited:
        cli_main(["export", str(lenet_run), "--repository", str(tmp_path / "r"), flag, value])
    assert exited.value.code == 2
    refused_flag(capsys, flag)
    assert not (tmp_path / "r").exists()


def _foreign_checkpoints(lenet_run, root):
    """model.pt files export cannot use: corrupt, not edgecnn's, an older format, weights that do not fit."""
    model, meta = load_checkpoint(lenet_run)
    garbage = root / "garbage"
    garbage.mkdir()
    (garbage / "model.pt").write_bytes(b"not a checkpoint at all")
    foreign = root / "foreign"
    foreign.mkdir()
    torch.save({"state_dict": model.state_dict()}, foreign / "model.pt")
    old = root / "old"
    old.mkdir()
    old_meta = {k: v for k, v in meta.items() if k != "model_kwargs"}
    torch.save({"format": "edgecnn-checkpoint/1", **old_meta, "state_dict": model.state_dict()}, old / "model.pt")
    no_shape = root / "no-shape"
    no_shape.mkdir()
    save_checkpoint(no_shape / "model.pt", model, {k: v for k, v in meta.items() if k != "input_shape"})
    misfit = root / "misfit"
    misfit.mkdir()
    save_checkpoint(misfit / "model.pt", build_model("mlp", num_classes=10), meta)  # mlp weights, lenet5 named
    return {
        "garbage": (garbage, "not a usable edgecnn checkpoint"),
        "foreign": (foreign, "not an edgecnn checkpoint"),
        "old": (old, "KeyError: 'model_kwargs'"),
        "no-shape": (no_shape, "lacks input_shape"),
        "misfit": (misfit, "RuntimeError: Error(s) in loading state_dict"),
    }


def test_unusable_checkpoints_give_one_clear_line(lenet_run, tmp_path, capsys):
    repository = tmp_path / "repo"
    for kind, (run, expected) in _foreign_checkpoints(lenet_run, tmp_path).items():
        assert cli_main(["export", str(run), "--repository", str(repository), "--no-verify"]) == 2, kind
        assert expected in one_line_error(capsys, "export"), kind
    assert not repository.exists()


class _DataDependent(torch.nn.Module):
    """Control flow on a tensor's value: torch.export cannot capture it."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = torch.nn.Linear(28 * 28, 10)

    def forward(self, x):
        y = self.fc(x.flatten(1))
        return y if y.sum() > 0 else -y


def test_a_model_torch_cannot_export_gives_one_clear_line(lenet_run, tmp_path, capsys, monkeypatch):
    real = onnx_export.load_source
    monkeypatch.setattr(onnx_export, "load_source", lambda path: (_DataDependent().eval(), real(path)[1]))
    assert cli_main(["export", str(lenet_run), "--repository", str(tmp_path / "repo"), "--no-verify"]) == 2
    line = one_line_error(capsys, "export")
    assert "torch.onnx could not convert _DataDependent for input [batch, 1, 28, 28]: TorchExportError" in line
    assert "data-dependent" in line and "\x1b[" not in line
    assert not (tmp_path / "repo").exists()


def _lenet_variant(lenet_run, root, **changes):
    """lenet_run's checkpoint with meta changed (and the model rebuilt for another class count)."""
    model, meta = load_checkpoint(lenet_run)
    meta = {**meta, **changes}
    if len(meta["classes"]) != 10:
        meta["model_kwargs"] = {**meta["model_kwargs"], "num_classes": len(meta["classes"])}
        torch.manual_seed(0)
        model = build_model("lenet5", **meta["model_kwargs"])
    root.mkdir()
    save_checkpoint(root / "model.pt", model, meta)
    return root


def test_a_new_version_must_match_the_models_labels_shape_and_classes(lenet_repo, lenet_run, tmp_path, capsys):
    """labels.txt and config.pbtxt are shared by all versions: a mismatching run cannot relabel them."""
    _, meta = load_checkpoint(lenet_run)
    relabeled = _lenet_variant(lenet_run, tmp_path / "relabeled", classes=[c.upper() for c in meta["classes"]])
    five = _lenet_variant(lenet_run, tmp_path / "five", classes=meta["classes"][:5])
    cifar = fixed_seed_run(tmp_path / "cifar", "cifar-cnn")
    before = snapshot(lenet_repo)
    with pytest.raises(ExportError, match=r"labels.txt lists 10 labels .* first differ at index 0: 'T-shirt/top' vs 'T-SHIRT/TOP'"):
        export_run(relabeled, lenet_repo, name="lenet5", verify=False)
    with pytest.raises(ExportError, match=r"input dims \[1, 28, 28\] -> output dims \[10\]; this run has input \[1, 28, 28\] -> 5 classes"):
        export_run(five, lenet_repo, name="lenet5", verify=False)
    with pytest.raises(ExportError, match=r"this run has input \[3, 32, 32\] -> 10 classes. .*another --name"):
        export_run(cifar, lenet_repo, name="lenet5", verify=False)
    with pytest.raises(ExportError, match="max_batch_size 64, not the requested 8"):
        export_run(lenet_run, lenet_repo, max_batch_size=8, verify=False)
    args = ["export", str(relabeled), "--repository", str(lenet_repo), "--name", "lenet5", "--no-verify"]
    assert cli_main(args) == 2
    assert "shared by every version" in one_line_error(capsys, "export")
    assert snapshot(lenet_repo) == before


def test_a_new_version_leaves_config_and_labels_alone(lenet_repo, lenet_run, tmp_path):
    repository = tmp_path / "repo"
    shutil.copytree(lenet_repo, repository)
    model_dir = repository / "lenet5"
    config_path, labels_path = model_dir / "config.pbtxt", model_dir / "labels.txt"
    config = text_format.Parse(config_path.read_text(), model_config_pb2.ModelConfig())
    config.max_batch_size = 8  # hand-tuned serving settings survive new versions
    config.dynamic_batching.max_queue_delay_microseconds = 0
    config_path.write_text(text_format.MessageToString(config))
    stamps = {p: (p.read_bytes(), p.stat().st_mtime_ns, p.stat().st_ino) for p in (config_path, labels_path)}

    latest = versions(model_dir)[-1]
    result = export_run(lenet_run, repository, verify=False)
    assert result.version == latest + 1 and result.onnx_path.is_file()
    assert {p: (p.read_bytes(), p.stat().st_mtime_ns, p.stat().st_ino) for p in stamps} == stamps
    assert not [p.name for p in repository.iterdir() if p.name.startswith(".")]  # no staging left behind
    # an explicit --max-batch-size equal to the model's is fine
    assert export_run(lenet_run, repository, max_batch_size=8, verify=False).version == latest + 2


@pytest.fixture(scope="module")
def lenet_onnx(lenet_run):
    model, meta = load_checkpoint(lenet_run)
    return onnx_export.to_onnx(model, meta["input_shape"])


@pytest.fixture
def cached_conversion(monkeypatch, lenet_onnx):
    """lenet_run's conversion, done once: the fault-injection exports below differ only in file handling."""

    def convert(*args, **kwargs):
        copy = onnx.ModelProto()
        copy.CopyFrom(lenet_onnx)
        return copy

    monkeypatch.setattr(onnx_export, "to_onnx", convert)


# Every step of an export that writes to disk, as (module, attribute) to make fail.
FAULTS = {
    "onnx.save": (onnx, "save"),
    "write_report": (onnx_export, "write_report"),
    "write_selftest": (onnx_export, "write_selftest"),
    "config_to_text": (onnx_export, "config_to_text"),
    "write_labels": (onnx_export, "write_labels"),
    "os.rename": (onnx_export.os, "rename"),
}


@pytest.mark.parametrize("fault", sorted(FAULTS))
@pytest.mark.parametrize("existing", [True, False], ids=["existing-model", "new-model"])
def test_a_failure_at_any_step_leaves_the_repository_as_it_was(
    fault, existing, lenet_repo, lenet_run, tmp_path, monkeypatch, cached_conversion
):
    """Whatever fails, the repository is unchanged; an export that succeeds only adds its version."""
    repository = tmp_path / "repo"
    shutil.copytree(lenet_repo, repository)
    name = "lenet5" if existing else "fresh"
    calls = []

    def failing(*args, **kwargs):
        calls.append(args)
        raise OSError(28, "No space left on device (injected)")

    before = snapshot(repository)
    with monkeypatch.context() as patch:
        patch.setattr(*FAULTS[fault], failing)
        try:
            result = export_run(lenet_run, repository, name=name, samples=4, test_images=20)
        except OSError as exc:
            assert "injected" in str(exc) and calls
            result = None
    after = snapshot(repository)
    if result is None:
        assert after == before
    else:
        assert not calls  # the faulty step is not needed on this path
        added = {k for k in after if k not in before}
        prefix = f"{name}/{result.version}" if existing else name
        assert added and all(k == prefix or k.startswith(prefix + "/") for k in added)
        assert {k: v for k, v in after.items() if k not in added} == before
