"""CIFAR-10/100 readers: binary and python versions, extracted and as .tar.gz, restricted unpickler.

Run: python -m pytest -q tests/data/test_cifar.py
"""

import io
import os
import pickle
import tarfile

import numpy as np
import pytest
import torch

from paperzoo.data.cifar import UnsafePickleError, restricted_loads
from paperzoo.data.datasets import DatasetCorruptError, load_image_dataset

N = 6  # images per batch file


def _fake(n, k, seed):
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, (n, 3072), dtype=np.uint8), rng.integers(0, k, n)


def write_cifar10_binary(d):
    os.makedirs(d, exist_ok=True)
    ref = {}
    for i, name in enumerate([f"data_batch_{j}.bin" for j in range(1, 6)] + ["test_batch.bin"]):
        x, y = _fake(N, 10, i)
        rec = np.concatenate([y[:, None].astype(np.uint8), x], axis=1)  # <label><3072 pixels>
        (d / name).write_bytes(rec.tobytes())
        ref[name] = (x, y)
    (d / "batches.meta.txt").write_text("\n".join(["airplane", "automobile", "bird", "cat", "deer", "dog", "frog",
                                                  "horse", "ship", "truck"]) + "\n\n")
    return ref


def write_cifar10_python(d, protocol=2):
    os.makedirs(d, exist_ok=True)
    ref = {}
    for i, name in enumerate([f"data_batch_{j}" for j in range(1, 6)] + ["test_batch"]):
        x, y = _fake(N, 10, 10 + i)
        with open(d / name, "wb") as f:  # bytes keys, as Python 2's cPickle files load with encoding="bytes"
            pickle.dump({b"batch_label": b"x", b"labels": y.tolist(), b"data": x, b"filenames": [b"a"] * N}, f,
                        protocol=protocol)
        ref[name] = (x, y)
    with open(d / "batches.meta", "wb") as f:
        pickle.dump({b"label_names": [b"c%d" % i for i in range(10)], b"num_vis": 3072}, f, protocol=protocol)
    return ref


def write_cifar100(d, version):
    os.makedirs(d, exist_ok=True)
    ref = {}
    for i, split in enumerate(["train", "test"]):
        x, fine = _fake(N, 100, 20 + i)
        coarse = fine // 5
        if version == "binary":
            rec = np.concatenate([coarse[:, None].astype(np.uint8), fine[:, None].astype(np.uint8), x], axis=1)
            (d / f"{split}.bin").write_bytes(rec.tobytes())
        else:
            with open(d / split, "wb") as f:
                pickle.dump({b"fine_labels": fine.tolist(), b"coarse_labels": coarse.tolist(), b"data": x}, f,
                            protocol=4)
        ref[split] = (x, fine)
    names = [f"fine{i}" for i in range(100)]
    if version == "binary":
        (d / "fine_label_names.txt").write_text("\n".join(names))
    else:
        with open(d / "meta", "wb") as f:
            pickle.dump({b"fine_label_names": [n.encode() for n in names]}, f)
    return ref


def _check(ds, ref_parts, k):
    x = np.concatenate([p[0] for p in ref_parts])
    y = np.concatenate([p[1] for p in ref_parts])
    assert ds.images.shape == (len(x), 3, 32, 32) and ds.images.dtype == torch.uint8
    # the record layout is R plane, G plane, B plane, row-major: reshape (3, 32, 32) is the image
    assert np.array_equal(ds.images.numpy().reshape(len(x), -1), x)
    assert np.array_equal(ds.labels.numpy(), y) and ds.num_classes == k


def test_cifar10_binary(tmp_path):
    ref = write_cifar10_binary(tmp_path / "cifar-10-batches-bin")
    train = load_image_dataset("cifar10", "train", root=str(tmp_path))
    _check(train, [ref[f"data_batch_{j}.bin"] for j in range(1, 6)], 10)
    assert train.classes[1] == "automobile" and len(train.mean) == 3
    _check(load_image_dataset("cifar10", "test", root=str(tmp_path / "cifar-10-batches-bin")),
           [ref["test_batch.bin"]], 10)
    os.rename(tmp_path / "cifar-10-batches-bin", tmp_path / "my_c10")  # the folder itself, under any name
    _check(load_image_dataset("cifar10", "test", root=str(tmp_path / "my_c10")), [ref["test_batch.bin"]], 10)


