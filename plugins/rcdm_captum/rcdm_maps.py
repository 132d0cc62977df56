"""What RCDM says the representation depends on: sample variance, and occlusion seen through RCDM samples."""

from __future__ import annotations

import torch

from rcdm_core.context import ArmRuntime, ProbeContext
from rcdm_core.stats import cosine, pixel_std_map


def patch_boxes(size: int, patch: int) -> list[tuple[int, int, int, int]]:
    """Non-overlapping (top, left, bottom, right) boxes tiling a size x size image; edge boxes may be smaller."""
    return [
        (t, left, min(t + patch, size), min(left + patch, size))
        for t in range(0, size, patch)
        for left in range(0, size, patch)
    ]


def occluded_copies(image: torch.Tensor, baseline: torch.Tensor, boxes) -> torch.Tensor:
    """image, baseline (3, S, S) -> (P, 3, S, S): copy p has box p replaced by the baseline there."""
    out = image.unsqueeze(0).repeat(len(boxes), 1, 1, 1)
    for i, (t, left, b, r) in enumerate(boxes):
        out[i, :, t:b, left:r] = baseline[:, t:b, left:r]
    return out


def paint(values: torch.Tensor, boxes, size: int) -> torch.Tensor:
    """Per-box values (P,) -> (S, S) map at the image's resolution."""
    out = torch.zeros(size, size)
    for v, (t, left, b, r) in zip(values.tolist(), boxes):
        out[t:b, left:r] = v
    return out


@torch.inference_mode()
def rcdm_maps(
    ctx: ProbeContext,
    arm: ArmRuntime,
    image: torch.Tensor,
    baseline: torch.Tensor,
    sample_ids: list[int],
    seed: int,
    patch: int,
) -> dict[str, torch.Tensor]:
    """image, baseline (3, S, S) pixels -> {"samples": (K, 3, S, S), "sample_std": (S, S), and when
    ``patch`` > 0 "occlusion_pixel" and "occlusion_rep": (S, S)}.

    Occlusion through RCDM: each patch of the image is replaced by the baseline, the copy re-encoded and
    sampled with the SAME x_T (same ``sample_ids`` and ``seed``) as the unoccluded condition; a patch's value
    is how far its samples moved from the unoccluded ones: RMS pixel distance in [0, 1]
    (L2 / sqrt(3 S S)) and 1 - cosine between the samples' representations, each averaged over the K samples.
    """
    k, size = len(sample_ids), image.shape[-1]
    cond = ctx.encode(arm, image[None])
    samples = ctx.sample(arm, cond.expand(k, -1), sample_ids=sample_ids, seed=seed)
    out = {"samples": samples, "sample_std": pixel_std_map(samples)}
    if patch <= 0:
        return out
    boxes = patch_boxes(size, patch)
    conds = ctx.encode(arm, occluded_copies(image, baseline, boxes))
    moved = ctx.sample(arm, conds.repeat_interleave(k, 0), sample_ids=sample_ids * len(boxes), seed=seed)
    base = samples.repeat(len(boxes), 1, 1, 1)
    pixel = (moved - base).flatten(1).pow(2).mean(1).sqrt().view(len(boxes), k).mean(1)
    rep_moved, rep_base = ctx.encode(arm, moved), ctx.encode(arm, samples).repeat(len(boxes), 1)
    rep = (1 - cosine(rep_moved, rep_base)).view(len(boxes), k).mean(1)
    out["occlusion_pixel"] = paint(pixel, boxes, size)
    out["occlusion_rep"] = paint(rep, boxes, size)
    return out
