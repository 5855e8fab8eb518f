"""edgecnn.v1.Classifier over gRPC: Classify (PNG, JPEG, tensors) and ModelInfo, and its errors."""

from __future__ import annotations

import io
import json
import struct
import zlib

import grpc
import numpy as np
import pytest
from edgecnn.protos import classifier_pb2
from edgecnn.server.settings import DEFAULT_MAX_IMAGE_PIXELS
from PIL import Image

from tests.onnx_models import (
    FASHION_MEAN,
    FASHION_STD,
    PARAMS_LENET5,
    png_bytes,
    reference_logits,
)
from tests.server.grpc_helpers import (
    MARGIN,
    TIMEOUT,
)


def test_classify_png_matches_onnxruntime(classifier_stub, repository, samples):
    images = samples["images"][:8]
    request = classifier_pb2.ClassifyRequest(model="lenet5", version=1, top_k=3)
    for image in images:
        request.images.add(encoded=png_bytes(image))
    response = classifier_stub.Classify(request, timeout=TIMEOUT)
    reference = reference_logits(repository["v1"], samples["x"][:8])
    assert (response.model, response.version) == ("lenet5", 1)
    assert len(response.results) == 8
    # Untrained weights: two classes can be within float noise of each other; the top-1 is only
    # compared where the reference's top-2 margin is clear (most images).
    margins = np.diff(np.sort(reference, axis=1)[:, -2:], axis=1)[:, 0]
    assert (margins > MARGIN).sum() >= len(images) // 2, margins
    for result, logits, margin in zip(response.results, reference, margins):
        top = result.predictions
        assert len(top) == 3
        if margin > MARGIN:
            assert top[0].index == int(np.argmax(logits))
        assert top[0].label == samples["classes"][top[0].index]
        scores = [p.score for p in top]
        assert scores == sorted(scores, reverse=True) and 0 < sum(scores) <= 1.0 + 1e-6
        expected = np.exp(logits - logits.max()) / np.exp(logits - logits.max()).sum()
        assert top[0].score == pytest.approx(float(expected.max()), rel=1e-4)


def test_classify_tensor_images_equal_png_images(classifier_stub, samples):
    png = classifier_pb2.ClassifyRequest(model="lenet5", top_k=10)
    tensors = classifier_pb2.ClassifyRequest(model="lenet5", top_k=10)
    for image, x in zip(samples["images"][:4], samples["x"][:4]):
        png.images.add(encoded=png_bytes(image))
        tensors.images.add(tensor=classifier_pb2.FloatTensor(shape=x.shape, data=x.astype("<f4").tobytes()))
    a = classifier_stub.Classify(png, timeout=TIMEOUT)
    b = classifier_stub.Classify(tensors, timeout=TIMEOUT)
    for ra, rb in zip(a.results, b.results):
        assert [p.index for p in ra.predictions] == [p.index for p in rb.predictions]
        np.testing.assert_allclose([p.score for p in ra.predictions], [p.score for p in rb.predictions], rtol=1e-5)


def encode(image: Image.Image, fmt: str) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt)
    return buffer.getvalue()


def jpeg_of(image_chw: np.ndarray) -> bytes:
    return encode(Image.fromarray(image_chw[0], mode="L"), "JPEG")


def rgb_png_of(image_chw: np.ndarray) -> bytes:
    """Three different channels: only the ITU-R 601-2 luma of convert("L") gives the reference."""
    grey = image_chw[0]
    return encode(Image.fromarray(np.stack([grey, 255 - grey, grey.T], axis=-1), mode="RGB"), "PNG")


def png_56x56_of(image_chw: np.ndarray) -> bytes:
    return encode(Image.fromarray(image_chw[0], mode="L").resize((56, 56), Image.Resampling.BICUBIC), "PNG")


def reference_input(data: bytes) -> np.ndarray:
    """Classify's preprocessing done here with Pillow + numpy: decode, greyscale, bilinear resize
    to 28x28, scale to [0, 1], normalize with Fashion-MNIST's mean/std (the model's)."""
    with Image.open(io.BytesIO(data)) as image:
        grey = image.convert("L").resize((28, 28), Image.Resampling.BILINEAR)
        pixels = np.asarray(grey, dtype=np.float32) / 255.0
    return ((pixels - np.float32(FASHION_MEAN)) / np.float32(FASHION_STD))[None].astype(np.float32)


