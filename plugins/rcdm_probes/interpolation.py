"""``interpolation``: a full 0..1 sweep between two images' representations with fixed noise."""

from __future__ import annotations

import torch

import rcdm_core as rc
from rcdm_core.errors import ConfigError
from rcdm_core.images import save_rows
from rcdm_core.stats import cosine

from ._common import INTERPOLATION, embed_samples, fmt, rel, safe_name, stream_ids


def lerp(a: torch.Tensor, b: torch.Tensor, t: float) -> torch.Tensor:
    """(N, D), (N, D) -> (1 - t) a + t b; exactly a at t = 0 and b at t = 1."""
    if t == 0:
        return a.clone()
    if t == 1:
        return b.clone()
    return (1 - t) * a + t * b


def slerp(a: torch.Tensor, b: torch.Tensor, t: float) -> torch.Tensor:
    """Spherical interpolation of the directions, linear interpolation of the norms; exact at the ends.

    Nearly parallel rows fall back to :func:`lerp`.
    """
    if t == 0:
        return a.clone()
    if t == 1:
        return b.clone()
    na, nb = a.norm(dim=-1, keepdim=True), b.norm(dim=-1, keepdim=True)
    ua, ub = a / na.clamp_min(1e-12), b / nb.clamp_min(1e-12)
    omega = (ua * ub).sum(-1, keepdim=True).clamp(-1, 1).acos()
    so = omega.sin()
    direction = (torch.sin((1 - t) * omega) * ua + torch.sin(t * omega) * ub) / so.clamp_min(1e-12)
    out = direction * ((1 - t) * na + t * nb)
    return torch.where(so > 1e-6, out, lerp(a, b, t))


MODES = {"linear": lerp, "slerp": slerp}


def pair_ids(n_pairs: int, per_step: int) -> list[int]:
    """Sample ids of one alpha: the same for every alpha and mode, so the noise is fixed along the sweep."""
    return stream_ids(INTERPOLATION, range(n_pairs), per_step)


class InterpolationProbe(rc.Probe):
    """Per arm and mode: where the samples' representations sit between the two endpoints along the sweep."""

    name = "interpolation"
    OPTIONS = {
        "steps": rc.Option(
            8,
            "points from 0 to 1 inclusive",
            type=int,
            check=lambda s: None if s >= 2 else f"steps must be >= 2, got {s}",
        ),
        "mode": rc.Option("both", "linear, slerp or both", choices=("linear", "slerp", "both")),
        "samples_per_step": rc.Option(1, "samples per point (fixed noise across points)", type=int),
        "max_pairs": rc.Option(4, "pairs (image i, image i+1)", type=int),
    }

    def __init__(self, steps=8, mode="both", samples_per_step=1, max_pairs=4):
        if steps < 2:
            raise ConfigError(f"probe interpolation: steps must be >= 2, got {steps}")
        self.steps, self.per_step, self.max_pairs = int(steps), int(samples_per_step), int(max_pairs)
        self.modes = ["linear", "slerp"] if mode == "both" else [mode]

    def alphas(self) -> list[float]:
        return [i / (self.steps - 1) for i in range(self.steps)]

    def sweep(self, ctx: rc.ProbeContext, arm: rc.ArmRuntime, a: torch.Tensor, b: torch.Tensor, mode: str):
        """a, b (P, D) -> samples (P, steps, K, 3, S, S) with the same ids (noise) at every alpha."""
        ids = pair_ids(len(a), self.per_step)
        out = []
        for t in self.alphas():
            cond = MODES[mode](a, b, t).repeat_interleave(self.per_step, 0)
            with torch.no_grad():
                s = ctx.sample(arm, cond, sample_ids=ids)
            out.append(s.view(len(a), self.per_step, *s.shape[1:]))
        return torch.stack(out, 1)

    def run(self, ctx: rc.ProbeContext) -> rc.ProbeResult:
        n = len(ctx.ids)
        if n < 2:
            raise ConfigError(f"probe interpolation needs at least 2 images; --n-images gives {n}")
        pairs = [(i, (i + 1) % n) for i in range(min(self.max_pairs, n if n > 2 else 1))]
        ia, ib = [p[0] for p in pairs], [p[1] for p in pairs]
        metrics, figures, notes = {}, [], []
        for arm in ctx.arms:
            images = ctx.images_for(arm)
            cond = ctx.encode(arm, images)
            a, b = cond[ia], cond[ib]
            metrics[arm.name] = {}
            for mode in self.modes:
                samples = self.sweep(ctx, arm, a, b, mode)
                p, s, k = samples.shape[:3]
                feats = embed_samples(ctx, arm, samples.flatten(1, 2)).view(p, s, k, -1)
                to_a = cosine(feats, a[:, None, None]).mean(dim=(0, 2))
                to_b = cosine(feats, b[:, None, None]).mean(dim=(0, 2))
                cross = next((t for t, ca, cb in zip(self.alphas(), to_a, to_b) if cb > ca), None)
                step_change = (samples[:, 1:] - samples[:, :-1]).abs().mean(dim=(0, 2, 3, 4, 5))
                metrics[arm.name][mode] = {
                    "cosine_to_a": {f"{t:.2f}": float(v) for t, v in zip(self.alphas(), to_a)},
                    "cosine_to_b": {f"{t:.2f}": float(v) for t, v in zip(self.alphas(), to_b)},
                    "crossover_alpha": cross,
                    "max_step_pixel_change": float(step_change.max()),
                    "mean_step_pixel_change": float(step_change.mean()),
                }
                notes.append(
                    f"Arm {arm.name}, {mode}: samples become closer to B than to A at "
                    f"{'alpha ' + fmt(cross) if cross is not None else 'no alpha'}; the largest "
                    f"jump between neighbouring points is {fmt(float(step_change.max()))} (mean abs pixel change) "
                    f"against a mean of {fmt(float(step_change.mean()))}; a jump far above the mean marks an abrupt switch."
                )
                rows = [
                    torch.cat([images[ia[j] : ia[j] + 1], samples[j, :, 0], images[ib[j] : ib[j] + 1]])
                    for j in range(p)
                ]
                path = ctx.probe_dir(self.name) / f"{safe_name(arm.name)}_{mode}.png"
                figures.append(rel(ctx, save_rows(rows, path)))
        notes.append(
            "Figure rows: image A, samples at alpha 0..1 (first sample per point, fixed noise), image B."
        )
        return rc.ProbeResult(
            metrics=metrics,
            figures=figures,
            notes=notes,
            summary=f"{len(pairs)} pairs x {self.steps} points ({', '.join(self.modes)})",
        )
