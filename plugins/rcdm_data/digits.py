"""``builtin:digits`` — scikit-learn's 1797 handwritten 8x8 digits (bundled, offline), as RGB uint8.

Values 0..16 are scaled to 0..255 (rounded); ``size`` upscales with ``resample`` (nearest keeps the pixel
blocks, bicubic smooths). Ids: ``digits/<i>`` in the dataset's order.
"""

from __future__ import annotations

import functools
from collections.abc import Iterator

import numpy as np

from rcdm_core.interfaces import DataSource


@functools.lru_cache(maxsize=1)
def digit_images() -> np.ndarray:
    """(1797, 8, 8) uint8 in 0..255, read-only."""
    from sklearn.datasets import load_digits

    arr = np.round(load_digits().images * (255.0 / 16.0)).astype(np.uint8)
    arr.setflags(write=False)
    return arr


class DigitsSource(DataSource):
    """Digits as ``(f"digits/{i}", uint8 (size, size, 3))``."""

    def __init__(self, *, size: int = 8, resample: str = "nearest", limit: int | None = None):
        self.size, self.resample, self.limit = size, resample, limit
        self.skipped: list[tuple[str, str]] = []

    def __len__(self) -> int:
        n = len(digit_images())
        return n if self.limit is None else min(self.limit, n)

    def __iter__(self) -> Iterator[tuple[str, np.ndarray]]:
        from PIL import Image

        method = Image.NEAREST if self.resample == "nearest" else Image.BICUBIC
        images = digit_images()
        for i in range(len(self)):
            gray = images[i]
            if self.size != gray.shape[0]:
                gray = np.asarray(
                    Image.fromarray(gray).resize((self.size, self.size), method), dtype=np.uint8
                )
            yield f"digits/{i}", np.ascontiguousarray(np.repeat(gray[..., None], 3, axis=2))
