"""Robust decoding of one image file from anywhere into uint8 RGB (H, W, 3).

Every way a scraped file can go wrong ends in :class:`Unreadable` with a short reason; every odd but valid
encoding (16-bit, alpha, palette, CMYK, grayscale, EXIF rotation) is converted, never clipped or dropped.
"""

from __future__ import annotations

import struct
import warnings
from pathlib import Path

import numpy as np
from PIL import Image, ImageColor, ImageOps, UnidentifiedImageError

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp")
DEFAULT_MAX_PIXELS = 64_000_000
_SIXTEEN_BIT_MODES = ("I;16", "I;16B", "I;16L", "I;16N", "I")


class Unreadable(Exception):
    """A file that cannot become an image; ``str(exc)`` is the reason shown to the user."""


def parse_color(value: object) -> tuple[int, int, int]:
    """``"white"``, ``"#808080"``, ``"128,128,128"`` or ``[128, 128, 128]`` -> (r, g, b) in 0..255."""
    if isinstance(value, (list, tuple)):
        parts = list(value)
    elif isinstance(value, str) and "," in value and not value.strip().startswith("rgb"):
        parts = [p.strip() for p in value.split(",")]
    else:
        rgb = ImageColor.getrgb(str(value))  # raises ValueError naming the colour
        return tuple(int(c) for c in rgb[:3])  # type: ignore[return-value]
    if len(parts) != 3:
        raise ValueError(f"a colour needs 3 values, got {len(parts)}")
    rgb = tuple(int(p) for p in parts)
    if not all(0 <= c <= 255 for c in rgb):
        raise ValueError("colour values must lie in 0..255")
    return rgb  # type: ignore[return-value]


def decode_image(
    path: str | Path,
    *,
    background: tuple[int, int, int] = (255, 255, 255),
    max_pixels: int = DEFAULT_MAX_PIXELS,
) -> np.ndarray:
    """Read one file -> uint8 (H, W, 3), upright; raise :class:`Unreadable` with the reason when it cannot.

    Transparent pixels are composited on ``background``; images over ``max_pixels`` are refused before their
    pixels are decoded (decompression-bomb guard).
    """
    path = Path(path)
    try:
        if path.stat().st_size == 0:
            raise Unreadable("empty file (0 bytes)")
    except OSError as exc:
        raise Unreadable(f"cannot read ({exc.strerror or exc})") from None
    with warnings.catch_warnings():
        # Our own max_pixels check below is the guard; Pillow's warning would only be noise.
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        try:
            with Image.open(path) as im:
                w, h = im.size
                if w * h > max_pixels:
                    raise Unreadable(
                        f"{w}x{h} = {w * h} pixels is over the limit of {max_pixels} "
                        "(raise the data option max_pixels if the file is trusted)"
                    )
                im.load()
                return to_rgb(_upright(im), background)
        except Unreadable:
            raise
        except Image.DecompressionBombError as exc:
            # Pillow refuses at open time (header only) anything over twice its own limit, ~179 megapixels.
            raise Unreadable(
                f"over the pixel limit, refused as a possible decompression bomb ({exc})"
            ) from None
        except UnidentifiedImageError:
            raise Unreadable("not an image Pillow can read (wrong extension or corrupt header)") from None
        except OSError as exc:
            reason = str(exc) or type(exc).__name__
            raise Unreadable(f"corrupt or truncated image data ({reason})") from None
        except (ValueError, SyntaxError, EOFError, struct.error, IndexError, TypeError, MemoryError) as exc:
            raise Unreadable(f"could not decode ({type(exc).__name__}: {exc})") from None


def _upright(im: Image.Image) -> Image.Image:
    """Apply the EXIF orientation tag (phones store portraits sideways); a malformed tag leaves it as stored."""
    try:
        return ImageOps.exif_transpose(im)
    except Exception:  # noqa: BLE001 - a broken EXIF block must not cost the image
        return im


def to_rgb(im: Image.Image, background: tuple[int, int, int] = (255, 255, 255)) -> np.ndarray:
    """A decoded Pillow image of any mode -> uint8 (H, W, 3)."""
    if im.mode in _SIXTEEN_BIT_MODES:
        return _gray_to_rgb(_scale_16bit(np.asarray(im)))
    if im.mode == "F":
        return _gray_to_rgb(_scale_float(np.asarray(im, dtype=np.float64)))
    if _has_alpha(im):
        rgba = np.asarray(im.convert("RGBA"), dtype=np.float32)
        alpha = rgba[..., 3:4] / 255.0
        bg = np.asarray(background, dtype=np.float32).reshape(1, 1, 3)
        return np.ascontiguousarray(np.round(rgba[..., :3] * alpha + bg * (1.0 - alpha)).astype(np.uint8))
    # Covers L, 1, P, CMYK (Pillow undoes Adobe's inverted CMYK JPEGs), YCbCr, RGB.
    return np.ascontiguousarray(np.asarray(im.convert("RGB"), dtype=np.uint8))


def _has_alpha(im: Image.Image) -> bool:
    return im.mode in ("RGBA", "LA", "PA", "RGBa", "La") or (
        im.mode in ("P", "L", "RGB") and "transparency" in im.info
    )


def _scale_16bit(arr: np.ndarray) -> np.ndarray:
    """16-bit values 0..65535 -> 0..255 (divide by 257), so 65535 is white and mid-grey stays mid-grey."""
    arr = np.clip(arr.astype(np.float64), 0, 65535)
    return np.round(arr / 257.0).astype(np.uint8)


def _scale_float(arr: np.ndarray) -> np.ndarray:
    """Float images: [0, 1] data scaled by 255, anything else clipped to 0..255; NaN becomes 0."""
    arr = np.nan_to_num(arr, nan=0.0, posinf=255.0, neginf=0.0)
    if arr.size and arr.min() >= 0.0 and arr.max() <= 1.0:
        arr = arr * 255.0
    return np.round(np.clip(arr, 0, 255)).astype(np.uint8)


def _gray_to_rgb(gray: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(np.repeat(gray[..., None], 3, axis=2))