@pytest.mark.parametrize("protocol", [2, 4, 5])
def test_cifar10_python(tmp_path, protocol):
    ref = write_cifar10_python(tmp_path / "cifar-10-batches-py", protocol)
    ds = load_image_dataset("cifar-10", "test", root=str(tmp_path))
    _check(ds, [ref["test_batch"]], 10)
    assert ds.classes == [f"c{i}" for i in range(10)]


@pytest.mark.parametrize("version", ["binary", "python"])
def test_cifar100_fine_labels(tmp_path, version):
    d = tmp_path / ("cifar-100-binary" if version == "binary" else "cifar-100-python")
    ref = write_cifar100(d, version)
    ds = load_image_dataset("cifar100", "train", root=str(tmp_path))
    _check(ds, [ref["train"]], 100)
    assert ds.classes[7] == "fine7"


def test_reads_tar_gz_without_extracting(tmp_path):
    src = tmp_path / "src"
    ref = write_cifar10_python(src / "cifar-10-batches-py")
    archive = tmp_path / "data" / "cifar-10-python.tar.gz"
    archive.parent.mkdir()
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(src / "cifar-10-batches-py", arcname="cifar-10-batches-py")
    ds = load_image_dataset("cifar10", "test", root=str(tmp_path / "data"))
    _check(ds, [ref["test_batch"]], 10)
    assert sorted(os.listdir(tmp_path / "data")) == ["cifar-10-python.tar.gz"]  # nothing extracted


def test_truncated_binary_and_missing_batch(tmp_path):
    d = tmp_path / "cifar-10-batches-bin"
    write_cifar10_binary(d)
    (d / "test_batch.bin").write_bytes((d / "test_batch.bin").read_bytes()[:-1])
    with pytest.raises(DatasetCorruptError, match="records"):
        load_image_dataset("cifar10", "test", root=str(tmp_path))
    os.remove(d / "data_batch_3.bin")
    with pytest.raises(DatasetCorruptError, match="data_batch_3"):
        load_image_dataset("cifar10", "train", root=str(tmp_path))


class _Evil:
    def __reduce__(self):
        return (os.system, ("echo pwned > /dev/null",))


class _EvalEvil:
    def __reduce__(self):
        return (eval, ("1 + 1",))


@pytest.mark.parametrize("payload", [_Evil(), _EvalEvil(), {b"data": _Evil()},
                                     np.array([_Evil()], dtype=object)])
def test_restricted_unpickler_refuses_code(payload):
    for protocol in (2, 4):
        blob = pickle.dumps(payload, protocol=protocol)
        with pytest.raises(UnsafePickleError):
            restricted_loads(blob)


class _Touch:
    def __init__(self, path):
        self.path = str(path)

    def __reduce__(self):
        return (os.system, (f"touch {self.path}",))


def test_malicious_cifar_batch_is_refused(tmp_path):
    d = tmp_path / "cifar-10-batches-py"
    write_cifar10_python(d)
    marker = tmp_path / "pwned"
    blob = pickle.dumps({b"data": _Touch(marker), b"labels": []}, protocol=2)
    pickle.loads(blob)  # the plain unpickler really runs the payload (so the check below can fail)
    assert marker.exists()
    marker.unlink()
    (d / "test_batch").write_bytes(blob)
    with pytest.raises(UnsafePickleError, match="system"):
        load_image_dataset("cifar10", "test", root=str(tmp_path))
    assert not marker.exists()  # nothing was executed


def test_restricted_unpickler_accepts_plain_data():
    obj = {b"a": [1, 2.5, "s", b"b", (3, None, True)], "arr": np.arange(12, dtype=np.float32).reshape(3, 4)}
    for protocol in (2, 3, 4, 5):
        out = restricted_loads(pickle.dumps(obj, protocol=protocol))
        assert out[b"a"] == obj[b"a"] and np.array_equal(out["arr"], obj["arr"])
        assert out["arr"].dtype == np.float32
    buf = io.BytesIO()
    pickle.dump(np.asfortranarray(np.arange(6).reshape(2, 3)), buf, protocol=5)
    assert np.array_equal(restricted_loads(buf.getvalue()), np.arange(6).reshape(2, 3))
