"""Readers for CIFAR-10 / CIFAR-100 (Krizhevsky, "Learning Multiple Layers of Features from Tiny Images",
2009; https://www.cs.toronto.edu/~kriz/cifar.html), from either of the two published versions:

* the **binary version** (``cifar-10-batches-bin/``, ``cifar-100-binary/``): fixed-size records of
  ``<label byte(s)><3072 pixel bytes>``, pixels as 1024 red, then 1024 green, then 1024 blue values in
  row-major order, i.e. one record is already a (3, 32, 32) image;
* the **python version** (``cifar-10-batches-py/``, ``cifar-100-python/``): pickled dicts. Pickle can run
  arbitrary code, so they go through :func:`restricted_loads`, which rebuilds only numpy arrays of plain
  dtypes, lists, dicts, strings, bytes and numbers and refuses every other global.

Each can be read from the extracted directory or straight from the downloaded ``.tar.gz`` archive
(members are read in memory, never extracted, so archive paths cannot escape ``root``).
"""

from __future__ import annotations

import io
import os
import pickle
import tarfile
from collections.abc import Callable
from typing import Any

import numpy as np

__all__ = ["CifarFormatError", "UnsafePickleError", "cifar_sources", "read_cifar", "restricted_loads"]

IMAGE_BYTES = 3 * 32 * 32

CIFAR10_CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]


class CifarFormatError(ValueError):
    """A CIFAR file does not have the documented layout (wrong size, keys, dtype or label range)."""


class UnsafePickleError(pickle.UnpicklingError):
    """The pickle asks for a global outside the small allow-list of :func:`restricted_loads`."""


# ------------------------------------------------------------------------------------ restricted unpickler
def _reconstruct(subtype: Any, shape: Any, dtype: Any) -> np.ndarray:
    # numpy's pickle entry point: ``_reconstruct(ndarray, (0,), b'b')`` then ``__setstate__`` fills it.
    if subtype is not np.ndarray:
        raise UnsafePickleError(f"refusing to rebuild array subclass {subtype!r}")
    return np.ndarray.__new__(np.ndarray, shape, dtype)


def _safe_dtype(*args: Any) -> np.dtype:
    d = np.dtype(*args)
    if d.hasobject:  # object arrays would unpickle arbitrary Python objects element by element
        raise UnsafePickleError(f"refusing object dtype {d}")
    return d


def _frombuffer(buf: Any, dtype: Any, shape: Any, order: str) -> np.ndarray:
    # numpy >= 1.16 pickles arrays with protocol 5 as ``_frombuffer(PickleBuffer, dtype, shape, order)``.
    dtype = _safe_dtype(dtype)
    arr = np.frombuffer(bytes(buf), dtype=dtype)
    return arr.reshape(shape, order="F" if order == "F" else "C")


def _latin1_encode(text: str, encoding: str = "utf-8") -> bytes:
    # Python 3 writes ``bytes`` in protocol <= 2 pickles as ``_codecs.encode(str, 'latin1')``.
    if encoding not in ("latin1", "latin-1"):
        raise UnsafePickleError(f"refusing _codecs.encode with encoding {encoding!r}")
    return text.encode("latin1")


_ALLOWED: dict[tuple[str, str], Callable[..., Any] | type] = {
    ("numpy.core.multiarray", "_reconstruct"): _reconstruct,
    ("numpy._core.multiarray", "_reconstruct"): _reconstruct,
    ("numpy.core.numeric", "_frombuffer"): _frombuffer,
    ("numpy._core.numeric", "_frombuffer"): _frombuffer,
    ("numpy", "ndarray"): np.ndarray,
    ("numpy", "dtype"): _safe_dtype,
    ("_codecs", "encode"): _latin1_encode,
}


