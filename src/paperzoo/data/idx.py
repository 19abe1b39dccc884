"""Reader for the IDX files of MNIST and Fashion-MNIST (LeCun et al.; Xiao et al., arXiv:1708.07747).

IDX layout (http://yann.lecun.com/exdb/mnist/, "FILE FORMATS FOR THE MNIST DATABASE"): a 4-byte magic
number ``0x00 0x00 <type> <ndim>``, then ``ndim`` big-endian int32 dimension sizes, then the data in
C order. Images are ``type 0x08`` (unsigned byte) with 3 dims (N, 28, 28); labels are unsigned bytes with
one dim (N,). Files may be gzip-compressed (``.gz``), as Debian's ``dataset-fashion-mnist`` ships them.
"""

from __future__ import annotations

import gzip
import os
import zlib

import numpy as np

__all__ = ["IdxFormatError", "find_idx_file", "read_idx"]

# IDX type byte -> numpy big-endian dtype (the spec's table).
_IDX_DTYPES = {
    0x08: np.dtype(">u1"),
    0x09: np.dtype(">i1"),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}


class IdxFormatError(ValueError):
    """The bytes are not a well-formed IDX file (bad magic number, truncated, trailing bytes)."""


def _read_bytes(path: str) -> bytes:
    if path.endswith(".gz"):
        try:
            with gzip.open(path, "rb") as f:
                return f.read()
        except (OSError, EOFError, zlib.error) as e:  # BadGzipFile is an OSError
            raise IdxFormatError(f"{path}: not a readable gzip file ({e})") from e
    with open(path, "rb") as f:
        return f.read()


def read_idx(path: str) -> np.ndarray:
    """Read one IDX file (optionally ``.gz``) into a numpy array of its declared shape and dtype.

    Raises:
        IdxFormatError: the magic number, dimension header or data length is wrong.
    """
    raw = _read_bytes(path)
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0:
        raise IdxFormatError(f"{path}: bad IDX magic number {raw[:4].hex() or '(empty file)'}")
    type_code, ndim = raw[2], raw[3]
    if type_code not in _IDX_DTYPES or ndim == 0:
        raise IdxFormatError(f"{path}: unsupported IDX type 0x{type_code:02x} / ndim {ndim}")
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise IdxFormatError(f"{path}: truncated IDX header")
    shape = tuple(int(d) for d in np.frombuffer(raw, dtype=">i4", count=ndim, offset=4))
    dtype = _IDX_DTYPES[type_code]
    expected = int(np.prod(shape)) * dtype.itemsize
    if len(raw) - header != expected:
        raise IdxFormatError(
            f"{path}: header declares shape {shape} ({expected} bytes) but the file holds "
            f"{len(raw) - header} data bytes (truncated or corrupt download?)"
        )
    arr = np.frombuffer(raw, dtype=dtype, offset=header).reshape(shape)
    return arr.astype(dtype.newbyteorder("="), copy=False)


def find_idx_file(directory: str, stem: str) -> str | None:
    """Return the path of ``stem`` in ``directory`` under any of its usual spellings, or None.

    ``stem`` is like ``"train-images-idx3-ubyte"``; the MNIST site also used ``train-images.idx3-ubyte``.
    """
    dotted = stem.replace("-idx", ".idx")
    for name in (stem, stem + ".gz", dotted, dotted + ".gz"):
        path = os.path.join(directory, name)
        if os.path.isfile(path):
            return path
    return None
