"""IDX parsing: valid files round-trip, corrupt ones are refused with the file named."""
from __future__ import annotations

import gzip
import struct
from pathlib import Path

import numpy as np
import pytest

from edgemvp.data.idx import parse_idx, read_idx
from edgemvp.errors import UsageError
from tests.helpers import idx_bytes


def test_round_trip_images_and_labels(tmp_path: Path) -> None:
    images = np.arange(3 * 4 * 5, dtype=np.uint8).reshape(3, 4, 5)
    labels = np.array([2, 0, 9], dtype=np.uint8)
    np.testing.assert_array_equal(parse_idx(idx_bytes(images)), images)
    path = tmp_path / "labels-idx1-ubyte.gz"
    path.write_bytes(gzip.compress(idx_bytes(labels)))
    np.testing.assert_array_equal(read_idx(path), labels)


def test_big_endian_int32_payload() -> None:
    values = np.array([1, -2, 70000], dtype=">i4")
    raw = bytes([0, 0, 0x0C, 1]) + struct.pack(">I", 3) + values.tobytes()
    out = parse_idx(raw)
    assert out.dtype.byteorder in ("=", "<", "|") and out.tolist() == [1, -2, 70000]


@pytest.mark.parametrize("raw, message", [
    (b"\x01\x00\x08\x01\x00\x00\x00\x01\x05", "bad magic"),
    (b"\x00\x00\x07\x01\x00\x00\x00\x01\x05", "type code"),
    (b"\x00\x00\x08\x03\x00\x00", "truncated header"),
    (idx_bytes(np.zeros((2, 3), np.uint8))[:-1], "data bytes"),
    (idx_bytes(np.zeros((2, 3), np.uint8)) + b"\x00", "data bytes"),
])
def test_corrupt_bytes_are_refused(raw: bytes, message: str) -> None:
    with pytest.raises(UsageError, match=message):
        parse_idx(raw, "f.idx")


def test_bad_gzip_names_the_file(tmp_path: Path) -> None:
    path = tmp_path / "train-images-idx3-ubyte.gz"
    path.write_bytes(b"not gzip at all")
    with pytest.raises(UsageError, match=str(path)):
        read_idx(path)
