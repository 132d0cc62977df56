"""Baselines for IntegratedGradients, GradientShap and Occlusion: what 'absent' means for an image."""

from __future__ import annotations

import torch

from rcdm_core.augment import blur_fixed

BASELINES = ("blurred", "grey", "mean", "zeros")


def default_blur_sigma(size: int) -> float:
    """A blur that removes object detail but keeps the layout: an eighth of the image side, in pixels."""
    return size / 8.0


def make_baselines(kind: str, images: torch.Tensor, blur_sigma: float | None = None) -> torch.Tensor:
    """images (N, 3, S, S) pixels in [0, 1] -> baselines (N, 3, S, S).

    ``blurred``: each image Gaussian-blurred (sigma ``blur_sigma`` px, default S/8); ``grey``: 0.5 everywhere;
    ``mean``: the per-channel mean colour of the given images; ``zeros``: black (its representation may be
    near zero, which makes the cosine degenerate: the probe warns).
    """
    images = images.detach().float().cpu()
    if kind == "blurred":
        sigma = default_blur_sigma(images.shape[-1]) if not blur_sigma else float(blur_sigma)
        return blur_fixed(images, sigma).clamp(0, 1)
    if kind == "grey":
        return torch.full_like(images, 0.5)
    if kind == "mean":
        return images.mean(dim=(0, 2, 3), keepdim=True).expand_as(images).clone()
    if kind == "zeros":
        return torch.zeros_like(images)
    raise ValueError(f"unknown baseline {kind!r}; choose one of {', '.join(BASELINES)}")