class _RestrictedUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        try:
            return _ALLOWED[(module, name)]
        except KeyError:
            raise UnsafePickleError(
                f"refusing to load global {module}.{name}: only numpy arrays, lists, dicts, strings and bytes "
                "are allowed in a CIFAR pickle"
            ) from None

    def persistent_load(self, pid: Any) -> Any:
        raise UnsafePickleError("refusing persistent ids in a CIFAR pickle")


def restricted_loads(data: bytes) -> Any:
    """Unpickle ``data`` allowing only plain numpy arrays, containers, strings, bytes and numbers.

    The CIFAR python batches were written by Python 2's cPickle, hence ``encoding="bytes"``: their str keys
    come back as ``bytes`` (``b"data"``), and the arrays' raw buffers stay bytes as numpy expects.

    Raises:
        UnsafePickleError: the pickle references any other global (e.g. ``os.system``).
    """
    return _RestrictedUnpickler(io.BytesIO(data), encoding="bytes").load()


# ----------------------------------------------------------------------------------------- file sources
class _DirSource:
    def __init__(self, directory: str) -> None:
        self.where = directory

    def read(self, name: str) -> bytes | None:
        path = os.path.join(self.where, name)
        if not os.path.isfile(path):
            return None
        with open(path, "rb") as f:
            return f.read()


class _TarSource:
    def __init__(self, archive: str, prefix: str) -> None:
        self.where, self.prefix = archive, prefix
        self._tar: tarfile.TarFile | None = None

    def read(self, name: str) -> bytes | None:
        if self._tar is None:
            try:
                self._tar = tarfile.open(self.where, "r:*")
            except (tarfile.TarError, OSError, EOFError) as e:
                raise CifarFormatError(f"{self.where}: not a readable tar archive ({e})") from e
        try:
            member = self._tar.getmember(f"{self.prefix}/{name}")
        except KeyError:
            return None
        f = self._tar.extractfile(member)
        return None if f is None else f.read()


# Layouts of the four published variants: (directory / archive prefix, archive file name).
_LAYOUTS = {
    ("cifar10", "binary"): ("cifar-10-batches-bin", "cifar-10-binary.tar.gz"),
    ("cifar10", "python"): ("cifar-10-batches-py", "cifar-10-python.tar.gz"),
    ("cifar100", "binary"): ("cifar-100-binary", "cifar-100-binary.tar.gz"),
    ("cifar100", "python"): ("cifar-100-python", "cifar-100-python.tar.gz"),
}

_FILES = {  # split -> member names, per (dataset, version)
    ("cifar10", "binary"): {"train": [f"data_batch_{i}.bin" for i in range(1, 6)], "test": ["test_batch.bin"]},
    ("cifar10", "python"): {"train": [f"data_batch_{i}" for i in range(1, 6)], "test": ["test_batch"]},
    ("cifar100", "binary"): {"train": ["train.bin"], "test": ["test.bin"]},
    ("cifar100", "python"): {"train": ["train"], "test": ["test"]},
}


def cifar_sources(root: str, name: str) -> list[tuple[str, Any]]:
    """Candidate ``(version, source)`` pairs for dataset ``name`` under ``root``, most direct first.

    ``root`` may be the extracted directory itself, its parent, or the folder holding the archive.
    """
    out: list[tuple[str, Any]] = []
    for version in ("binary", "python"):
        dirname, archive = _LAYOUTS[(name, version)]
        members = [m for split in ("train", "test") for m in _FILES[(name, version)][split]]
        if all(os.path.isfile(os.path.join(root, m)) for m in members):  # root is the extracted folder
            out.append((version, _DirSource(root)))
        if os.path.isdir(os.path.join(root, dirname)):
            out.append((version, _DirSource(os.path.join(root, dirname))))
        if os.path.isfile(os.path.join(root, archive)):
            out.append((version, _TarSource(os.path.join(root, archive), dirname)))
    return out


def looked_for(root: str, name: str) -> list[str]:
    """Paths :func:`cifar_sources` checks, for error messages."""
    paths = []
    for version in ("binary", "python"):
        dirname, archive = _LAYOUTS[(name, version)]
        paths += [os.path.join(root, dirname), os.path.join(root, archive)]
    return paths


