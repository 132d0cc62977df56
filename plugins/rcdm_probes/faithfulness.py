"""``faithfulness``: the paper's metric. Embed each sample with the same representation and rank its true
source among real images by cosine; the same for a shuffled-condition baseline (what chance gives)."""

from __future__ import annotations

import torch

import rcdm_core as rc

from ._common import (
    candidate_set,
    derangement,
    embed_samples,
    fmt,
    generator_for,
    rank_metrics,
    standard_samples,
)


def faithfulness_of(
    sample_feats: torch.Tensor, candidates: torch.Tensor, cond: torch.Tensor, perm: list[int] | None = None
) -> dict[str, float]:
    """sample_feats (N, K, D) of samples of image i's condition; candidates (C, D) with source i at index i.

    With ``perm`` (a derangement), image i is scored with the samples made from image perm[i]'s condition:
    the shuffled-condition baseline.
    """
    n, k = sample_feats.shape[:2]
    feats = sample_feats if perm is None else sample_feats[perm]
    source = torch.arange(n).repeat_interleave(k)
    return rank_metrics(feats.flatten(0, 1), source, candidates, cond)


def chance_verdict(mean_rank: float, shuffled_rank: float) -> str:
    """Plain words for a mean rank against the shuffled baseline's (a 20% margin either way)."""
    if mean_rank <= 0.8 * shuffled_rank:
        return "better than chance"
    if mean_rank >= 1.2 * shuffled_rank:
        return "worse than chance"
    return "about as good as chance"


class FaithfulnessProbe(rc.Probe):
    """Per arm: mean rank, top-1 and top-5 rates of the true source and the mean faithfulness cosine."""

    name = "faithfulness"
    OPTIONS: dict[str, rc.Option] = {}

    def run(self, ctx: rc.ProbeContext) -> rc.ProbeResult:
        metrics, notes, parts, few = {}, [], [], False
        perm = (
            derangement(len(ctx.ids), generator_for(ctx.seed, "faithfulness")) if len(ctx.ids) > 1 else None
        )
        for arm in ctx.arms:
            cond, samples = standard_samples(ctx, arm)
            feats = embed_samples(ctx, arm, samples)
            candidates, described = candidate_set(ctx, arm, cond)
            m = faithfulness_of(feats, candidates, cond)
            m["n_candidates"] = len(candidates)
            if perm is not None:
                m["shuffled"] = faithfulness_of(feats, candidates, cond, perm)
            metrics[arm.name] = m
            parts.append(f"{arm.name}: top-1 {fmt(m['top1'])}, mean rank {fmt(m['mean_rank'])}")
            line = (
                f"Arm {arm.name}: samples rank their source at {fmt(m['mean_rank'])} on average among {described} "
                f"(top-1 {fmt(m['top1'])}, top-5 {fmt(m['top5'])}, faithfulness cosine {fmt(m['cosine'])})"
            )
            if perm is not None:
                s = m["shuffled"]
                line += (
                    f"; with shuffled conditions the mean rank is {fmt(s['mean_rank'])} (top-1 {fmt(s['top1'])}), "
                    f"so the samples are {chance_verdict(m['mean_rank'], s['mean_rank'])}."
                )
            else:
                line += "; one image only, so there is no shuffled baseline."
            notes.append(line)
            few = len(candidates) <= 5
        if few:
            notes.append(
                f"Only {len(ctx.ids)} candidates: top-5 is 1 by construction; give --reference for a real ranking."
            )
        return rc.ProbeResult(metrics=metrics, summary="; ".join(parts), notes=notes)
