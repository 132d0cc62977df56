"""``builtin:photos`` — the natural colour photos that ship inside scikit-image and scikit-learn, as patches.

Only these load offline (checked with scikit-image 0.26 and scikit-learn 1.9; the other ``skimage.data`` photos
need a download through pooch, and the remaining bundled ones are grayscale or synthetic). The stereo pair
``motorcycle_left`` / ``motorcycle_right`` is one scene, so it always lands on the same side of the split.

Patches: each photo is downscaled by each factor in ``scales`` (Pillow bicubic, antialiased), then cut into
``size x size`` patches every ``stride`` pixels, whole patches only, top-left aligned. Patches whose pixel
standard deviation is below ``min_std`` (flat black borders of ``retina``) are dropped. Order: within each
(photo, scale) stream the positions follow a fixed permutation seeded by the stream's name, and the streams are
interleaved round-robin (scale by scale, photos in list order), so the first K patches of any split come from
several photos and different parts of them. Ids: ``photos/<photo>/s<scale>/<y>_<x>``, y and x in pixels of the
scaled photo; whole photos (``patches=false``): ``photos/<photo>/s<scale>``.
"""

from __future__ import annotations

import functools
import zlib
from collections.abc import Callable, Iterator, Sequence

import numpy as np

from rcdm_core.errors import DataError
from rcdm_core.interfaces import DataSource


def _skimage(name: str) -> Callable[[], np.ndarray]:
    def load() -> np.ndarray:
        import skimage.data

        return getattr(skimage.data, name)()

    return load


def _stereo(side: int) -> Callable[[], np.ndarray]:
    def load() -> np.ndarray:
        import skimage.data

        return skimage.data.stereo_motorcycle()[side]

    return load


def _sklearn(filename: str) -> Callable[[], np.ndarray]:
    def load() -> np.ndarray:
        from sklearn.datasets import load_sample_image

        return load_sample_image(filename)

    return load


# name -> loader, in enumeration order; every one is an RGB uint8 photograph that loads without a network.
PHOTOS: dict[str, Callable[[], np.ndarray]] = {
    "astronaut": _skimage("astronaut"),  # 512 x 512, Eileen Collins
    "coffee": _skimage("coffee"),  # 400 x 600, a cup of coffee
    "chelsea": _skimage("chelsea"),  # 300 x 451, a cat (skimage.data.cat is the same photo)
    "rocket": _skimage("rocket"),  # 427 x 640, a launch
    "motorcycle_left": _stereo(0),  # 500 x 741, stereo pair, left view
    "motorcycle_right": _stereo(1),  # 500 x 741, stereo pair, right view
    "hubble_deep_field": _skimage("hubble_deep_field"),  # 872 x 1000, galaxies
    "immunohistochemistry": _skimage("immunohistochemistry"),  # 512 x 512, stained tissue
    "retina": _skimage("retina"),  # 1411 x 1411, fundus photograph
    "china": _sklearn("china.jpg"),  # 427 x 640, a temple
    "flower": _sklearn("flower.jpg"),  # 427 x 640, a flower
}
# Photos of one scene: they must fall on the same side of the train / held-out split.
GROUPS: dict[str, str] = {"motorcycle_left": "motorcycle", "motorcycle_right": "motorcycle"}
# Whole photos kept out of training: three everyday scenes (an animal, an object, a plant) that resemble
# what a user would probe with; the stereo pair and the scientific images stay in training.
HELDOUT: tuple[str, ...] = ("chelsea", "coffee", "flower")


def photo_names(split: str) -> list[str]:
    """Photo names of a split (``all``, ``train``, ``heldout``) in enumeration order."""
    if split == "all":
        return list(PHOTOS)
    if split == "heldout":
        return [n for n in PHOTOS if n in HELDOUT]
    if split == "train":
        return [n for n in PHOTOS if n not in HELDOUT]
    raise DataError(f"builtin:photos: split={split!r}; choose all, train or heldout")


@functools.cache
def load_photo(name: str) -> np.ndarray:
    """The bundled photo -> read-only uint8 (H, W, 3) (cached: loading ``retina`` takes a moment)."""
    arr = np.ascontiguousarray(PHOTOS[name](), dtype=np.uint8)[..., :3]
    arr.setflags(write=False)
    return arr


