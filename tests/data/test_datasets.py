"""IDX (MNIST / Fashion-MNIST) loading, error messages, ImageDataset helpers.

Run: python -m pytest -q tests/data/test_datasets.py
"""

import gzip
import os
import struct

import numpy as np
import pytest
import torch

from paperzoo.data.datasets import (
    DatasetCorruptError,
    DatasetNotFoundError,
    ImageDataset,
    load_image_dataset,
)
from paperzoo.data.idx import IdxFormatError, read_idx


def write_idx(path, arr: np.ndarray, gz: bool = False) -> None:
    """Write ``arr`` (uint8) in IDX format: magic 0x0000 08 <ndim>, big-endian int32 dims, data."""
    header = bytes([0, 0, 0x08, arr.ndim]) + struct.pack(">" + "i" * arr.ndim, *arr.shape)
    data = header + arr.astype(np.uint8).tobytes()
    if gz:
        with gzip.open(path, "wb") as f:
            f.write(data)
    else:
        with open(path, "wb") as f:
            f.write(data)


def make_mnist_dir(root, n_train=30, n_test=10, gz=True, dotted=False, seed=0):
    rng = np.random.default_rng(seed)
    os.makedirs(root, exist_ok=True)
    out = {}
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        imgs = rng.integers(0, 256, (n, 28, 28), dtype=np.uint8)
        lbls = rng.integers(0, 10, (n,), dtype=np.uint8)
        sep = "." if dotted else "-"
        ext = ".gz" if gz else ""
        write_idx(os.path.join(root, f"{prefix}-images{sep}idx3-ubyte{ext}"), imgs, gz)
        write_idx(os.path.join(root, f"{prefix}-labels{sep}idx1-ubyte{ext}"), lbls, gz)
        out[prefix] = (imgs, lbls)
    return out


@pytest.mark.parametrize("gz,dotted", [(True, False), (False, False), (False, True)])
def test_mnist_round_trip(tmp_path, gz, dotted):
    ref = make_mnist_dir(tmp_path, gz=gz, dotted=dotted)
    ds = load_image_dataset("mnist", "train", root=str(tmp_path))
    assert ds.images.shape == (30, 1, 28, 28) and ds.images.dtype == torch.uint8
    assert ds.labels.dtype == torch.int64
    assert np.array_equal(ds.images[:, 0].numpy(), ref["train"][0])
    assert np.array_equal(ds.labels.numpy(), ref["train"][1])
    assert ds.classes == [str(i) for i in range(10)] and ds.num_classes == 10 and ds.in_chans == 1
    test = load_image_dataset("mnist", "test", root=str(tmp_path))
    assert len(test) == 10 and np.array_equal(test.labels.numpy(), ref["t10k"][1])


def test_torchvision_layout_and_name_spellings(tmp_path):
    make_mnist_dir(tmp_path / "FashionMNIST" / "raw", gz=False)
    ds = load_image_dataset("Fashion-MNIST", "test", root=str(tmp_path))
    assert ds.name == "fashion_mnist" and ds.classes[0] == "T-shirt/top" and len(ds) == 10


def test_missing_dataset_message(tmp_path):
    with pytest.raises(DatasetNotFoundError) as e:
        load_image_dataset("mnist", "train", root=str(tmp_path))
    msg = str(e.value)
    assert str(tmp_path) in msg and "train-images-idx3-ubyte.gz" in msg
    assert isinstance(e.value, FileNotFoundError)
    with pytest.raises(DatasetNotFoundError, match="apt-get install dataset-fashion-mnist"):
        load_image_dataset("fashion_mnist", root=str(tmp_path))
    with pytest.raises(DatasetNotFoundError, match="cifar-10-python.tar.gz"):
        load_image_dataset("cifar10", root=str(tmp_path))


def test_unknown_name_and_split():
    with pytest.raises(ValueError, match="available"):
        load_image_dataset("imagenet")
    with pytest.raises(ValueError, match="split"):
        load_image_dataset("mnist", "val", root="/nonexistent")


def test_corrupt_files(tmp_path):
    make_mnist_dir(tmp_path, gz=False)
    path = tmp_path / "train-images-idx3-ubyte"
    path.write_bytes(path.read_bytes()[:-5])  # truncated
    with pytest.raises(DatasetCorruptError, match="truncated"):
        load_image_dataset("mnist", "train", root=str(tmp_path))
    path.write_bytes(b"\x01\x02\x03\x04garbage")  # bad magic
    with pytest.raises(IdxFormatError, match="magic"):
        read_idx(str(path))
    gz = tmp_path / "x-idx1-ubyte.gz"
    gz.write_bytes(b"not gzip at all")
    with pytest.raises(IdxFormatError, match="gzip"):
        read_idx(str(gz))


