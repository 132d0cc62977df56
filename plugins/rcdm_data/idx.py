"""``idx:PATH`` — an MNIST-format (IDX) image file, gzipped or not (MNIST, Fashion-MNIST, KMNIST, EMNIST).

IDX layout (big-endian): two zero bytes, a type code, the number of dimensions, one uint32 per dimension, then
the values. Image files are (N, H, W) grayscale or (N, H, W, 3) colour, unsigned bytes. Ids: ``<stem>/<index>``.
"""

from __future__ import annotations

import gzip
import zlib
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from rcdm_core.errors import DataError
from rcdm_core.interfaces import DataSource
from rcdm_core.paths import safe_id

# type code -> numpy dtype (big-endian), as the IDX format defines them
IDX_TYPES = {0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


def read_idx(path: str | Path) -> np.ndarray:
    """Parse an IDX file (gzip detected by its magic bytes) -> array with the file's dims and dtype.

    Raises DataError naming the file for a bad magic number, an unknown type code or a length that does not
    match the header.
    """
    path = Path(path)
    try:
        raw = path.read_bytes()
        if raw[:2] == b"\x1f\x8b":
            raw = gzip.decompress(raw)
    except (OSError, EOFError, zlib.error) as exc:
        raise DataError(f"data source idx:{path}: cannot read the file ({exc})") from None
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] not in IDX_TYPES or raw[3] == 0:
        raise DataError(
            f"data source idx:{path}: not an IDX file (bad header {raw[:4].hex() or 'empty'}); "
            "give an MNIST-format images file such as train-images-idx3-ubyte.gz"
        )
    ndim = raw[3]
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise DataError(f"data source idx:{path}: header truncated ({len(raw)} bytes for {ndim} dimensions)")
    dims = tuple(int(d) for d in np.frombuffer(raw, dtype=">u4", count=ndim, offset=4))
    dtype = np.dtype(IDX_TYPES[raw[2]])
    expected = header + int(np.prod(dims, dtype=np.int64)) * dtype.itemsize
    if len(raw) != expected:
        raise DataError(
            f"data source idx:{path}: {len(raw)} bytes but the header {dims} says {expected}; the file is truncated "
            "or not IDX"
        )
    return np.frombuffer(raw, dtype=dtype, offset=header).reshape(dims)


class IdxSource(DataSource):
    """Images of one IDX file as ``(f"{stem}/{i}", uint8 (H, W, 3))``, grayscale repeated to RGB."""

    def __init__(self, path: str | Path, *, limit: int | None = None):
        self.path = Path(path).expanduser()
        self.limit = limit
        self.skipped: list[tuple[str, str]] = []
        if not self.path.is_file():
            raise DataError(f"data source idx:{path}: no such file; give an MNIST-format images file")
        data = read_idx(self.path)
        if data.dtype != np.uint8:
            raise DataError(
                f"data source idx:{path}: values are {data.dtype.name}; image files hold unsigned bytes"
            )
        if data.ndim == 4 and data.shape[-1] == 1:
            data = data[..., 0]
        if not (data.ndim == 3 or (data.ndim == 4 and data.shape[-1] == 3)):
            what = "a label file" if data.ndim == 1 else f"shape {data.shape}"
            raise DataError(f"data source idx:{path} is {what}, not images (N, H, W); give the images file")
        if len(data) == 0:
            raise DataError(f"data source idx:{path} holds no images")
        self.images = data
        name = self.path.name.removesuffix(".gz")
        self.stem = safe_id(Path(name).stem if "." in name else name)

    def __len__(self) -> int:
        return len(self.images) if self.limit is None else min(self.limit, len(self.images))

    def __iter__(self) -> Iterator[tuple[str, np.ndarray]]:
        for i in range(len(self)):
            img = self.images[i]
            rgb = np.repeat(img[..., None], 3, axis=2) if img.ndim == 2 else np.array(img)
            yield f"{self.stem}/{i}", np.ascontiguousarray(rgb, dtype=np.uint8)
