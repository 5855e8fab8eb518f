"""selftest.npz: the golden inputs and CPU logits every exported version carries for the server's
load-time check, and edgecnn.repository.check_selftest, which the server applies to them."""

from __future__ import annotations

import numpy as np
import pytest

from edgecnn.export.metadata import read_metadata
from edgecnn.export.onnx_export import export_run
from edgecnn.repository import check_selftest
from edgecnn.training import datasets
from tests.export.export_helpers import assert_reproduces, fixed_seed_run

@pytest.fixture(scope="module")
def lenet_version(tmp_path_factory, fashion_mnist_dir):
    root = tmp_path_factory.mktemp("selftest")
    return export_run(fixed_seed_run(root / "run", "lenet5"), root / "repo", samples=10, test_images=100)


def test_fp32_selftest_holds_real_test_images_preprocessed_as_the_server_does(lenet_version):
    selftest = assert_reproduces(lenet_version, (1, 28, 28))
    assert (selftest["atol"], selftest["rtol"]) == (np.float32(1e-4), np.float32(0))
    # every stored input is one of the first test images, computed from the ONNX metadata alone
    meta = read_metadata(lenet_version.onnx_path)
    pixels = datasets.load_split("fashion-mnist", "test", limit=64).images.astype(np.float32)
    mean = np.asarray(meta["edgecnn.mean"], np.float32).reshape(-1, 1, 1)
    std = np.asarray(meta["edgecnn.std"], np.float32).reshape(-1, 1, 1)
    server_inputs = (pixels * float(meta["edgecnn.pixel_scale"]) - mean) / std
    for row in selftest["inputs"]:
        assert any(np.array_equal(row, candidate) for candidate in server_inputs)
    # picked so that a provider within tolerance cannot flip the class: top-1 leads by > 2 atol
    top2 = np.sort(selftest["logits"], axis=1)[:, -2:]
    assert (top2[:, 1] - top2[:, 0] > 2 * selftest["atol"]).all()


def test_without_test_images_the_selftest_uses_random_inputs(tmp_path, monkeypatch):
    monkeypatch.setattr(datasets, "SYSTEM_DATA_ROOT", tmp_path / "system")
    monkeypatch.delenv("EDGECNN_DATA", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    run = fixed_seed_run(tmp_path / "run", "cifar-cnn")
    version = export_run(run, tmp_path / "repo", verify=False)
    inputs = assert_reproduces(version, (3, 32, 32))["inputs"]
    assert inputs.min() < -2 and inputs.max() > 2  # standard normal, not a [0, 1] image


LOGITS = np.array([[3.0, 1.0, 0.0], [0.0, 2.0, -1.0], [0.5, 0.0, 4.0]], np.float32)


def test_check_selftest_accepts_outputs_within_tolerance():
    assert check_selftest(LOGITS, LOGITS, 1e-4, 0.0) is None
    assert check_selftest(LOGITS + np.float32(5e-5), LOGITS, 1e-4, 0.0) is None
    assert check_selftest(LOGITS * np.float32(1.01), LOGITS, 0.0, 0.02) is None  # rtol: relative to each |logit|


def test_check_selftest_refuses_a_value_beyond_tolerance_naming_the_worst_row():
    outputs = LOGITS.copy()
    outputs[0, 1] += 2e-4  # beyond, but not the worst
    outputs[2, 0] += 3e-3
    reason = check_selftest(outputs, LOGITS, 1e-4, 0.0)
    assert reason is not None and "\n" not in reason
    assert reason.startswith("row 2 of 3: max |error| 0.003") and "class 0" in reason and "2 of 3 rows differ" in reason
    assert "top-1" not in reason
    assert check_selftest(outputs, LOGITS, 1e-2, 0.0) is None


def test_check_selftest_refuses_a_changed_top1_class_even_within_tolerance():
    outputs = LOGITS.copy()
    outputs[1] = [2.0, 2.0 - 1e-3, -1.0]  # class 0 now wins row 1, every value within atol 3
    reason = check_selftest(outputs, LOGITS, 3.0, 0.0)
    assert reason is not None and reason.startswith("row 1 of 3") and "top-1 class 0 instead of 1" in reason


def test_check_selftest_refuses_non_finite_outputs_and_wrong_shapes():
    outputs = LOGITS.copy()
    outputs[1, 2] = np.nan
    assert check_selftest(outputs, LOGITS, 1.0, 0.0).startswith("row 1 of 3: non-finite")
    assert "shape [3, 2]" in check_selftest(LOGITS[:, :2], LOGITS, 1.0, 0.0)
