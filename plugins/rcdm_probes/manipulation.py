"""``manipulation``: the official nearest-neighbour procedure (finding 4).

Embed the reference set, take the k nearest neighbours (L2, as the official FAISS flat index) of the source's
representation, count per dimension in how many neighbours it is active, call "common" the dimensions active
in more than n of them, then sample from (a) the original representation, (b) the common dimensions set to 0,
(c) the common dimensions replaced by a target image's values. Nearest neighbours come from torch
(cdist + topk); no FAISS.
"""

from __future__ import annotations

import torch

import rcdm_core as rc
from rcdm_core.errors import ConfigError
from rcdm_core.images import save_rows
from rcdm_core.stats import cosine

from ._common import (
    MANIPULATION_SWAP,
    MANIPULATION_ZERO,
    embed_samples,
    fmt,
    positive_int,
    reference_features,
    rel,
    resolve_target,
    safe_name,
    sample_per_image,
    standard_samples,
)


def column_quantile(bank: torch.Tensor, q: float) -> torch.Tensor:
    """(M, D) -> (D,) per-dimension quantile with linear interpolation (torch.quantile has a size limit)."""
    s = bank.float().sort(dim=0).values
    pos = q * (len(s) - 1)
    lo, hi = int(pos), min(int(pos) + 1, len(s) - 1)
    return s[lo] + (pos - lo) * (s[hi] - s[lo])


def resolve_mode(bank: torch.Tensor, mode: str) -> str:
    """``auto``: ``nonzero`` when no reference feature is negative (ReLU features), else ``quantile``."""
    if mode == "auto":
        return "nonzero" if bool((bank >= 0).all()) else "quantile"
    return mode


def common_dimensions(
    query: torch.Tensor, bank: torch.Tensor, k: int, n: int, mode: str = "nonzero", quantile: float = 0.5
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """query (N, D), bank (M, D) -> (common (N, D) bool, counts (N, D) int, neighbours (N, k) indices).

    counts[i, d] = in how many of query i's k nearest bank rows dimension d is active (non-zero, or above the
    bank's per-dimension ``quantile`` for mode ``quantile``); common = counts > n.
    """
    if len(bank) < k:
        raise ConfigError(f"manipulation needs at least k={k} reference images; --reference has {len(bank)}")
    dist = torch.cdist(query.float(), bank.float())
    neighbours = dist.topk(k, dim=1, largest=False).indices
    nb = bank[neighbours]  # (N, k, D)
    if mode == "nonzero":
        active = nb != 0
    elif mode == "quantile":
        active = nb > column_quantile(bank, quantile)
    else:
        raise ConfigError(f"manipulation: mode must be auto, nonzero or quantile, got {mode!r}")
    counts = active.sum(dim=1)
    return counts > n, counts, neighbours


class ManipulationProbe(rc.Probe):
    """Per arm: how many dimensions are common, and where samples go when they are zeroed or swapped."""

    name = "manipulation"
    OPTIONS = {
        "k": rc.Option(20, "nearest neighbours in the reference set", type=int, check=positive_int("k")),
        "n": rc.Option(14, "a dimension is common when active in more than n of the k neighbours", type=int),
        "mode": rc.Option(
            "auto",
            "what 'active' means: nonzero, quantile (signed features) or auto",
            choices=("auto", "nonzero", "quantile"),
        ),
        "quantile": rc.Option(
            0.5,
            "per-dimension quantile of the reference set for mode quantile",
            type=float,
            check=lambda q: None if 0 <= q < 1 else f"quantile must be in [0, 1), got {q}",
        ),
        "target": rc.Option(
            "next", "image whose values replace the common dimensions: next, an index or an id"
        ),
        "figure_images": rc.Option(4, "images shown in each figure", type=int),
    }

    def __init__(self, k=20, n=14, mode="auto", quantile=0.5, target="next", figure_images=4):
        if not 0 <= n < k:
            raise ConfigError(f"probe manipulation: n must satisfy 0 <= n < k; got n={n}, k={k}")
        self.k, self.n, self.mode, self.quantile = int(k), int(n), mode, float(quantile)
        self.target, self.figure_images = target, figure_images

    def run(self, ctx: rc.ProbeContext) -> rc.ProbeResult:
        ctx.require_reference(self.k, "probe manipulation")
        targets = resolve_target(ctx, self.target, "manipulation.target")
        metrics, figures, notes, parts = {}, [], [], []
        for arm in ctx.arms:
            cond, samples = standard_samples(ctx, arm)
            bank = reference_features(ctx, arm)
            mode = resolve_mode(bank, self.mode)
            common, counts, _ = common_dimensions(cond, bank, self.k, self.n, mode, self.quantile)
            target = cond[targets]
            zeroed = cond.masked_fill(common, 0.0)
            swapped = torch.where(common, target, cond)
            zero_samples = sample_per_image(ctx, arm, zeroed, MANIPULATION_ZERO)
            swap_samples = sample_per_image(ctx, arm, swapped, MANIPULATION_SWAP)
            f_orig, f_zero, f_swap = (
                embed_samples(ctx, arm, s) for s in (samples, zero_samples, swap_samples)
            )
            n_common = common.sum(1).float()
            m = {
                "mode": mode,
                "common_dims": float(n_common.mean()),
                "common_fraction": float(n_common.mean() / cond.shape[1]),
                "cond_cosine_zeroed": float(cosine(cond, zeroed).mean()),
                "cond_cosine_swapped": float(cosine(cond, swapped).mean()),
                "samples_cosine_to_source": {
                    "original": float(cosine(f_orig, cond[:, None]).mean()),
                    "zeroed": float(cosine(f_zero, cond[:, None]).mean()),
                    "swapped": float(cosine(f_swap, cond[:, None]).mean()),
                },
                "samples_cosine_to_target": {
                    "original": float(cosine(f_orig, target[:, None]).mean()),
                    "swapped": float(cosine(f_swap, target[:, None]).mean()),
                },
            }
            metrics[arm.name] = m
            moved = m["samples_cosine_to_target"]["swapped"] - m["samples_cosine_to_target"]["original"]
            parts.append(f"{arm.name}: {fmt(m['common_dims'])} common dims")
            notes.append(
                f"Arm {arm.name} ({mode} activity): {fmt(m['common_dims'])} of {cond.shape[1]} dimensions are common "
                f"to more than {self.n} of the {self.k} nearest reference neighbours on average. Swapping them in from "
                f"the target {'raised' if moved > 0 else 'did not raise'} the samples' cosine to the target by "
                f"{fmt(moved)}; zeroing them changed the samples' cosine to the source from "
                f"{fmt(m['samples_cosine_to_source']['original'])} to {fmt(m['samples_cosine_to_source']['zeroed'])}."
            )
            out = ctx.probe_dir(self.name)
            images = ctx.images_for(arm)
            blank = torch.ones_like(images[:1])
            rows = []
            for i in range(min(len(images), self.figure_images)):
                rows += [
                    torch.cat([images[i : i + 1], samples[i]]),
                    torch.cat([blank, zero_samples[i]]),
                    torch.cat([images[targets[i] : targets[i] + 1], swap_samples[i]]),
                ]
            if rows:
                figures.append(rel(ctx, save_rows(rows, out / f"{safe_name(arm.name)}.png")))
        notes.append(
            "Figure rows per image: source then samples of r(x); blank then samples with the common dimensions "
            "zeroed; the target then samples with them swapped in from the target."
        )
        return rc.ProbeResult(metrics=metrics, figures=figures, summary="; ".join(parts), notes=notes)