def test_label_count_mismatch(tmp_path):
    make_mnist_dir(tmp_path, gz=False)
    write_idx(tmp_path / "train-labels-idx1-ubyte", np.zeros(7, np.uint8))
    with pytest.raises(DatasetCorruptError):
        load_image_dataset("mnist", "train", root=str(tmp_path))


def test_env_var_location(tmp_path, monkeypatch):
    make_mnist_dir(tmp_path / "mnist")
    monkeypatch.setenv("PAPERZOO_DATA", str(tmp_path))
    assert len(load_image_dataset("mnist", "test")) == 10


def _toy(n=40, k=4, c=1):
    g = torch.Generator().manual_seed(0)
    return ImageDataset(torch.randint(0, 256, (n, c, 8, 8), dtype=torch.uint8, generator=g),
                        torch.arange(n) % k, [f"c{i}" for i in range(k)], "toy", (0.5,) * c, (0.25,) * c)


def test_image_dataset_validation():
    with pytest.raises(ValueError, match="uint8"):
        ImageDataset(torch.zeros(2, 1, 4, 4), torch.zeros(2, dtype=torch.long), ["a"], "x", (0.5,), (0.5,))
    with pytest.raises(ValueError, match="labels"):
        ImageDataset(torch.zeros(2, 1, 4, 4, dtype=torch.uint8), torch.zeros(3, dtype=torch.long), ["a"], "x",
                     (0.5,), (0.5,))
    with pytest.raises(ValueError, match="per channel"):
        ImageDataset(torch.zeros(2, 3, 4, 4, dtype=torch.uint8), torch.zeros(2, dtype=torch.long), ["a"], "x",
                     (0.5,), (0.5,))


def test_split_is_stratified_disjoint_and_seeded():
    ds = _toy()
    tr, va = ds.split(0.25, seed=3)
    assert len(tr) + len(va) == len(ds) and len(va) == 8
    assert torch.bincount(va.labels, minlength=4).tolist() == [2, 2, 2, 2]
    tr2, va2 = ds.split(0.25, seed=3)
    assert torch.equal(va.images, va2.images)
    _, va3 = ds.split(0.25, seed=4)
    assert not torch.equal(va.images, va3.images)
    # disjoint: every image row appears exactly once across the two parts
    rows = torch.cat([tr.images, va.images]).flatten(1)
    assert torch.unique(rows, dim=0).shape[0] == torch.unique(ds.images.flatten(1), dim=0).shape[0]


def test_compute_stats_matches_numpy():
    ds = _toy(c=3)
    ds = ImageDataset(ds.images, ds.labels, ds.classes, "toy", (0.5,) * 3, (0.25,) * 3)
    mean, std = ds.compute_stats()
    x = ds.images.numpy().astype(np.float64) / 255
    np.testing.assert_allclose(mean, x.mean(axis=(0, 2, 3)), rtol=1e-9)
    np.testing.assert_allclose(std, x.std(axis=(0, 2, 3)), rtol=1e-9)


def test_debian_fashion_mnist(fmnist_dir):
    ds = load_image_dataset("fashion_mnist", "test")  # root=None finds Debian's location
    assert ds.images.shape == (10000, 1, 28, 28)
    assert torch.bincount(ds.labels).tolist() == [1000] * 10  # the test set is balanced
    train = load_image_dataset("fashion_mnist", "train", root=fmnist_dir)
    assert len(train) == 60000
    mean, std = train.compute_stats()
    # the constants shipped in datasets._STATS are the training split's statistics
    assert abs(mean[0] - train.mean[0]) < 1e-4 and abs(std[0] - train.std[0]) < 1e-4


def test_data_image_size_resizes_a_tensor_dataset_once_with_antialiasing(tmp_path):
    import torch.nn.functional as F

    from paperzoo.train.classification import load_split

    make_mnist_dir(tmp_path, n_train=6, n_test=4)
    native = load_split("mnist", "train", root=str(tmp_path))
    big = load_split("mnist", "train", root=str(tmp_path), image_size=32)
    assert native.image_size == (28, 28) and big.image_size == (32, 32) and big.images.dtype == torch.uint8
    want = F.interpolate(native.images.float(), size=(32, 32), mode="bilinear", antialias=True).round().clamp(0, 255)
    assert torch.equal(big.images, want.to(torch.uint8))
    assert torch.equal(big.labels, native.labels) and big.classes == native.classes and big.mean == native.mean
    assert torch.equal(load_split("mnist", "train", root=str(tmp_path), image_size=28).images, native.images)
