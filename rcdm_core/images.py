"""Image conversion, the one shared resize, and grid figures.

pixels: float (N, 3, H, W) in [0, 1]. model space: float in [-1, 1]. arrays: uint8 (H, W, 3).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F


def arrays_to_pixels(arrays: Sequence[np.ndarray]) -> torch.Tensor:
    """Same-size uint8 (H, W, 3) arrays -> (N, 3, H, W) float in [0, 1]."""
    if len(arrays) == 0:
        return torch.zeros(0, 3, 1, 1)
    stacked = np.stack([np.asarray(a, dtype=np.uint8) for a in arrays])
    return torch.from_numpy(stacked).permute(0, 3, 1, 2).float() / 255.0


def to_model_space(pixels: torch.Tensor) -> torch.Tensor:
    return pixels * 2.0 - 1.0


def to_pixels(x: torch.Tensor) -> torch.Tensor:
    """model space [-1, 1] -> pixels [0, 1] (clamped)."""
    return ((x + 1.0) / 2.0).clamp(0.0, 1.0)


def resize(pixels: torch.Tensor, size: int | tuple[int, int], mode: str = "bicubic") -> torch.Tensor:
    """Resize to an exact (h, w), antialiased when shrinking; bicubic output is clamped back into range."""
    if isinstance(size, int):
        size = (size, size)
    if tuple(pixels.shape[-2:]) == tuple(size):
        return pixels
    shrinking = size[0] < pixels.shape[-2] or size[1] < pixels.shape[-1]
    kwargs = {"align_corners": False} if mode in ("bilinear", "bicubic") else {}
    out = F.interpolate(
        pixels.float(),
        size=size,
        mode=mode,
        antialias=shrinking and mode in ("bilinear", "bicubic"),
        **kwargs,
    )
    lo, hi = float(pixels.detach().min()), float(pixels.detach().max())  # no warning inside attacks
    return out.clamp(min(lo, 0.0) if lo < 0 else 0.0, 1.0 if hi <= 1.0 else hi).to(pixels.dtype)


def center_crop(pixels: torch.Tensor, size: int) -> torch.Tensor:
    h, w = pixels.shape[-2:]
    top, left = (h - size) // 2, (w - size) // 2
    return pixels[..., top : top + size, left : left + size]


def encoder_input(pixels: torch.Tensor, size: int, mode: str = "bicubic") -> torch.Tensor:
    """The one shared way every encoder resizes: short side to ``size`` then a centre crop ``size x size``.

    This is the official RCDM pipeline (short-side resize + centre crop), never a squash to a square.
    """
    h, w = pixels.shape[-2:]
    if (h, w) == (size, size):
        return pixels
    scale = size / min(h, w)
    new = (max(size, round(h * scale)), max(size, round(w * scale)))
    return center_crop(resize(pixels, new, mode=mode), size)


def make_grid(images: torch.Tensor, nrow: int, pad: int = 2, pad_value: float = 1.0) -> torch.Tensor:
    """(N, 3, H, W) pixels -> one (3, H', W') image with ``nrow`` images per row."""
    n, c, h, w = images.shape
    ncol = nrow
    nrows = max(1, math.ceil(n / ncol))
    grid = torch.full((c, nrows * (h + pad) + pad, ncol * (w + pad) + pad), pad_value, dtype=images.dtype)
    for i in range(n):
        r, col = divmod(i, ncol)
        y, x = pad + r * (h + pad), pad + col * (w + pad)
        grid[:, y : y + h, x : x + w] = images[i]
    return grid


def pixels_to_uint8(img: torch.Tensor) -> np.ndarray:
    """(3, H, W) pixels -> uint8 (H, W, 3)."""
    return (img.detach().float().clamp(0, 1) * 255).round().to(torch.uint8).permute(1, 2, 0).cpu().numpy()


def save_png(img: torch.Tensor | np.ndarray, path: str | Path, upscale: int = 1) -> Path:
    """Write a (3, H, W) pixels tensor or uint8 (H, W, 3) array atomically as PNG; nearest upscale for small."""
    from PIL import Image

    from .io import atomic_write_bytes

    arr = pixels_to_uint8(img) if isinstance(img, torch.Tensor) else np.asarray(img, dtype=np.uint8)
    pil = Image.fromarray(arr)
    if upscale > 1:
        pil = pil.resize((pil.width * upscale, pil.height * upscale), Image.NEAREST)
    import io as _io

    buf = _io.BytesIO()
    pil.save(buf, format="PNG")
    return atomic_write_bytes(path, buf.getvalue())


def auto_upscale(side: int, target: int = 128) -> int:
    """Integer factor that brings a small image side near ``target`` px for viewing."""
    return max(1, target // max(1, side))


def save_rows(rows: Sequence[torch.Tensor], path: str | Path, upscale: int | None = None) -> Path:
    """Save a grid whose rows are given: each row (K, 3, H, W) pixels, all the same H, W; short rows padded.

    The standard figure: row = original, then its samples.
    """
    rows = [r.detach().float().cpu() for r in rows]
    ncol = max(len(r) for r in rows)
    h, w = rows[0].shape[-2:]
    flat = []
    for r in rows:
        r = resize(r, (h, w)) if tuple(r.shape[-2:]) != (h, w) else r
        flat.append(r)
        if len(r) < ncol:
            flat.append(torch.ones(ncol - len(r), 3, h, w))
    grid = make_grid(torch.cat(flat), nrow=ncol)
    return save_png(grid, path, upscale=upscale if upscale is not None else auto_upscale(h))


def heatmap(values: torch.Tensor) -> torch.Tensor:
    """(H, W) map -> (3, H, W) pixels with a perceptual colour map (viridis), normalised to its own range."""
    from matplotlib import colormaps

    v = values.detach().float().cpu()
    v = (v - v.min()) / (v.max() - v.min()).clamp_min(1e-12)
    rgb = colormaps["viridis"](v.numpy())[..., :3]
    return torch.from_numpy(rgb).permute(2, 0, 1).float()


def overlay(pixels: torch.Tensor, values: torch.Tensor, alpha: float = 0.5) -> torch.Tensor:
    """Blend a (H', W') map (resized to the image) over a (3, H, W) image."""
    h, w = pixels.shape[-2:]
    v = values.float()
    if tuple(v.shape) != (h, w):
        v = F.interpolate(v[None, None], size=(h, w), mode="bilinear", align_corners=False)[0, 0]
    return (1 - alpha) * pixels.float().cpu() + alpha * heatmap(v)
