"""First-party rcdm plugin: data sources ``folder:PATH``, ``idx:PATH``, ``builtin:photos``, ``builtin:digits``.

Each yields ``(id, uint8 RGB array (H, W, 3))`` with stable ids; options follow the spec after ``?``, e.g.
``builtin:photos?split=heldout&size=32&scales=1,0.5``. Modules are imported when a source is opened, so
listing plugins stays fast.
"""

from __future__ import annotations

import rcdm_core as rc
from rcdm_core.config import parse_bool

DEFAULT_MAX_PIXELS = 64_000_000


def _positive_int(value: object) -> int:
    if isinstance(value, bool) or int(value) != float(value) or int(value) < 1:  # type: ignore[arg-type]
        raise ValueError("expected a whole number >= 1")
    return int(value)  # type: ignore[arg-type]


def _to_bool(value: object) -> bool:
    try:
        return parse_bool(value)
    except rc.ConfigError:
        raise ValueError("expected true or false") from None


def _non_negative_float(value: object) -> float:
    out = float(value)  # type: ignore[arg-type]
    if not out >= 0.0:
        raise ValueError("expected a number >= 0")
    return out


def _color(value: object) -> tuple[int, int, int]:
    from .decode import parse_color

    return parse_color(value)


def _scales(value: object) -> tuple[float, ...]:
    from .photos import parse_scales

    return parse_scales(value)


LIMIT = rc.Option(None, "read at most this many images", type=_positive_int)


def _folder(arg: str, background: object, max_pixels: int, limit: int | None) -> rc.DataSource:
    from .folder import FolderSource

    return FolderSource(arg, background=_color(background), max_pixels=max_pixels, limit=limit)


def _idx(arg: str, limit: int | None) -> rc.DataSource:
    from .idx import IdxSource

    return IdxSource(arg, limit=limit)


def _digits(arg: str | None, size: int, resample: str, limit: int | None) -> rc.DataSource:
    from .digits import DigitsSource

    return DigitsSource(size=size, resample=resample, limit=limit)


def _photos(arg: str | None, **options: object) -> rc.DataSource:
    from .photos import PhotoSource

    options["scales"] = _scales(options["scales"])
    return PhotoSource(**options)  # type: ignore[arg-type]


@rc.hookimpl
def rcdm_data_sources():
    return [
        rc.DataSourceRecord(
            name="folder:",
            factory=_folder,
            summary="every image under a folder (recursive; png, jpg, bmp, gif, tif, webp), or one image file",
            options={
                "background": rc.Option(
                    "white", "colour under transparent pixels: a name, #rrggbb or r,g,b", type=_color
                ),
                "max_pixels": rc.Option(
                    DEFAULT_MAX_PIXELS,
                    "refuse images with more pixels (decompression-bomb guard)",
                    type=_positive_int,
                ),
                "limit": LIMIT,
            },
        ),
        rc.DataSourceRecord(
            name="idx:",
            factory=_idx,
            summary="an MNIST-format (IDX) images file, gzipped or not",
            options={"limit": LIMIT},
        ),
        rc.DataSourceRecord(
            name="builtin:digits",
            factory=_digits,
            summary="scikit-learn's 1797 8x8 handwritten digits",
            options={
                "size": rc.Option(8, "upscale to this side", type=_positive_int),
                "resample": rc.Option("nearest", "upscaling filter", choices=("nearest", "bicubic")),
                "limit": LIMIT,
            },
        ),
        rc.DataSourceRecord(
            name="builtin:photos",
            factory=_photos,
            summary="patches of the 11 colour photos bundled with scikit-image and scikit-learn",
            options={
                "size": rc.Option(32, "patch side in pixels", type=_positive_int),
                "stride": rc.Option(None, "step between patches (default: size)", type=_positive_int),
                "scales": rc.Option(
                    "1", "downscale factors in (0, 1] applied before cutting, e.g. 1,0.5", type=_scales
                ),
                "split": rc.Option(
                    "all", "whole photos held out of training", choices=("all", "train", "heldout")
                ),
                "patches": rc.Option(True, "false: whole photos instead of patches", type=_to_bool),
                "min_std": rc.Option(
                    1.0, "drop flat patches (pixel std below this, 0..255)", type=_non_negative_float
                ),
                "limit": LIMIT,
            },
        ),
    ]
