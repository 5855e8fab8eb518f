"""The lecture's worked examples, run through the exporter's own conversion path (to_onnx).

Expected maps are computed here independently with a plain numpy sliding window and were
checked by hand. Errata found in the lecture (asserted below, so they stay documented):
- "2D Filter Convolution" (second example: image rows 11110/00110/00101/00111/11010, kernel
  0 1 0 / 1 0 1 / 0 1 0) prints 2 3 2 / 1 2 3 / 3 2 4. The correct map is 2 3 2 / 1 2 4 / 2 2 3:
  position (1,2) is 4 not 3 (window 1 1 0 / 1 0 1 / 1 1 1 has four 1s on the plus), (2,0) is 2
  not 3, and (2,2) is 3 not 4.
- "CNN Exercise": the printed map before the bias, -10 0 -5 15 / -5 0 -10 15 / 0 0 -15 15 /
  0 0 -15 15, is correct, and so are the pooled map, logits, probabilities and class.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from tests.export.lecture_examples import (
    CONV_EXAMPLES,
    EXERCISE,
    ExerciseCNN,
    conv_module,
    exercise_with_softmax,
    image_tensor,
)
from edgecnn.export.onnx_checks import check_onnx
from edgecnn.export.onnx_export import to_onnx
from edgecnn.export.cpu_inference import make_session
from edgecnn.training.models import count_parameters


def correlate(image, kernel, padding: int = 0, bias: float = 0.0) -> np.ndarray:
    """O[i, j] = sum_m sum_n I[i+m, j+n] F[m, n] + b, in float64, one window at a time."""
    img = np.pad(np.asarray(image, dtype=np.float64), padding)
    k = np.asarray(kernel, dtype=np.float64)
    kh, kw = k.shape
    out = np.empty((img.shape[0] - kh + 1, img.shape[1] - kw + 1))
    for i in range(out.shape[0]):
        for j in range(out.shape[1]):
            out[i, j] = (img[i : i + kh, j : j + kw] * k).sum() + bias
    return out


# Full feature maps, worked by hand and cross-checked with correlate().
HAND_MAPS = {
    "filter-x": [[4, 3, 4], [2, 4, 3], [2, 3, 4]],
    "filter-plus": [[2, 3, 2], [1, 2, 4], [2, 2, 3]],
    "vertical-edge": [[0, 30, 30, 0]] * 4,
    "valid-padding": [[6, -9, -8], [-3, -2, -3], [-3, 0, -2]],
    "same-padding": [
        [114, 328, -26, 470, 158],
        [53, 266, -61, -30, 344],
        [403, 116, -47, 295, 244],
        [108, -135, 256, -128, 344],
        [314, 346, 279, 153, 421],
    ],
}
# (example, row, col) -> (what the lecture prints, what is right)
LECTURE_ERRATA = {
    ("filter-plus", 1, 2): (3, 4),
    ("filter-plus", 2, 0): (3, 2),
    ("filter-plus", 2, 2): (4, 3),
}


@pytest.mark.parametrize("name", sorted(CONV_EXAMPLES))
def test_numpy_reference_matches_the_hand_worked_maps(name):
    e = CONV_EXAMPLES[name]
    np.testing.assert_array_equal(correlate(e.image, e.kernel, e.padding, e.bias), HAND_MAPS[name])


@pytest.mark.parametrize("name", sorted(CONV_EXAMPLES))
def test_lecture_printed_values_agree_except_the_known_errata(name):
    right = np.asarray(HAND_MAPS[name])
    for (i, j), printed in CONV_EXAMPLES[name].printed.items():
        if (name, i, j) in LECTURE_ERRATA:
            assert LECTURE_ERRATA[name, i, j] == (printed, right[i, j])
            assert printed != right[i, j]
        else:
            assert printed == right[i, j], f"{name} ({i},{j}): lecture prints {printed}, correct is {right[i, j]}"


@pytest.fixture(scope="module")
def conv_models():
    return {name: to_onnx(conv_module(e), e.input_shape, output_name="feature_map") for name, e in CONV_EXAMPLES.items()}


@pytest.fixture(scope="module")
def conv_sessions(conv_models):
    return {name: make_session(model.SerializeToString()) for name, model in conv_models.items()}


@pytest.mark.parametrize("name", sorted(CONV_EXAMPLES))
def test_conv_example_passes_the_exporters_checks(name, conv_models):
    """onnx.checker full_check, strict shape inference, the I/O contract and an ORT load, as every export."""
    e = CONV_EXAMPLES[name]
    check_onnx(conv_models[name], e.input_shape, [1, *np.asarray(HAND_MAPS[name]).shape], output_name="feature_map")


@pytest.mark.parametrize("name", sorted(CONV_EXAMPLES))
def test_conv_example_in_pytorch_and_onnx_runtime(name, conv_sessions):
    e = CONV_EXAMPLES[name]
    expected = np.asarray(HAND_MAPS[name], dtype=np.float32)
    x = image_tensor(e.image)
    with torch.no_grad():
        np.testing.assert_allclose(conv_module(e)(x)[0, 0].numpy(), expected, atol=1e-4)
    # batch of two (the image and twice it) also exercises the dynamic batch dimension
    batch = np.concatenate([x.numpy(), 2 * x.numpy()])
    (out,) = conv_sessions[name].run(None, {"input": batch})
    np.testing.assert_allclose(out[0, 0], expected, atol=1e-4)
    np.testing.assert_allclose(out[1, 0], 2 * expected, atol=1e-4)
    for (i, j), printed in e.printed.items():
        if (name, i, j) not in LECTURE_ERRATA:
            assert out[0, 0, i, j] == pytest.approx(printed, abs=1e-4)


def _exercise_reference() -> dict[str, np.ndarray]:
    conv = correlate(EXERCISE.image, EXERCISE.kernel)
    relu = np.maximum(conv + EXERCISE.conv_bias, 0)
    pooled = relu.reshape(2, 2, 2, 2).max(axis=(1, 3))
    logits = np.asarray(EXERCISE.fc_weight) @ pooled.reshape(-1) + np.asarray(EXERCISE.fc_bias)
    probabilities = np.exp(logits - logits.max()) / np.exp(logits - logits.max()).sum()
    return {"conv": conv, "pooled": pooled, "logits": logits, "probabilities": probabilities}


def test_exercise_printed_values_follow_from_its_inputs():
    ref = _exercise_reference()
    np.testing.assert_array_equal(ref["conv"], EXERCISE.printed_conv_without_bias)
    np.testing.assert_array_equal(ref["pooled"], EXERCISE.printed_pooled)
    np.testing.assert_allclose(ref["logits"], EXERCISE.printed_logits, atol=1e-12)
    np.testing.assert_allclose(ref["probabilities"][:2], EXERCISE.printed_probabilities[:2], rtol=1e-4)
    assert ref["probabilities"][2] == pytest.approx(EXERCISE.printed_probabilities[2], abs=1e-4)
    assert int(np.argmax(ref["probabilities"])) + 1 == EXERCISE.printed_class


def test_exercise_parameter_count_is_25():
    assert count_parameters(ExerciseCNN()) == (3 * 3 + 1) + (4 + 1) * 3 == 25


def test_exercise_in_pytorch():
    model = ExerciseCNN()
    x = image_tensor(EXERCISE.image)
    with torch.no_grad():
        pooled = model.features(x).reshape(2, 2).numpy()
        logits = model(x)[0].numpy()
    np.testing.assert_array_equal(pooled, EXERCISE.printed_pooled)
    np.testing.assert_allclose(logits, EXERCISE.printed_logits, atol=1e-5)


@pytest.mark.parametrize("softmax", [False, True], ids=["logits", "softmax"])
def test_exercise_in_onnx_runtime(softmax):
    model = exercise_with_softmax() if softmax else ExerciseCNN()
    output = "probabilities" if softmax else "logits"
    exported = to_onnx(model, EXERCISE.input_shape, output_name=output)
    check_onnx(exported, EXERCISE.input_shape, len(EXERCISE.printed_logits), output_name=output)
    session = make_session(exported.SerializeToString())
    (out,) = session.run(None, {"input": image_tensor(EXERCISE.image).numpy()})
    if softmax:
        np.testing.assert_allclose(out[0, :2], EXERCISE.printed_probabilities[:2], rtol=1e-4)
        assert out[0, 2] == pytest.approx(EXERCISE.printed_probabilities[2], abs=1e-4)
    else:
        np.testing.assert_allclose(out[0], EXERCISE.printed_logits, atol=1e-5)
    assert int(out[0].argmax()) + 1 == EXERCISE.printed_class
