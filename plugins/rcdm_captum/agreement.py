"""How much two (H, W) maps agree: Spearman rank correlation and the IoU of their top-k% pixels."""

from __future__ import annotations

import math

import torch
from scipy.stats import rankdata


def spearman(a: torch.Tensor, b: torch.Tensor) -> float | None:
    """Spearman rank correlation of two same-shape maps (ties get average ranks); None when one is constant."""
    x = a.detach().double().flatten().cpu().numpy()
    y = b.detach().double().flatten().cpu().numpy()
    if x.std() == 0 or y.std() == 0:
        return None
    rx, ry = rankdata(x), rankdata(y)
    rx, ry = rx - rx.mean(), ry - ry.mean()
    return float((rx * ry).sum() / math.sqrt((rx * rx).sum() * (ry * ry).sum()))


def top_mask(m: torch.Tensor, percent: float) -> torch.Tensor:
    """Boolean mask of the ceil(percent% of pixels) largest values; ties broken by position (deterministic)."""
    flat = m.detach().float().flatten().cpu()
    k = max(1, math.ceil(flat.numel() * percent / 100.0))
    order = torch.argsort(-flat, stable=True)[:k]
    mask = torch.zeros(flat.numel(), dtype=torch.bool)
    mask[order] = True
    return mask.view(m.shape)


def iou(a: torch.Tensor, b: torch.Tensor) -> float:
    """Intersection over union of two boolean masks."""
    union = (a | b).sum().item()
    return float((a & b).sum().item() / union) if union else 0.0


def top_iou(a: torch.Tensor, b: torch.Tensor, percent: float) -> float | None:
    """IoU of the top-``percent``% pixels of two maps; None when one map is constant (no top set exists)."""
    if float(a.max() - a.min()) == 0 or float(b.max() - b.min()) == 0:
        return None
    return iou(top_mask(a, percent), top_mask(b, percent))
