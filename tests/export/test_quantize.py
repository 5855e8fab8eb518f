"""INT8 (static QDQ) and FP16 variants: smaller files, float32 I/O, accuracy drop gated."""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest

from edgecnn.cli import main as cli_main
from edgecnn.export import onnx_export
from edgecnn.export.metadata import CALIBRATION_KEY, read_metadata
from edgecnn.export.onnx_export import export_run
from edgecnn.repository import Meta
from edgecnn.training.train import TrainConfig, train
from tests.export.export_helpers import assert_reproduces, snapshot


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory, fashion_mnist_dir):
    """LeNet-5 briefly trained (2 epochs on 6,000 Fashion-MNIST images, ~76%): drops then mean something."""
    out = tmp_path_factory.mktemp("trained") / "lenet5"
    train(TrainConfig(model="lenet5", dataset="fashion-mnist", epochs=2, limit=6000, lr=0.01, out=str(out), progress=False))
    return out


@pytest.fixture(scope="module")
def variants(trained_run, tmp_path_factory):
    repository = tmp_path_factory.mktemp("repo")
    return {
        q: export_run(trained_run, repository, name=f"lenet5-{q}", quantize=q, samples=20, test_images=1000)
        for q in ("none", "int8", "fp16")
    }


def _report(result) -> dict:
    return json.loads(result.verification_path.read_text())


def test_variants_are_smaller(variants):
    size = {q: r.onnx_path.stat().st_size for q, r in variants.items()}
    assert size["int8"] < size["none"] / 2.5
    assert size["fp16"] < size["none"] * 0.6
    for q, r in variants.items():
        assert _report(r)["size_bytes"] == size[q]


@pytest.mark.parametrize("quantization", ["int8", "fp16"])
def test_variant_reports_its_accuracy_drop_and_passes_the_gate(variants, quantization):
    report = _report(variants[quantization])
    assert report["passed"] and report["quantization"] == quantization
    test = next(c for c in report["comparisons"] if c["inputs"] == "test")
    assert test["count"] == 1000 and test["torch_accuracy"] > 0.5
    assert test["accuracy_drop_points"] == pytest.approx(100 * (test["torch_accuracy"] - test["onnx_accuracy"]))
    assert test["accuracy_drop_points"] <= 1.0
    assert 0 < test["max_abs_error"] and test["top1_agreement"] > 0.9
    assert read_metadata(variants[quantization].onnx_path)[Meta.QUANTIZATION] == quantization


def test_int8_is_static_qdq_with_per_channel_weights_calibrated_on_training_images(variants):
    path = variants["int8"].onnx_path
    model = onnx.load(path)
    ops = {n.op_type for n in model.graph.node}
    assert {"QuantizeLinear", "DequantizeLinear"} <= ops
    int8_weights = [i for i in model.graph.initializer if i.data_type == onnx.TensorProto.INT8]
    assert int8_weights and any(len(i.dims) == 4 for i in int8_weights)  # the conv kernels
    # per-channel: the conv weight scales are vectors, one per output channel
    scales = {i.name: list(i.dims) for i in model.graph.initializer if i.data_type == onnx.TensorProto.FLOAT}
    weight_dq = [n for n in model.graph.node if n.op_type == "DequantizeLinear" and n.input[0] in {w.name for w in int8_weights}]
    assert any(scales.get(n.input[1]) in ([6], [16]) for n in weight_dq)
    calibration = {p.key: p.value for p in model.metadata_props}[CALIBRATION_KEY]
    assert "fashion-mnist train split" in calibration
    assert [i.type.tensor_type.elem_type for i in (*model.graph.input, *model.graph.output)] == [onnx.TensorProto.FLOAT] * 2


def test_fp16_keeps_float32_io(variants):
    model = onnx.load(variants["fp16"].onnx_path)
    assert any(i.data_type == onnx.TensorProto.FLOAT16 for i in model.graph.initializer)
    assert [i.type.tensor_type.elem_type for i in (*model.graph.input, *model.graph.output)] == [onnx.TensorProto.FLOAT] * 2