# ------------------------------------------------------------------------------------------------ parsing
def _parse_binary(raw: bytes, label_bytes: int, where: str) -> tuple[np.ndarray, np.ndarray]:
    record = label_bytes + IMAGE_BYTES
    if len(raw) == 0 or len(raw) % record:
        raise CifarFormatError(f"{where}: {len(raw)} bytes is not a whole number of {record}-byte records")
    rows = np.frombuffer(raw, dtype=np.uint8).reshape(-1, record)
    # The label of interest is the last label byte: CIFAR-100 records are <coarse><fine><pixels>.
    labels = rows[:, label_bytes - 1].astype(np.int64)
    images = rows[:, label_bytes:].reshape(-1, 3, 32, 32)  # (N, 3072) -> (N, C, H, W): R, G, B planes
    return images, labels


def _get(d: dict, key: str) -> Any:
    return d[key.encode()] if key.encode() in d else d.get(key)


def _parse_python(raw: bytes, label_key: str, where: str) -> tuple[np.ndarray, np.ndarray]:
    try:
        batch = restricted_loads(raw)
    except UnsafePickleError as e:
        raise UnsafePickleError(f"{where}: {e}") from None  # name the file
    if not isinstance(batch, dict):
        raise CifarFormatError(f"{where}: expected a pickled dict, got {type(batch).__name__}")
    data, labels = _get(batch, "data"), _get(batch, label_key)
    if not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != IMAGE_BYTES:
        raise CifarFormatError(f"{where}: 'data' must be a uint8 array (N, {IMAGE_BYTES})")
    if labels is None or len(labels) != len(data):
        raise CifarFormatError(f"{where}: '{label_key}' missing or of the wrong length")
    images = data.reshape(-1, 3, 32, 32)  # (N, 3072) -> (N, C, H, W), same plane order as the binary files
    return images, np.asarray(labels, dtype=np.int64)


def _class_names(source: Any, name: str, version: str) -> list[str]:
    if version == "binary":
        raw = source.read("batches.meta.txt" if name == "cifar10" else "fine_label_names.txt")
        names = raw.decode().split() if raw else None
    else:
        raw = source.read("batches.meta" if name == "cifar10" else "meta")
        meta = restricted_loads(raw) if raw else None
        key = "label_names" if name == "cifar10" else "fine_label_names"
        values = _get(meta, key) if isinstance(meta, dict) else None
        names = [v.decode() if isinstance(v, bytes) else str(v) for v in values] if values else None
    if names is None:
        if name == "cifar100":
            return [str(i) for i in range(100)]  # the meta file is missing: fall back to indices
        return list(CIFAR10_CLASSES)
    return names


def read_cifar(source: Any, name: str, version: str, split: str) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """Read one split from ``source``: uint8 images (N, 3, 32, 32), int64 labels (N,), class names.

    Raises:
        FileNotFoundError: a batch file of the split is missing.
        CifarFormatError / UnsafePickleError: a file is malformed or malicious.
    """
    parts_x, parts_y = [], []
    for member in _FILES[(name, version)][split]:
        raw = source.read(member)
        where = f"{source.where}/{member}"
        if raw is None:
            raise FileNotFoundError(where)
        if version == "binary":
            x, y = _parse_binary(raw, 1 if name == "cifar10" else 2, where)
        else:
            x, y = _parse_python(raw, "labels" if name == "cifar10" else "fine_labels", where)
        parts_x.append(x)
        parts_y.append(y)
    images, labels = np.concatenate(parts_x), np.concatenate(parts_y)
    classes = _class_names(source, name, version)
    num_classes = 10 if name == "cifar10" else 100
    if len(classes) != num_classes or labels.min() < 0 or labels.max() >= num_classes:
        raise CifarFormatError(f"{source.where}: labels/class names do not match {num_classes} classes")
    return images, labels, classes
