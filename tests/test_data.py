"""Offline datasets, torchvision loaders on files in the real on-disk formats, demo models."""

from __future__ import annotations

import hashlib
import pickle
import struct

import numpy as np
import pytest
import torch

from neuromapper.data import DigitCNN, load_dataset, load_mnist5k, load_torchvision, small_resnet18, stratified_split


def test_mnist5k_is_real_mnist_and_offline():
    data = load_mnist5k()
    assert data.x.shape == (5000, 1, 28, 28) and data.x.dtype == torch.float32
    assert float(data.x.min()) == 0.0 and float(data.x.max()) == 1.0
    assert sorted(set(data.y.tolist())) == list(range(10))
    assert 0.08 < float((data.x > 0.5).float().mean()) < 0.2  # pen strokes cover ~10-15% of an MNIST digit


def test_sklearn_digits():
    data = load_dataset("digits")
    assert data.x.shape == (1797, 1, 8, 8) and data.class_names == [str(i) for i in range(10)]


def _write_idx(path, array: np.ndarray) -> None:
    """Write ``array`` in the IDX format of LeCun's MNIST files (big-endian header, uint8 data)."""
    magic = {1: 2049, 3: 2051}[array.ndim]
    with open(path, "wb") as fh:
        fh.write(struct.pack(">" + "i" * (1 + array.ndim), magic, *array.shape))
        fh.write(array.astype(np.uint8).tobytes())


@pytest.mark.parametrize(("name", "folder"), [("mnist", "MNIST"), ("fashion-mnist", "FashionMNIST")])
def test_torchvision_mnist_like_from_local_idx_files(tmp_path, name, folder):
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, size=(12, 28, 28), dtype=np.uint8)
    labels = np.arange(12) % 10
    raw = tmp_path / folder / "raw"
    raw.mkdir(parents=True)
    for split, n in (("train", 12), ("t10k", 5)):
        _write_idx(raw / f"{split}-images-idx3-ubyte", images[:n])
        _write_idx(raw / f"{split}-labels-idx1-ubyte", labels[:n])
    data = load_torchvision(name, tmp_path)
    assert data.x.shape == (12, 1, 28, 28)
    np.testing.assert_allclose(data.x[:, 0].numpy(), images / 255.0, atol=1e-6)
    assert data.y.tolist() == labels.tolist()
    assert len(load_torchvision(name, tmp_path, train=False)) == 5


def test_torchvision_cifar10_from_local_pickles(tmp_path, monkeypatch):
    from torchvision.datasets import CIFAR10

    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    rng = np.random.default_rng(1)
    names = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
    batches = {}
    for i, batch in enumerate([f"data_batch_{k}" for k in range(1, 6)] + ["test_batch"]):
        # the real layout: a pickled dict (Python 2 str keys, read back as str with latin1), rows of
        # 3072 uint8 values (red plane, green plane, blue plane)
        content = {"data": rng.integers(0, 256, size=(3, 3072), dtype=np.uint8), "labels": [i, i + 1, i + 2]}
        (folder / batch).write_bytes(pickle.dumps(content, protocol=2))
        batches[batch] = content
    (folder / "batches.meta").write_bytes(pickle.dumps({"label_names": names}, protocol=2))

    def md5(name):
        return hashlib.md5((folder / name).read_bytes()).hexdigest()

    # torchvision checks each file against the md5 of the real 170 MB release; these small files
    # have the real format but not those bytes, so the checksum table is pointed at them instead.
    monkeypatch.setattr(CIFAR10, "train_list", [[f"data_batch_{k}", md5(f"data_batch_{k}")] for k in range(1, 6)])
    monkeypatch.setattr(CIFAR10, "test_list", [["test_batch", md5("test_batch")]])
    monkeypatch.setattr(CIFAR10, "meta", {**CIFAR10.meta, "md5": md5("batches.meta")})
    data = load_torchvision("cifar10", tmp_path)
    assert data.x.shape == (15, 3, 32, 32)
    assert data.class_names == names
    assert data.y.tolist()[:3] == [0, 1, 2]
    first = batches["data_batch_1"]["data"][0]
    np.testing.assert_allclose(data.x[0, 0].numpy().ravel(), first[:1024] / 255.0, atol=1e-6)  # red plane
    np.testing.assert_allclose(data.x[0, 2].numpy().ravel(), first[2048:] / 255.0, atol=1e-6)  # blue plane


def test_missing_torchvision_files_name_the_folder(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"mnist not found or incomplete under .*: expected .*MNIST/raw/train"):
        load_torchvision("mnist", tmp_path)
    with pytest.raises(FileNotFoundError, match=r"cifar10 not found or incomplete .*cifar-10-batches-py"):
        load_torchvision("cifar10", tmp_path)
    with pytest.raises(ValueError, match="pass root="):
        load_dataset("mnist")
    with pytest.raises(ValueError, match=r"dataset: expected one of \['mnist5k'"):
        load_dataset("imagenet")


def test_stratified_split_keeps_class_ratios():
    y = torch.as_tensor(np.repeat(np.arange(10), [100, 200, 100, 100, 100, 100, 100, 100, 100, 100]))
    train, probe = stratified_split(y, 220, seed=0)
    assert len(probe) == 220 and len(set(train) & set(probe)) == 0
    counts = np.bincount(y.numpy()[probe])
    assert counts[1] == 40 and counts[0] == 20
    with pytest.raises(ValueError, match="probe size"):
        stratified_split(y, 0)


@pytest.mark.parametrize(("channels", "size"), [(1, 28), (1, 8), (3, 32)])
def test_digit_cnn_sizes(channels, size):
    assert DigitCNN(in_channels=channels, image_size=size)(torch.zeros(2, channels, size, size)).shape == (2, 10)


def test_small_resnet_keeps_resolution():
    model = small_resnet18(in_channels=1)
    assert model(torch.zeros(2, 1, 28, 28)).shape == (2, 10)
    assert model.conv1.stride == (1, 1) and isinstance(model.maxpool, torch.nn.Identity)
