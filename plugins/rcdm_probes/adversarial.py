"""``adversarial``: PGD with an L-inf bound in [0, 1] pixel space against the representation, then samples
from the perturbed representation (finding 3: SSL representations keep the content, supervised ones drift)."""

from __future__ import annotations

import torch

import rcdm_core as rc
from rcdm_core.errors import ConfigError
from rcdm_core.grad import input_gradient_mode
from rcdm_core.images import save_rows
from rcdm_core.progress import bar
from rcdm_core.stats import cosine

from ._common import (
    ADVERSARIAL,
    candidate_set,
    embed_samples,
    fmt,
    generator_for,
    low_mse,
    rank_metrics,
    rel,
    resolve_target,
    safe_name,
    sample_per_image,
    standard_samples,
)


def check_epsilon(eps: float) -> str | None:
    return None if 0.0 <= float(eps) <= 1.0 else f"epsilon must be in [0, 1] (pixel units), got {eps}"


def pgd_linf(
    rep: rc.Representation,
    pixels: torch.Tensor,
    *,
    epsilon: float,
    steps: int,
    step_size: float,
    objective: str = "away",
    target: torch.Tensor | None = None,
    random_start: bool = False,
    generator: torch.Generator | None = None,
    progress: bool = False,
) -> torch.Tensor:
    """Projected gradient steps on the pixels, within ``epsilon`` (L-inf) of them and within [0, 1].

    pixels: (N, 3, H, W) in [0, 1]. The loss is the cosine between ``rep.encode_with_grad(x_adv)`` (the
    encoder's preprocessing and normalisation inside the attacked function) and r(pixels) for ``away``
    (minimised) or ``target`` (N, D) for ``toward`` (maximised). The encoder runs in eval mode without
    parameter gradients; its mode and requires_grad flags are restored afterwards. epsilon 0 returns the
    input unchanged. Returns (N, 3, H, W) with |x_adv - x| <= epsilon (up to float rounding) and in [0, 1].
    """
    msg = check_epsilon(epsilon)
    if msg:
        raise ConfigError(f"adversarial: {msg}")
    if objective not in ("away", "toward"):
        raise ConfigError(f"adversarial: objective must be 'away' or 'toward', got {objective!r}")
    x = pixels.detach().float().to(rep.device)
    if epsilon == 0 or steps == 0:
        return x.clone()
    with input_gradient_mode(rep.encoder.module):
        if objective == "toward":
            if target is None:
                raise ConfigError("adversarial: objective 'toward' needs a target representation")
            ref = target.detach().float().to(rep.device)
        else:
            ref = rep.encode_with_grad(x).detach()
        delta = torch.zeros_like(x)
        if random_start:
            delta = (torch.rand(x.shape, generator=generator) * 2 - 1).to(x.device) * epsilon
        delta = (x + delta).clamp(0, 1) - x
        sign = -1.0 if objective == "away" else 1.0
        for _ in bar(range(steps), desc="pgd", progress=progress):
            delta.requires_grad_(True)
            sim = cosine(rep.encode_with_grad(x + delta), ref).sum()
            (grad,) = torch.autograd.grad(sign * sim, delta)
            delta = (delta.detach() + step_size * grad.sign()).clamp(-epsilon, epsilon)
            delta = (x + delta).clamp(0, 1) - x
    return torch.minimum(torch.maximum(x + delta, x - epsilon), x + epsilon).clamp(0, 1).detach()


