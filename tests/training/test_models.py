import json

import pytest
import torch

from edgecnn.cli import main
from edgecnn.training.models import MODELS, build_model, count_parameters

# The counts README's model table quotes (mobilenet-v2: 3 input channels, 10 classes, width 1.0).
README_COUNTS = {"lenet5": 44_426, "cifar-cnn": 545_098, "mlp": 109_386, "cifar-mlp": 6_246_410, "mobilenet-v2": 2_236_682}


@pytest.mark.parametrize("name,expected", README_COUNTS.items())
def test_parameter_counts_match_readme(name, expected):
    assert count_parameters(build_model(name)) == expected


@pytest.mark.parametrize("name", list(MODELS))
def test_forward_shape(name):
    spec = MODELS[name]
    model = build_model(name).eval()
    with torch.no_grad():
        out = model(torch.randn(2, *spec.input_shape))
    assert out.shape == (2, 10)


@pytest.mark.parametrize("shape", [(1, 28, 28), (3, 32, 32)])
def test_mobilenet_adapts_to_small_inputs(shape):
    model = build_model("mobilenet-v2", in_channels=shape[0], width_mult=0.5).eval()
    with torch.no_grad():
        assert model(torch.randn(1, *shape)).shape == (1, 10)
    # early strides removed: the last feature map is 4x4, not 1x1
    with torch.no_grad():
        assert model.features(torch.randn(1, *shape)).shape[-1] == 4


def test_mobilenet_width_multiplier_shrinks_it():
    assert count_parameters(build_model("mobilenet-v2", width_mult=0.5)) < count_parameters(build_model("mobilenet-v2"))


def test_width_mult_rejected_for_other_models():
    with pytest.raises(ValueError, match="mobilenet-v2 only"):
        build_model("lenet5", width_mult=0.5)


def test_unknown_model_names_the_known_ones():
    with pytest.raises(ValueError, match="lenet5"):
        build_model("resnet9000")


def test_models_cli_json(capsys):
    assert main(["models", "--json"]) == 0
    rows = {r["name"]: r for r in json.loads(capsys.readouterr().out)}
    assert set(rows) == set(MODELS)
    for name, expected in README_COUNTS.items():
        assert rows[name]["params"] == expected
    assert rows["lenet5"]["input_shape"] == [1, 28, 28]
    assert rows["lenet5"]["default_dataset"] == "fashion-mnist"
    assert rows["cifar-cnn"]["input_shape"] == [3, 32, 32]


def test_models_cli_table(capsys):
    assert main(["models"]) == 0
    out = capsys.readouterr().out
    assert "44,426" in out and "6,246,410" in out and "2,236,682" in out
