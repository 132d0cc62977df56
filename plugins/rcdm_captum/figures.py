"""The per-image panel row: image, RCDM samples, RCDM maps, each attribution overlaid (PNG)."""

from __future__ import annotations

import io
import math
import warnings
from pathlib import Path

import numpy as np
import torch
from matplotlib.figure import Figure

from rcdm_core.images import make_grid
from rcdm_core.io import atomic_write_bytes

RCDM_TITLES = {
    "sample_std": "RCDM sample std\n(high = not encoded)",
    "occlusion_pixel": "RCDM occlusion\n(pixel RMS)",
    "occlusion_rep": "RCDM occlusion\n(1 - rep. cosine)",
}


def _hwc(img: torch.Tensor) -> np.ndarray:
    return img.detach().float().clamp(0, 1).permute(1, 2, 0).cpu().numpy()


def _attr_panel(fig, ax, image: torch.Tensor, m: torch.Tensor, title: str) -> None:
    """Overlay with captum's visualize_image_attr (blended heat map of |attribution|)."""
    from captum.attr import visualization as viz

    if float(m.max() - m.min()) == 0:
        ax.imshow(_hwc(image))
        ax.set_title(title + "\n(constant map)", fontsize=7)
        ax.axis("off")
        return
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        viz.visualize_image_attr(
            m.numpy()[..., None],
            _hwc(image),
            method="blended_heat_map",
            sign="absolute_value",
            plt_fig_axis=(fig, ax),
            use_pyplot=False,
            outlier_perc=1,
            alpha_overlay=0.6,
        )
    ax.set_title(title, fontsize=7)


def panel_row(
    path: str | Path,
    image: torch.Tensor,
    samples: torch.Tensor,
    rcdm: dict[str, torch.Tensor],
    attributions: dict[str, torch.Tensor],
    scores: dict[str, str] | None = None,
) -> Path:
    """Write one PNG row. image (3, S, S), samples (K, 3, S, S) pixels; maps (S, S); ``scores`` adds a line
    (e.g. Spearman with RCDM occlusion) under each attribution's title."""
    cols = 2 + len(rcdm) + len(attributions)
    fig = Figure(figsize=(1.7 * cols, 2.1), dpi=110)
    axes = fig.subplots(1, cols, squeeze=False)[0]
    axes[0].imshow(_hwc(image))
    axes[0].set_title("image", fontsize=7)
    shown = samples[:4]
    nrow = max(1, math.ceil(math.sqrt(len(shown))))
    axes[1].imshow(_hwc(make_grid(shown, nrow=nrow)) if len(shown) else _hwc(image))
    axes[1].set_title(f"RCDM samples ({len(samples)})", fontsize=7)
    for ax, (name, m) in zip(axes[2:], rcdm.items()):
        ax.imshow(m.numpy(), cmap="viridis")
        ax.set_title(RCDM_TITLES.get(name, name), fontsize=7)
    for ax, (name, m) in zip(axes[2 + len(rcdm) :], attributions.items()):
        title = name if not scores or name not in scores else f"{name}\n{scores[name]}"
        _attr_panel(fig, ax, image, m, title)
    for ax in axes:
        ax.axis("off")
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return atomic_write_bytes(path, buf.getvalue())