@functools.lru_cache(maxsize=64)
def scaled_photo(name: str, scale: float) -> np.ndarray:
    """The photo downscaled by ``scale`` (Pillow bicubic, antialiased) -> read-only uint8 (h, w, 3)."""
    arr = load_photo(name)
    if scale == 1.0:
        return arr
    from PIL import Image

    h, w = arr.shape[:2]
    size = (max(1, round(w * scale)), max(1, round(h * scale)))
    out = np.asarray(Image.fromarray(arr).resize(size, Image.BICUBIC), dtype=np.uint8)
    out.setflags(write=False)
    return out


def patch_positions(height: int, width: int, size: int, stride: int) -> list[tuple[int, int]]:
    """Top-left corners (y, x) of every whole ``size`` patch on a ``stride`` grid, raster order."""
    return [(y, x) for y in range(0, height - size + 1, stride) for x in range(0, width - size + 1, stride)]


def _stream(name: str, scale: float, size: int, stride: int, min_std: float) -> list[tuple[int, int]]:
    """Kept positions of one (photo, scale), in the stream's fixed permuted order."""
    arr = scaled_photo(name, scale)
    positions = patch_positions(arr.shape[0], arr.shape[1], size, stride)
    if min_std > 0:
        positions = [(y, x) for y, x in positions if arr[y : y + size, x : x + size].std() >= min_std]
    rng = np.random.default_rng(zlib.crc32(f"{name}/s{scale:g}".encode()))
    return [positions[i] for i in rng.permutation(len(positions))]


@functools.lru_cache(maxsize=32)
def patch_index(
    names: tuple[str, ...], size: int, stride: int, scales: tuple[float, ...], min_std: float
) -> tuple[tuple[str, float, int, int], ...]:
    """Every patch as (photo, scale, y, x), streams interleaved round-robin (see the module docstring)."""
    streams = [[(n, s, y, x) for y, x in _stream(n, s, size, stride, min_std)] for s in scales for n in names]
    out = []
    for k in range(max((len(st) for st in streams), default=0)):
        out.extend(st[k] for st in streams if k < len(st))
    return tuple(out)


class PhotoSource(DataSource):
    """Patches (or whole photos) of the bundled photos as ``(id, uint8 (H, W, 3))``."""

    def __init__(
        self,
        *,
        size: int = 32,
        stride: int | None = None,
        scales: Sequence[float] = (1.0,),
        split: str = "all",
        limit: int | None = None,
        patches: bool = True,
        min_std: float = 1.0,
    ):
        self.names = tuple(photo_names(split))
        self.size, self.stride = size, stride or size
        self.scales, self.split, self.limit = tuple(scales), split, limit
        self.patches, self.min_std = patches, min_std
        self.skipped: list[tuple[str, str]] = []
        if patches:
            self.index = patch_index(self.names, self.size, self.stride, self.scales, float(min_std))
            if not self.index:
                raise DataError(
                    f"builtin:photos: no {size}x{size} patch fits split={split} at scales {list(self.scales)}; "
                    "use a smaller size or larger scales"
                )

    def __len__(self) -> int:
        n = len(self.index) if self.patches else len(self.names) * len(self.scales)
        return n if self.limit is None else min(self.limit, n)

    def __iter__(self) -> Iterator[tuple[str, np.ndarray]]:
        if not self.patches:
            whole = [(f"photos/{n}/s{s:g}", scaled_photo(n, s)) for s in self.scales for n in self.names]
            for image_id, arr in whole[: len(self)]:
                yield image_id, np.array(arr)
            return
        size = self.size
        for name, scale, y, x in self.index[: len(self)]:
            patch = scaled_photo(name, scale)[y : y + size, x : x + size]
            yield f"photos/{name}/s{scale:g}/{y}_{x}", np.array(patch)


def parse_scales(value: object) -> tuple[float, ...]:
    """``"1,0.5"``, ``0.5`` or ``[1, 0.5]`` -> (1.0, 0.5); each factor in (0, 1], duplicates dropped."""
    items = (
        value.split(",") if isinstance(value, str) else value if isinstance(value, (list, tuple)) else [value]
    )
    scales = tuple(dict.fromkeys(float(s) for s in items))
    if not scales or not all(0.0 < s <= 1.0 for s in scales):
        raise ValueError("scales are downscale factors in (0, 1], e.g. 1,0.5")
    return scales
