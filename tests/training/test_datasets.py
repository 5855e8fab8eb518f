import gzip

import numpy as np
import pytest

from edgecnn.training import datasets
from edgecnn.training.datasets import (
    CIFAR10_CLASSES,
    FASHION_CLASSES,
    FIRST_TEST_LABELS,
    DatasetFileError,
    DatasetNotFoundError,
    load_split,
    locate,
    read_idx,
)
from tests.datafiles import write_idx, write_idx_dataset


def test_idx_reader_roundtrip(tmp_path):
    array = np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4)
    write_idx(tmp_path / "x.gz", array)
    np.testing.assert_array_equal(read_idx(tmp_path / "x.gz"), array)


def test_idx_reader_rejects_truncated_file(tmp_path):
    path = tmp_path / "bad.gz"
    with gzip.open(path, "wb") as f:
        f.write(b"\x00\x00\x08\x01\x00\x00\x00\x10" + b"\x01" * 5)
    with pytest.raises(ValueError, match="header says 16 bytes"):
        read_idx(path)


def test_idx_reader_rejects_bad_magic(tmp_path):
    path = tmp_path / "bad"
    path.write_bytes(b"\x01\x02\x08\x01\x00\x00\x00\x01\x00")
    with pytest.raises(ValueError, match="not an idx file"):
        read_idx(path)


def test_fashion_mnist_format_from_data_dir(tiny_mnist_dir):
    split = load_split("fashion-mnist", "train", data_dir=tiny_mnist_dir)
    assert split.images.shape == (512, 1, 28, 28) and split.images.dtype == np.uint8
    assert split.labels.shape == (512,) and split.labels.dtype == np.int64
    assert split.classes == FASHION_CLASSES
    test = load_split("fashion-mnist", "test", data_dir=tiny_mnist_dir, limit=50)
    assert len(test) == 50
    x = test.normalized()
    assert x.dtype == np.float32 and x.shape == (50, 1, 28, 28)


def test_torchvision_layout_is_found(tmp_path, tiny_mnist_dir):
    raw = tmp_path / "MNIST" / "raw"
    raw.mkdir(parents=True)
    for f in tiny_mnist_dir.iterdir():
        (raw / f.name).write_bytes(f.read_bytes())
    assert locate("mnist", tmp_path) == raw
    assert load_split("mnist", "test", data_dir=tmp_path).classes[3] == "3"


def test_env_var_is_searched(monkeypatch, tiny_mnist_dir):
    monkeypatch.setenv("EDGECNN_DATA", str(tiny_mnist_dir))
    assert locate("mnist") == tiny_mnist_dir


def test_cifar_batches(tiny_cifar_dir):
    train = load_split("cifar10", "train", data_dir=tiny_cifar_dir)
    test = load_split("cifar10", "test", data_dir=tiny_cifar_dir)
    assert train.images.shape == (500, 3, 32, 32)
    assert test.images.shape == (100, 3, 32, 32)
    assert train.classes == CIFAR10_CLASSES
    assert len(train.mean) == 3


def test_missing_data_names_every_place_and_how_to_get_it(tmp_path, monkeypatch):
    monkeypatch.setattr(datasets, "SYSTEM_DATA_ROOT", tmp_path / "system")
    monkeypatch.setenv("EDGECNN_DATA", str(tmp_path / "env"))
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    with pytest.raises(DatasetNotFoundError) as info:
        load_split("mnist", "train")
    message = str(info.value)
    for place in (tmp_path / "env", tmp_path / "system/mnist", tmp_path / "home/.cache/edgecnn/mnist"):
        assert str(place) in message
    assert "--download" in message and "apt-get install dataset-mnist" in message


def test_an_explicit_data_dir_is_the_only_place_searched(tmp_path, monkeypatch, tiny_mnist_dir):
    """A --data-dir typo fails, naming it, instead of silently reading another copy."""
    monkeypatch.setenv("EDGECNN_DATA", str(tiny_mnist_dir))
    assert load_split("mnist", "test").images.shape[0] == 128
    with pytest.raises(DatasetNotFoundError) as info:
        load_split("mnist", "test", data_dir=tmp_path / "typo")
    assert str(tmp_path / "typo") in str(info.value) and str(tiny_mnist_dir) not in str(info.value)


def _copy(folder, target):
    target.mkdir(parents=True)
    for f in folder.iterdir():
        (target / f.name).write_bytes(f.read_bytes())
    return target


@pytest.mark.parametrize(
    "damage, expected",
    [
        (lambda data: data[: len(data) // 2], "corrupt or truncated"),  # a cut-off download
        (lambda data: b"not gzip at all", "corrupt or truncated"),
        (lambda data: gzip.compress(gzip.decompress(data)[:6]), "header of 1 dimensions is cut off"),
        (lambda data: gzip.compress(gzip.decompress(data)[:8] + bytes([42]) * (len(gzip.decompress(data)) - 8)), "labels range 42..42"),
    ],
)
def test_damaged_idx_files_name_the_file(tmp_path, tiny_mnist_dir, damage, expected):
    folder = _copy(tiny_mnist_dir, tmp_path / "data")
    labels = folder / "t10k-labels-idx1-ubyte.gz"
    labels.write_bytes(damage(labels.read_bytes()))
    with pytest.raises(DatasetFileError, match=expected) as info:
        load_split("mnist", "test", data_dir=folder)
    assert "t10k-labels" in str(info.value) or str(folder) in str(info.value)


def test_damaged_cifar_batch_names_the_file(tmp_path, tiny_cifar_dir):
    root = tmp_path / "root"
    _copy(tiny_cifar_dir / "cifar-10-batches-py", root / "cifar-10-batches-py")
    batch = root / "cifar-10-batches-py" / "test_batch"
    batch.write_bytes(batch.read_bytes()[:1000])
    with pytest.raises(DatasetFileError, match="test_batch: not a CIFAR-10 python batch"):
        load_split("cifar10", "test", data_dir=root)


def test_fashion_mnist_files_are_not_read_as_mnist(tmp_path):
    """The two datasets' idx files share names: the real files tell themselves apart by their first test labels."""
    folder = write_idx_dataset(tmp_path / "fashion", n_test=16)
    labels = np.array(FIRST_TEST_LABELS["fashion-mnist"] + [0] * 6, dtype=np.uint8)
    write_idx(folder / "t10k-labels-idx1-ubyte.gz", labels)
    assert load_split("fashion-mnist", "test", data_dir=folder).labels[:10].tolist() == FIRST_TEST_LABELS["fashion-mnist"]
    with pytest.raises(DatasetFileError, match="holds fashion-mnist, not mnist"):
        load_split("mnist", "test", data_dir=folder)


def test_real_fashion_mnist(fashion_mnist_dir):
    test = load_split("fashion-mnist", "test")
    assert test.images.shape == (10_000, 1, 28, 28)
    assert np.bincount(test.labels).tolist() == [1000] * 10
