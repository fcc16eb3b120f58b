import gzip
import struct

import numpy as np
import pytest

from aeguard.data.idx import read_idx
from aeguard.errors import DataFormatError


def idx_bytes(array: np.ndarray) -> bytes:
    header = bytes([0, 0, 0x08, array.ndim]) + b"".join(struct.pack(">I", d) for d in array.shape)
    return header + array.astype(np.uint8).tobytes()


@pytest.mark.parametrize("gzipped", [True, False])
def test_round_trip(tmp_path, gzipped):
    array = np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4)
    path = tmp_path / ("x.idx.gz" if gzipped else "x.idx")
    path.write_bytes(gzip.compress(idx_bytes(array)) if gzipped else idx_bytes(array))
    np.testing.assert_array_equal(read_idx(path), array)


def test_bad_magic_is_named(tmp_path):
    path = tmp_path / "x.idx"
    path.write_bytes(b"\x89PNG\r\n\x1a\n")
    with pytest.raises(DataFormatError, match="not an IDX file"):
        read_idx(path)


def test_truncated_body_is_reported(tmp_path):
    path = tmp_path / "x.idx"
    path.write_bytes(idx_bytes(np.zeros((3, 4, 4)))[:-5])
    with pytest.raises(DataFormatError, match="data bytes but its header"):
        read_idx(path)


def test_broken_gzip_is_reported(tmp_path):
    path = tmp_path / "x.idx.gz"
    path.write_bytes(gzip.compress(idx_bytes(np.zeros((3, 4, 4))))[:20])
    with pytest.raises(DataFormatError, match="cannot read IDX"):
        read_idx(path)
