"""Reader for the IDX format of MNIST and Fashion-MNIST (optionally gzip-compressed).

Format: two zero bytes, a type code, the number of dimensions, one big-endian uint32 per dimension, then the
data in row-major order. Anything that does not match is a :class:`~edgemvp.errors.UsageError` naming the file.
"""
from __future__ import annotations

import gzip
import struct
from pathlib import Path

import numpy as np

from edgemvp.errors import UsageError

_DTYPES = {
    0x08: np.dtype(np.uint8),
    0x09: np.dtype(np.int8),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}


def parse_idx(raw: bytes, name: str = "<bytes>") -> np.ndarray:
    """Parse the bytes of one IDX file.

    Args:
        raw: The (already decompressed) file contents.
        name: Used in error messages.

    Returns:
        The array with its stored shape, in native byte order.

    Raises:
        UsageError: When the header is invalid or the data is shorter or longer than the header says.
    """
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0:
        raise UsageError(f"{name}: not an IDX file (bad magic number)")
    code, ndim = raw[2], raw[3]
    if code not in _DTYPES or ndim == 0:
        raise UsageError(f"{name}: not an IDX file (type code {code:#x}, {ndim} dimensions)")
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise UsageError(f"{name}: corrupt IDX file (truncated header)")
    shape = struct.unpack(f">{ndim}I", raw[4:header])
    dtype = _DTYPES[code]
    expected = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    if len(raw) - header != expected:
        raise UsageError(
            f"{name}: corrupt IDX file (header says {expected} data bytes for shape {shape}, "
            f"found {len(raw) - header})"
        )
    return np.frombuffer(raw, dtype=dtype, offset=header).reshape(shape).astype(dtype.newbyteorder("="))


def read_idx(path: Path) -> np.ndarray:
    """Read an IDX file, gunzipping it when its name ends in ``.gz``.

    Args:
        path: The file.

    Returns:
        The parsed array.

    Raises:
        UsageError: When the file is unreadable, not gzip when named so, or not valid IDX.
    """
    try:
        raw = path.read_bytes()
        if path.suffix == ".gz":
            raw = gzip.decompress(raw)
    except (OSError, EOFError, gzip.BadGzipFile) as exc:
        raise UsageError(f"{path}: cannot read IDX file ({exc})") from exc
    return parse_idx(raw, str(path))