@pytest.mark.parametrize("encoder", [jpeg_of, rgb_png_of, png_56x56_of], ids=["jpeg", "rgb-png", "png-56x56"])
def test_classify_decodes_jpeg_rgb_and_other_sizes_like_pillow(classifier_stub, repository, samples, encoder):
    encoded = [encoder(image) for image in samples["images"][:8]]
    request = classifier_pb2.ClassifyRequest(model="lenet5", version=1, top_k=10)
    for data in encoded:
        request.images.add(encoded=data)
    response = classifier_stub.Classify(request, timeout=TIMEOUT)
    assert (response.model, response.version, len(response.results)) == ("lenet5", 1, len(encoded))
    reference = reference_logits(repository["v1"], np.stack([reference_input(data) for data in encoded]))
    margins = np.diff(np.sort(reference, axis=1)[:, -2:], axis=1)[:, 0]
    for result, logits, margin in zip(response.results, reference, margins):
        scores = np.zeros(len(samples["classes"]))
        for p in result.predictions:
            assert p.label == samples["classes"][p.index]
            scores[p.index] = p.score
        expected = np.exp(logits - logits.max()) / np.exp(logits - logits.max()).sum()
        np.testing.assert_allclose(scores, expected, rtol=0, atol=1e-4)
        # the scores fix the logits up to a constant: compare those too, far tighter than 1e-4
        np.testing.assert_allclose(np.log(scores) - np.log(scores).mean(), logits - logits.mean(), rtol=0, atol=1e-4)
        if margin > MARGIN:
            assert result.predictions[0].index == int(np.argmax(logits))


def test_model_info(classifier_stub, repository, samples):
    info = classifier_stub.ModelInfo(classifier_pb2.ModelInfoRequest(model="lenet5"), timeout=TIMEOUT)
    assert (info.model, info.version, list(info.available_versions)) == ("lenet5", 2, [1, 2])
    assert info.parameters == PARAMS_LENET5 and info.architecture == "lenet5"
    assert info.onnx_bytes == repository["v2"].stat().st_size
    assert info.opset >= 7 and info.quantization == "none"
    assert info.execution_provider == "CPUExecutionProvider"
    assert list(info.input_shape) == [1, 28, 28] and list(info.labels) == list(samples["classes"])
    assert info.max_batch_size == 8 and info.dataset == "fashion-mnist"
    assert info.verification.present and info.verification.passed
    assert info.verification.summary.startswith("passed (") and "top-1 agreement" in info.verification.summary
    assert json.loads(info.verification.details_json)["passed"] is True


def huge_png(width: int, height: int) -> bytes:
    """A valid PNG header declaring width x height grey pixels, with one tiny IDAT: a few dozen
    bytes that would need width*height bytes once decoded."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\x00" * (width + 1))) + chunk(b"IEND", b"")


def gif_bytes(image_chw: np.ndarray) -> bytes:
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(image_chw[0], mode="L").save(buffer, format="GIF")
    return buffer.getvalue()


def broken_png(image_chw: np.ndarray) -> bytes:
    """A PNG whose image data continues in a chunk of a corrupt type: Pillow raises SyntaxError
    while decoding it (not OSError), after the header read fine."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    h, w = image_chw.shape[1:]
    pixels = zlib.compress(b"".join(b"\x00" + row.tobytes() for row in image_chw[0]))
    half = len(pixels) // 2
    header = struct.pack(">IIBBBBB", w, h, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", pixels[:half]) + chunk(b"ID\x01T", pixels[half:]) + chunk(b"IEND", b"")


def test_classify_errors(classifier_stub, samples):
    def images(*items) -> list:
        return [classifier_pb2.Image(**item) for item in items]

    png = png_bytes(samples["images"][0])
    cases = [
        (images({"encoded": b"not an image"}), "expected PNG or JPEG"),
        (images({"encoded": gif_bytes(samples["images"][0])}), "expected PNG or JPEG"),
        (images({"encoded": broken_png(samples["images"][0])}), "broken PNG file"),
        (images({"encoded": huge_png(13_000, 13_000)}), f"13000x13000 pixels exceed the server's limit of {DEFAULT_MAX_IMAGE_PIXELS}"),
        ([], "expected at least one"),
        (images({"tensor": classifier_pb2.FloatTensor(shape=[3, 28, 28], data=bytes(3 * 784 * 4))}), "expected [1, 28, 28]"),
        (images({"tensor": classifier_pb2.FloatTensor(shape=[1, 28, 28], data=np.full(784, np.inf, "<f4").tobytes())}), "expected finite"),
        (images({"encoded": png}) * 9, "max batch size"),
    ]
    valid = classifier_pb2.ClassifyRequest(model="lenet5", images=images({"encoded": png}))
    for bad_images, expected in cases:
        with pytest.raises(grpc.RpcError) as info:
            classifier_stub.Classify(classifier_pb2.ClassifyRequest(model="lenet5", images=bad_images), timeout=TIMEOUT)
        assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT, expected
        assert expected in info.value.details(), (expected, info.value.details())
        assert len(classifier_stub.Classify(valid, timeout=TIMEOUT).results) == 1, f"not serving after {expected!r}"
    with pytest.raises(grpc.RpcError) as info:
        classifier_stub.ModelInfo(classifier_pb2.ModelInfoRequest(model="lenet5", version=7), timeout=TIMEOUT)
    assert info.value.code() == grpc.StatusCode.NOT_FOUND and "expected one of: 1, 2" in info.value.details()
    assert len(classifier_stub.Classify(valid, timeout=TIMEOUT).results) == 1