class AdversarialProbe(rc.Probe):
    """Per arm: representation cosine before/after the attack and faithfulness of samples to the clean image."""

    name = "adversarial"
    OPTIONS = {
        "epsilon": rc.Option(8 / 255, "L-inf bound in [0, 1] pixel units", type=float, check=check_epsilon),
        "steps": rc.Option(10, "PGD steps", type=int),
        "step_size": rc.Option(None, "PGD step in pixel units (default 2.5 * epsilon / steps)", type=float),
        "objective": rc.Option(
            "away", "push r(x_adv) away from r(x), or toward the target image's", choices=("away", "toward")
        ),
        "target": rc.Option("next", "target image for 'toward': next, an image index or id"),
        "random_start": rc.Option(False, "start from a uniform point in the epsilon ball", type=bool),
        "figure_images": rc.Option(4, "images shown in each figure", type=int),
    }

    def __init__(
        self,
        epsilon=8 / 255,
        steps=10,
        step_size=None,
        objective="away",
        target="next",
        random_start=False,
        figure_images=4,
    ):
        msg = check_epsilon(epsilon)
        if msg:
            raise ConfigError(f"probe adversarial: {msg}")
        if steps < 0:
            raise ConfigError(f"probe adversarial: steps must be >= 0, got {steps}")
        self.epsilon, self.steps, self.objective, self.target = float(epsilon), int(steps), objective, target
        self.step_size = (
            float(step_size) if step_size is not None else 2.5 * self.epsilon / max(1, self.steps)
        )
        self.random_start, self.figure_images = bool(random_start), figure_images

    def attack(
        self, ctx: rc.ProbeContext, arm: rc.ArmRuntime, images: torch.Tensor, target: torch.Tensor | None
    ):
        """images (N, 3, S, S) -> adversarial images, batched by ctx.batch_size (each row independent)."""
        out = []
        for i in range(0, len(images), ctx.batch_size):
            tgt = None if target is None else target[i : i + ctx.batch_size]
            out.append(
                pgd_linf(
                    arm.rep,
                    images[i : i + ctx.batch_size],
                    epsilon=self.epsilon,
                    steps=self.steps,
                    step_size=self.step_size,
                    objective=self.objective,
                    target=tgt,
                    random_start=self.random_start,
                    generator=generator_for(ctx.seed, "pgd", arm.name, i),
                    progress=ctx.progress,
                ).cpu()
            )
        return torch.cat(out)

    def run(self, ctx: rc.ProbeContext) -> rc.ProbeResult:
        metrics, figures, notes, parts = {}, [], [], []
        targets = (
            resolve_target(ctx, self.target, "adversarial.target") if self.objective == "toward" else None
        )
        for arm in ctx.arms:
            cond, clean_samples = standard_samples(ctx, arm)
            images = ctx.images_for(arm)
            tgt = cond[targets] if targets is not None else None
            adv = self.attack(ctx, arm, images, tgt)
            adv_cond = ctx.encode(arm, adv)
            adv_samples = sample_per_image(ctx, arm, adv_cond, ADVERSARIAL)
            candidates, described = candidate_set(ctx, arm, cond)
            k = ctx.n_samples
            source = torch.arange(len(images)).repeat_interleave(k)
            m = {
                "linf": float((adv - images).abs().max()) if len(images) else 0.0,
                "rep_cosine_clean_adv": float(cosine(cond, adv_cond).mean()),
                "clean_samples": rank_metrics(
                    embed_samples(ctx, arm, clean_samples).flatten(0, 1), source, candidates, cond
                ),
                "adv_samples": rank_metrics(
                    embed_samples(ctx, arm, adv_samples).flatten(0, 1), source, candidates, cond
                ),
                "pixel_mse_clean_samples": float(low_mse(clean_samples, images[:, None]).mean()),
                "pixel_mse_adv_samples": float(low_mse(adv_samples, images[:, None]).mean()),
            }
            if tgt is not None:
                m["rep_cosine_to_target_before"] = float(cosine(cond, tgt).mean())
                m["rep_cosine_to_target_after"] = float(cosine(adv_cond, tgt).mean())
            metrics[arm.name] = m
            parts.append(
                f"{arm.name}: rep cosine {fmt(m['rep_cosine_clean_adv'])}, adv top-1 {fmt(m['adv_samples']['top1'])}"
            )
            notes.append(
                f"Arm {arm.name}: the attack (eps {fmt(self.epsilon)}, {self.steps} steps, {self.objective}) moved "
                f"r(x) to cosine {fmt(m['rep_cosine_clean_adv'])} of the clean one. Samples from the attacked "
                f"representation rank the clean image top-1 in {fmt(m['adv_samples']['top1'])} of cases among "
                f"{described} (clean samples: {fmt(m['clean_samples']['top1'])}); faithfulness cosine to the clean "
                f"image {fmt(m['adv_samples']['cosine'])} vs {fmt(m['clean_samples']['cosine'])}."
            )
            out = ctx.probe_dir(self.name)
            rows = []
            for i in range(min(len(images), self.figure_images)):
                rows += [
                    torch.cat([images[i : i + 1], clean_samples[i]]),
                    torch.cat([adv[i : i + 1], adv_samples[i]]),
                ]
            if rows:
                figures.append(rel(ctx, save_rows(rows, out / f"{safe_name(arm.name)}.png")))
        if len(metrics) > 1:
            drift = {a: m["clean_samples"]["cosine"] - m["adv_samples"]["cosine"] for a, m in metrics.items()}
            most, least = max(drift, key=drift.get), min(drift, key=drift.get)
            notes.append(
                f"Samples drift most from the clean content for arm {most} (faithfulness cosine drop "
                f"{fmt(drift[most])}) and least for arm {least} ({fmt(drift[least])}); each arm is judged by its own "
                "encoder, so also compare pixel_mse_adv_samples, which is encoder-independent."
            )
        notes.append("Figure rows per image: clean image then its samples; attacked image then its samples.")
        return rc.ProbeResult(metrics=metrics, figures=figures, summary="; ".join(parts), notes=notes)
