"""Small ONNX classifiers and images for the serving-side tests, built without torch or any
dataset: LeNet-5's graph (the project's 44,426-parameter variant) with fixed-seed weights, the
metadata `edgecnn export` writes, and synthetic 28x28 grey images with Fashion-MNIST's labels
and normalization. Written into a Triton-layout repository as `edgecnn export` lays it out.
"""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from edgecnn import repository as repo

MODEL = "lenet5"
PARAMS_LENET5 = 44_426
INPUT_SHAPE = (1, 28, 28)
FASHION_CLASSES = [
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
]  # fmt: skip
FASHION_MEAN, FASHION_STD = 0.2860, 0.3530
OPSET = 17

# LeNet-5 for 28x28 (training/models.py): conv 6@5x5, pool, conv 16@5x5, pool, 256-120-84-10.
_LAYERS = [("conv1", (6, 1, 5, 5)), ("conv2", (16, 6, 5, 5)), ("fc1", (120, 256)), ("fc2", (84, 120)), ("fc3", (10, 84))]


def lenet5_onnx(seed: int = 0, metadata: dict | None = None, batch_dim: int | str = "batch") -> onnx.ModelProto:
    """LeNet-5 with He-scaled random weights from `seed`; `batch_dim` an int fixes the batch size."""
    rng = np.random.default_rng(seed)
    weights = []
    for name, shape in _LAYERS:
        fan_in = int(np.prod(shape[1:]))
        weights.append(numpy_helper.from_array((rng.standard_normal(shape) * np.sqrt(2.0 / fan_in)).astype(np.float32), f"{name}.weight"))
        weights.append(numpy_helper.from_array((0.1 * rng.standard_normal(shape[0])).astype(np.float32), f"{name}.bias"))
    nodes = [
        helper.make_node("Conv", ["input", "conv1.weight", "conv1.bias"], ["c1"], kernel_shape=[5, 5]),
        helper.make_node("Relu", ["c1"], ["r1"]),
        helper.make_node("MaxPool", ["r1"], ["p1"], kernel_shape=[2, 2], strides=[2, 2]),
        helper.make_node("Conv", ["p1", "conv2.weight", "conv2.bias"], ["c2"], kernel_shape=[5, 5]),
        helper.make_node("Relu", ["c2"], ["r2"]),
        helper.make_node("MaxPool", ["r2"], ["p2"], kernel_shape=[2, 2], strides=[2, 2]),
        helper.make_node("Flatten", ["p2"], ["f"], axis=1),
        helper.make_node("Gemm", ["f", "fc1.weight", "fc1.bias"], ["g1"], transB=1),
        helper.make_node("Relu", ["g1"], ["h1"]),
        helper.make_node("Gemm", ["h1", "fc2.weight", "fc2.bias"], ["g2"], transB=1),
        helper.make_node("Relu", ["g2"], ["h2"]),
        helper.make_node("Gemm", ["h2", "fc3.weight", "fc3.bias"], [repo.OUTPUT_NAME], transB=1),
    ]
    graph = helper.make_graph(
        nodes, "lenet5",
        [helper.make_tensor_value_info(repo.INPUT_NAME, TensorProto.FLOAT, [batch_dim, *INPUT_SHAPE])],
        [helper.make_tensor_value_info(repo.OUTPUT_NAME, TensorProto.FLOAT, [batch_dim, len(FASHION_CLASSES)])],
        initializer=weights,
    )  # fmt: skip
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)], producer_name="edgecnn-tests")
    model.ir_version = 8
    values = lenet5_metadata() if metadata is None else metadata
    for key, value in sorted(repo.encode_metadata(values).items()):
        model.metadata_props.add(key=key, value=value)
    onnx.checker.check_model(model, full_check=True)
    return model


def lenet5_metadata() -> dict:
    """The metadata `edgecnn export` writes for a Fashion-MNIST LeNet-5."""
    return {
        repo.Meta.MODEL: MODEL,
        repo.Meta.LABELS: FASHION_CLASSES,
        repo.Meta.MEAN: [FASHION_MEAN],
        repo.Meta.STD: [FASHION_STD],
        repo.Meta.PIXEL_SCALE: 1.0 / 255.0,
        repo.Meta.INPUT_LAYOUT: "NCHW",
        repo.Meta.INPUT_SHAPE: list(INPUT_SHAPE),
        repo.Meta.PARAMS: PARAMS_LENET5,
        repo.Meta.DATASET: "fashion-mnist",
        repo.Meta.TEST_ACCURACY: 0.1,
        repo.Meta.QUANTIZATION: "none",
    }


def write_version(
    repository: Path,
    name: str = MODEL,
    version: int = 1,
    seed: int = 0,
    max_batch_size: int = 8,
    max_queue_delay_us: int = 0,
    model: onnx.ModelProto | None = None,
    selftest: bool = True,
) -> Path:
    """repository/name/{config.pbtxt, labels.txt, version/model.onnx, version/verification.json,
    version/selftest.npz} as `edgecnn export` writes them, the batching set in config.pbtxt;
    returns the model.onnx path."""
    model_dir = Path(repository) / name
    version_dir = model_dir / str(version)
    version_dir.mkdir(parents=True, exist_ok=True)
    config = repo.build_config(name, INPUT_SHAPE, len(FASHION_CLASSES), max_batch_size, max_queue_delay_us)
    (model_dir / repo.CONFIG_NAME).write_text(repo.config_to_text(config))
    repo.write_labels(model_dir, FASHION_CLASSES)
    onnx_path = version_dir / repo.MODEL_FILENAME
    onnx.save(model if model is not None else lenet5_onnx(seed), onnx_path)
    # What the exporter's verification against PyTorch records; these models have no PyTorch twin.
    report = {"passed": True, "comparisons": [{"inputs": "random", "count": 16, "max_abs_error": 0.0, "top1_agreement": 1.0}]}
    (version_dir / repo.VERIFICATION_NAME).write_text(json.dumps(report))
    if selftest:
        write_selftest(onnx_path, version_dir / repo.SELFTEST_NAME)
    return onnx_path


def write_selftest(onnx_path: Path, path: Path, atol: float = 1e-4) -> None:
    """selftest.npz in `edgecnn export`'s format: golden inputs and the file's own CPU logits."""
    inputs = normalized(sample_images(8, seed=99))
    np.savez(path, inputs=inputs, logits=reference_logits(onnx_path, inputs), atol=np.float32(atol), rtol=np.float32(0.0))


def sample_images(n: int, seed: int = 0) -> np.ndarray:
    """uint8 (n, 1, 28, 28) grey images: noise with a bright square placed by a random class."""
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 60, size=(n, *INPUT_SHAPE), dtype=np.uint8)
    for i, label in enumerate(rng.integers(0, 10, size=n)):
        row, col = divmod(int(label), 4)
        images[i, :, row * 6 + 2 : row * 6 + 8, col * 6 + 2 : col * 6 + 8] = 250
    return images


def normalized(images: np.ndarray) -> np.ndarray:
    """The model's input for uint8 images, preprocessed as the server does for Classify."""
    return np.ascontiguousarray((images.astype(np.float32) / 255.0 - FASHION_MEAN) / FASHION_STD, dtype=np.float32)


def png_bytes(image_chw: np.ndarray) -> bytes:
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(image_chw[0], mode="L").save(buffer, format="PNG")
    return buffer.getvalue()


def reference_logits(onnx_path: Path, x: np.ndarray) -> np.ndarray:
    import onnxruntime as ort

    session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    return session.run([repo.OUTPUT_NAME], {repo.INPUT_NAME: x})[0]
