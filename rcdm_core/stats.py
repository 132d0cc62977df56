"""Sample statistics: what the representation leaves open, per pixel."""

from __future__ import annotations

import torch


def pixel_std_map(samples: torch.Tensor) -> torch.Tensor:
    """samples (K, 3, H, W) pixels in [0, 1] for ONE condition -> (H, W) std across samples, mean over colour.

    High values mark pixels the representation does not pin down (what varies across samples).
    """
    if samples.shape[0] < 2:
        return torch.zeros(samples.shape[-2:])
    return samples.float().std(dim=0, unbiased=True).mean(dim=0)


def mean_pixel_std(samples: torch.Tensor) -> float:
    """Mean over pixels of :func:`pixel_std_map`."""
    return float(pixel_std_map(samples).mean())


def cosine(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Row-wise cosine similarity of (N, D) tensors."""
    return torch.nn.functional.cosine_similarity(a.float(), b.float(), dim=-1, eps=1e-8)


def saturation(pixels: torch.Tensor) -> torch.Tensor:
    """(N, 3, H, W) pixels -> (N,) mean HSV saturation (max - min) / max."""
    mx = pixels.amax(dim=1)
    mn = pixels.amin(dim=1)
    return ((mx - mn) / mx.clamp_min(1e-6)).flatten(1).mean(dim=1)
