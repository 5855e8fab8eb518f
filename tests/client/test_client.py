"""EdgeClient and `edgecnn classify` against a real server on a free loopback port."""

from __future__ import annotations

import subprocess
import sys

import grpc
import numpy as np
import pytest

from edgecnn.cli import main
from edgecnn.client import ClientError, EdgeClient
from edgecnn.client.image_files import InputFileError, read_image_file
from tests.onnx_models import (
    FASHION_CLASSES,
    PARAMS_LENET5,
    normalized,
    png_bytes,
    reference_logits,
    sample_images,
)
from tests.servers import MODEL, TOKEN, running_server
from tests.servers import unused_address as free_address

MARGIN = 1e-3  # logits closer than this may swap ranks between two float paths (untrained weights)


@pytest.fixture(scope="module")
def samples() -> dict:
    images = sample_images(6)
    return {"images": images, "x": normalized(images), "classes": FASHION_CLASSES}


@pytest.fixture(scope="module")
def client(served_address):
    with EdgeClient(served_address, MODEL, timeout=10) as c:
        yield c


@pytest.fixture(scope="module")
def unused_address() -> str:
    return free_address()


def softmax(logits: np.ndarray) -> np.ndarray:
    e = np.exp(logits - logits.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def test_infer_equals_onnxruntime(client, served_repository, samples):
    x = samples["x"]
    np.testing.assert_allclose(client.infer(x), reference_logits(served_repository.onnx, x), rtol=1e-5, atol=1e-6)
    assert client.infer(x[0]).shape == (1, 10)  # one [C, H, W] sample is a batch of one


def test_classify_png_and_tensor(client, served_repository, samples):
    logits = reference_logits(served_repository.onnx, samples["x"])
    expected = softmax(logits)
    pngs = [png_bytes(image) for image in samples["images"]]
    for images in (pngs, list(samples["x"])):
        results = client.classify(images, top_k=3)
        assert len(results) == len(images)
        for preds, probs, row in zip(results, expected, logits):
            order = np.argsort(-row, kind="stable")
            gaps = row[order[:3]] - row[order[1:4]]
            for rank, p in enumerate(preds):
                if gaps[rank] > MARGIN and (rank == 0 or gaps[rank - 1] > MARGIN):  # this rank is not a near-tie
                    assert p.index == order[rank], (rank, row)
                assert p.score == pytest.approx(float(probs[p.index]), rel=1e-4)
            assert [p.label for p in preds] == [samples["classes"][p.index] for p in preds]
            assert [p.score for p in preds] == sorted((p.score for p in preds), reverse=True)


def test_model_info_and_metadata(client, samples):
    info = client.model_info()
    assert (info.model, info.version, info.architecture) == (MODEL, 1, "lenet5")
    assert info.parameters == PARAMS_LENET5 and list(info.input_shape) == [1, 28, 28]
    assert list(info.labels) == samples["classes"] and info.max_batch_size == 8
    metadata = client.model_metadata()
    assert list(metadata.inputs[0].shape) == [-1, 1, 28, 28] and metadata.versions == ["1"]


def test_health(client, served_address):
    assert client.health() == "SERVING"
    assert client.health("") == "SERVING"
    assert client.health("no-such-model") == "SERVICE_UNKNOWN"


def test_errors_carry_the_status_code(served_address, unused_address):
    with EdgeClient(served_address, "no-such-model") as c, pytest.raises(ClientError, match="NOT_FOUND") as info:
        c.infer(np.zeros((1, 28, 28), np.float32))
    assert info.value.code == grpc.StatusCode.NOT_FOUND
    with EdgeClient(served_address, MODEL) as c, pytest.raises(ClientError) as info:
        c.infer(np.zeros((1, 27, 28), np.float32))
    assert info.value.code == grpc.StatusCode.INVALID_ARGUMENT and "[N, 1, 28, 28]" in info.value.details
    with EdgeClient(unused_address, MODEL, timeout=2) as c, pytest.raises(ClientError, match="UNAVAILABLE"):
        c.model_info()


def test_bad_local_input_is_refused_before_sending(client):
    with pytest.raises(ValueError, match="expected float32"):
        client.infer(np.zeros((1, 1, 28, 28), np.uint8))
    with pytest.raises(ValueError, match=r"expected \[C, H, W\] or \[N, C, H, W\]"):
        client.infer(np.zeros((28, 28), np.float32))
    with pytest.raises(TypeError, match="expected encoded PNG/JPEG bytes"):
        client.classify(["not-bytes"])  # type: ignore[list-item]
    with pytest.raises(ValueError, match="no images"):
        client.classify([])


def test_token_and_auth_server(served_repository):
    with running_server(served_repository.dir, auth_token=TOKEN) as addr:
        with EdgeClient(addr, MODEL) as anonymous, pytest.raises(ClientError, match="UNAUTHENTICATED"):
            anonymous.model_info()
        with EdgeClient(addr, MODEL, token=TOKEN) as c:
            assert c.model_info().model == MODEL


# --- files and the CLI ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def image_files(tmp_path_factory, samples) -> dict:
    folder = tmp_path_factory.mktemp("images")
    files = {}
    for i in range(2):
        files[f"png{i}"] = folder / f"item{i}.png"
        files[f"png{i}"].write_bytes(png_bytes(samples["images"][i]))
    files["chw"] = folder / "one.npy"
    np.save(files["chw"], samples["x"][2])
    files["nchw"] = folder / "two.npy"
    np.save(files["nchw"], samples["x"][3:5])
    return files


def test_read_image_files(image_files, tmp_path):
    assert [i.name for i in read_image_file(image_files["nchw"])] == [f"{image_files['nchw']}[0]", f"{image_files['nchw']}[1]"]
    assert isinstance(read_image_file(image_files["png0"])[0].image, bytes)
    cases = {
        "missing.png": (None, "no such file"),
        "fake.png": (b"GIF89a", "not a PNG file"),
        "ints.npy": (np.zeros((1, 28, 28), np.int32), "expected a float32"),
        "flat.npy": (np.zeros(784, np.float32), r"expected \[C, H, W\] or \[N, C, H, W\]"),
        "image.gif": (b"GIF89a", "unsupported file type"),
    }
    for name, (content, message) in cases.items():
        path = tmp_path / name
        if isinstance(content, bytes):
            path.write_bytes(content)
        elif content is not None:
            np.save(path, content)
        with pytest.raises(InputFileError, match=message):
            read_image_file(path)


def test_an_npz_archive_named_npy_is_refused(tmp_path):
    path = tmp_path / "archive.npy"
    with open(path, "wb") as f:  # np.savez(path) would add .npz to the name
        np.savez(f, x=np.zeros((1, 28, 28), np.float32))
    with pytest.raises(InputFileError, match=r"archive.npy: an .npz archive; expected a .npy file"):
        read_image_file(path)


def test_cli_prints_a_table(served_address, image_files, served_repository, samples, capsys):
    files = [image_files["png0"], image_files["png1"], image_files["chw"], image_files["nchw"]]
    assert main(["classify", "--server", served_address, "--model", MODEL, "--top-k", "2", *map(str, files)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split() == ["FILE", "RANK", "LABEL", "SCORE"]
    assert len(lines) == 1 + 5 * 2  # five images, two rows each
    probs = softmax(reference_logits(served_repository.onnx, samples["x"][:5]))
    names = [str(files[0]), str(files[1]), str(files[2]), f"{files[3]}[0]", f"{files[3]}[1]"]
    for i, (name, p) in enumerate(zip(names, probs)):
        first, second = lines[1 + 2 * i], lines[2 + 2 * i]
        best = int(np.argmax(p))
        assert first.startswith(name) and samples["classes"][best] in first
        assert f"{p[best]:.4f}" in first
        assert second.split()[0] == "2"


def test_cli_errors(served_address, unused_address, image_files, tmp_path, capsys):
    png = str(image_files["png0"])
    assert main(["classify", "--server", served_address, "--model", MODEL, str(tmp_path / "nope.png")]) == 2
    assert "nope.png: no such file" in capsys.readouterr().err
    assert main(["classify", "--server", unused_address, "--model", MODEL, "--timeout", "2", png]) == 1
    assert "UNAVAILABLE" in capsys.readouterr().err
    assert main(["classify", "--server", served_address, "--model", "no-such-model", png]) == 1
    assert "NOT_FOUND" in capsys.readouterr().err
    assert main(["classify", "--server", "no-port", "--model", MODEL, png]) == 2
    assert "expected HOST:PORT" in capsys.readouterr().err
    assert main(["classify", "--server", served_address, "--model", MODEL, "--top-k", "0", png]) == 2
    assert "--top-k 0" in capsys.readouterr().err


def test_client_and_loadtest_never_import_torch():
    code = (
        "import sys, edgecnn.client, edgecnn.client.client, edgecnn.client.cmd_classify, edgecnn.client.cmd_health, "
        "edgecnn.loadtest.cmd_loadtest\n"
        "from edgecnn.client import EdgeClient\n"
        "assert 'torch' not in sys.modules, sorted(m for m in sys.modules if m.startswith('torch'))"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