def test_a_badly_calibrated_int8_model_breaches_the_gate_unless_loosened(trained_run, variants, monkeypatch, capsys):
    real = onnx_export._calibration_images

    def squashed(*args, **kwargs):
        images, source = real(*args, **kwargs)
        return images * np.float32(1e-3), source  # activation ranges ~1000x too small: saturation

    monkeypatch.setattr(onnx_export, "_calibration_images", squashed)
    repository = variants["none"].model_dir.parent
    args = ["export", str(trained_run), "--repository", str(repository), "--name", "lenet5-int8",
            "--quantize", "int8", "--samples", "5", "--test-images", "500"]
    before = snapshot(repository)
    assert cli_main(args) == 1
    err = capsys.readouterr().err
    assert snapshot(repository) == before
    assert "points below PyTorch FP32" in err and "first disagreement at test image #" in err

    assert cli_main(args + ["--max-accuracy-drop", "100"]) == 0
    out = capsys.readouterr().out
    assert "(int8)" in out and "drop" in out and "verification PASSED" in out
    assert (repository / "lenet5-int8" / "2" / "model.onnx").is_file()


@pytest.mark.parametrize("quantization", ["none", "int8", "fp16"])
def test_each_variant_carries_a_selftest_its_file_reproduces(variants, quantization):
    selftest = assert_reproduces(variants[quantization], (1, 28, 28))
    if quantization == "none":
        assert selftest["atol"] == np.float32(1e-4)
    else:  # what another execution provider can meet: 5% of the largest |logit|, at least 1e-2
        largest = np.abs(selftest["logits"]).max()
        assert selftest["atol"] >= max(np.float32(1e-2), np.float32(0.05) * largest)
    assert selftest["rtol"] == 0


def test_int8_keeps_the_named_nodes_in_float_with_the_calibration_asked_for(trained_run, variants, capsys):
    from edgecnn.export.int8_search import quantizable_nodes
    from edgecnn.export.onnx_export import to_onnx
    from edgecnn.export.quantize import prepare_for_int8
    from edgecnn.training.checkpoint import load_checkpoint

    model, meta = load_checkpoint(trained_run)
    nodes = quantizable_nodes(prepare_for_int8(to_onnx(model, meta["input_shape"])))
    assert [n.op_type for n in nodes] == ["Conv", "Conv", "Gemm", "Gemm", "Gemm"]
    assert nodes[0].role.startswith("stem 5x5 conv") and nodes[-1].module == "classifier.5"
    last = nodes[-1].name
    repository = variants["none"].model_dir.parent
    args = ["export", str(trained_run), "--repository", str(repository), "--name", "lenet5-int8-mixed", "--quantize", "int8",
            "--calibration-method", "percentile", "--int8-exclude", last, "--samples", "5", "--test-images", "500"]  # fmt: skip
    assert cli_main(args) == 0
    out = onnx.load(repository / "lenet5-int8-mixed" / "1" / "model.onnx")
    dequantized = {n.output[0] for n in out.graph.node if n.op_type == "DequantizeLinear"}
    gemms = [n for n in out.graph.node if n.op_type == "Gemm"]
    floats = {i.name for i in out.graph.initializer if i.data_type == onnx.TensorProto.FLOAT}
    assert gemms[-1].input[1] in floats, "the excluded classifier keeps its float32 weights"
    assert gemms[0].input[1] in dequantized, "the other layers' weights are int8"
    calibration = {p.key: p.value for p in out.metadata_props}[CALIBRATION_KEY]
    assert "percentile calibration" in calibration and f"kept in float: {last}" in calibration

    capsys.readouterr()
    assert cli_main(args[:-4] + ["--int8-exclude", "no_such_node", "--name", "lenet5-int8-typo"]) == 2
    assert "no node named no_such_node" in capsys.readouterr().err
    assert not (repository / "lenet5-int8-typo").exists()
