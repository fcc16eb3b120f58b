"""Read IDX files (the MNIST format), gzipped or raw, into numpy arrays."""

from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np

from aeguard.errors import DataFormatError

# Type codes from the IDX spec; MNIST and Fashion-MNIST only use 0x08 (unsigned byte).
_DTYPES = {
    code: np.dtype(name)
    for code, name in {0x08: "u1", 0x09: "i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}.items()
}


def read_idx(path: Path) -> np.ndarray:
    """Return the array stored in an IDX file; `.gz` files are decompressed on the fly."""
    path = Path(path)
    try:
        opener = gzip.open if path.suffix == ".gz" else open
        with opener(path, "rb") as handle:
            data = handle.read()
    except (OSError, EOFError) as exc:
        raise DataFormatError(f"cannot read IDX file {path}: {exc}") from exc
    if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] not in _DTYPES:
        raise DataFormatError(f"{path} is not an IDX file (bad magic number {data[:4].hex()})")
    dtype = _DTYPES[data[2]]
    ndim = data[3]
    header = 4 + 4 * ndim
    if len(data) < header:
        raise DataFormatError(f"{path} is truncated inside its IDX header")
    shape = tuple(int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    expected = int(np.prod(shape)) * dtype.itemsize
    if len(data) - header != expected:
        raise DataFormatError(f"{path} holds {len(data) - header} data bytes but its header {shape} needs {expected}")
    return np.frombuffer(data, dtype=dtype, offset=header).reshape(shape)
