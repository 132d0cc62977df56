"""``invariance``: condition on r(x) and on r(aug(x)) for each SSL augmentation and read what the samples carry.

Findings 1 and 2: run with arms ``backbone`` and ``projector``. The augmentations are rcdm_core.augment's,
the same code training uses, applied with probability 1 at the configured strength.

Per augmentation and arm: the representation cosine cos(r(x), r(aug x)) and ``carried``, a number near 1 when
the samples reproduce the augmentation and near 0 when they ignore it:
- flip, solarize: match rate (samples of r(aug x) closer to aug x than to x, at 16 px) minus the same rate
  for samples of r(x);
- crop: which zoom between the full frame (0) and the crop box (1) the samples match best, for samples of
  r(aug x) minus samples of r(x);
- grayscale: 1 - saturation of samples of r(gray x) / saturation of samples of r(x);
- color_jitter: the share of the input's brightness and hue shifts that reappears between the two sample
  sets (least-squares slope through the origin over images), each clipped to [-1, 1], averaged;
- blur: the share of the input's loss of sharpness (variance of the Laplacian) that the samples reproduce.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

import rcdm_core as rc
from rcdm_core import augment
from rcdm_core.errors import ConfigError
from rcdm_core.images import resize, save_rows
from rcdm_core.stats import cosine, saturation

from ._common import (
    INVARIANCE,
    float_range,
    fmt,
    generator_for,
    low,
    low_mse,
    rel,
    safe_name,
    sample_per_image,
    standard_samples,
    str_list,
)

CROP_RATIO = (3 / 4, 4 / 3)
ZOOMS = (0.0, 0.25, 0.5, 0.75, 1.0)


def check_augmentations(names: list[str]) -> None:
    unknown = [n for n in names if n not in augment.AUGMENTATIONS]
    if unknown:
        raise ConfigError(
            f"invariance: unknown augmentation {unknown[0]!r}; known: {', '.join(augment.AUGMENTATIONS)}"
        )


# ---- what the samples carry ----------------------------------------------------------------------------------


def match_rate(samples: torch.Tensor, near: torch.Tensor, far: torch.Tensor) -> float:
    """samples (N, K, 3, H, W); near, far (N, 3, H, W): fraction of samples closer (16 px MSE) to ``near``."""
    return float((low_mse(samples, near[:, None]) < low_mse(samples, far[:, None])).double().mean())


def brightness(pixels: torch.Tensor) -> torch.Tensor:
    """(..., 3, H, W) -> (...) mean luma."""
    return augment.gray(pixels.reshape(-1, *pixels.shape[-3:])).flatten(1).mean(1).view(pixels.shape[:-3])


def hue_vector(pixels: torch.Tensor) -> torch.Tensor:
    """(..., 3, H, W) -> (..., 2): saturation- and value-weighted mean of (cos, sin) of the hue angle."""
    hsv = augment.rgb_to_hsv(pixels.reshape(-1, *pixels.shape[-3:]).float())
    w = hsv[:, 1] * hsv[:, 2]
    ang = hsv[:, 0] * 2 * math.pi
    vec = torch.stack([(w * ang.cos()).flatten(1).mean(1), (w * ang.sin()).flatten(1).mean(1)], -1)
    return vec.view(*pixels.shape[:-3], 2)


def hue_shift_turns(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Signed hue rotation from hue vectors a to b, in turns in [-0.5, 0.5)."""
    d = torch.atan2(b[..., 1], b[..., 0]) - torch.atan2(a[..., 1], a[..., 0])
    return torch.remainder(d / (2 * math.pi) + 0.5, 1.0) - 0.5


def slope(d_in: torch.Tensor, d_out: torch.Tensor) -> float:
    """Least-squares slope through the origin: the share of the input shift found in the output."""
    den = float((d_in.double() ** 2).sum())
    return float((d_in.double() * d_out.double()).sum()) / den if den > 1e-12 else 0.0


def sharpness(pixels: torch.Tensor) -> torch.Tensor:
    """(..., 3, H, W) -> (...) variance of the Laplacian of the luma (lower = blurrier)."""
    x = augment.gray(pixels.reshape(-1, *pixels.shape[-3:]).float())
    k = torch.tensor([[0.0, 1.0, 0.0], [1.0, -4.0, 1.0], [0.0, 1.0, 0.0]]).view(1, 1, 3, 3)
    return F.conv2d(x, k).flatten(1).var(1).view(pixels.shape[:-3])


def zoom_views(image: torch.Tensor, box: tuple[float, float, float, float]) -> torch.Tensor:
    """(3, S, S) and a crop box (top, left, h, w) -> (len(ZOOMS), 3, 16, 16) views from full frame to box."""
    s = image.shape[-1]
    views = []
    for t in ZOOMS:
        top, left, h, w = (t * b for b in box)
        h, w = h + (1 - t) * s, w + (1 - t) * s
        y0, x0 = int(round(top)), int(round(left))
        y1, x1 = max(y0 + 1, int(round(top + h))), max(x0 + 1, int(round(left + w)))
        views.append(resize(image[None, :, y0:y1, x0:x1], (s, s), mode="bilinear")[0])
    return low(torch.stack(views))


def zoom_carried(samples: torch.Tensor, images: torch.Tensor, boxes: list[tuple]) -> float:
    """Mean zoom (0 = full frame, 1 = crop box) of the view each sample matches best; samples (N, K, ...)."""
    out = []
    for i, box in enumerate(boxes):
        views = zoom_views(images[i], box)
        d = (low(samples[i])[:, None] - views[None]).pow(2).flatten(2).mean(-1)  # (K, Z)
        out.append(torch.tensor(ZOOMS)[d.argmin(1)])
    return float(torch.cat(out).mean())


def verdict(carried: float) -> str:
    return "carried" if carried >= 0.5 else ("not carried" if carried <= 0.2 else "partly carried")


# ---- the probe ------------------------------------------------------------------------------------------------


class InvarianceProbe(rc.Probe):
    """Per arm and augmentation: cosine(r(x), r(aug x)) and what the samples of r(aug x) carry."""

    name = "invariance"
    OPTIONS = {
        "augmentations": rc.Option(
            list(augment.AUGMENTATIONS), "which of: " + ", ".join(augment.AUGMENTATIONS), type=str_list
        ),
        "crop_scale": rc.Option(
            [0.2, 0.4], "area fraction of the random resized crop (number or [lo, hi])", type=float_range
        ),
        "jitter_strength": rc.Option(
            1.0, "colour jitter strength (x brightness/contrast/saturation 0.4, hue 0.1)", type=float
        ),
        "blur_sigma": rc.Option(
            0.03, "Gaussian blur sigma as a fraction of the image side (number or [lo, hi])", type=float_range
        ),
        "solarize_threshold": rc.Option(0.5, "solarize pixels at or above this value", type=float),
        "figure_images": rc.Option(4, "images shown in each figure", type=int),
    }

    def __init__(
        self,
        augmentations=None,
        crop_scale=(0.2, 0.4),
        jitter_strength=1.0,
        blur_sigma=0.03,
        solarize_threshold=0.5,
        figure_images=4,
    ):
        self.augmentations = str_list(
            augmentations if augmentations is not None else list(augment.AUGMENTATIONS)
        )
        check_augmentations(self.augmentations)
        self.crop_scale, self.blur_sigma = float_range(crop_scale), float_range(blur_sigma)
        self.jitter_strength, self.solarize_threshold = float(jitter_strength), float(solarize_threshold)
        self.figure_images = figure_images

    def params(self, name: str, side: int) -> dict:
        if name == "crop":
            return {"scale": self.crop_scale, "ratio": CROP_RATIO}
        if name == "color_jitter":
            return {"strength": self.jitter_strength}
        if name == "blur":
            return {"sigma": (self.blur_sigma[0] * side, self.blur_sigma[1] * side)}
        if name == "solarize":
            return {"threshold": self.solarize_threshold}
        return {}

    def augmented(self, ctx: rc.ProbeContext, name: str) -> tuple[torch.Tensor, list[tuple] | None]:
        """The run's images through one augmentation, each with its own generator (batch layout free);
        for crop also the boxes (re-drawn from an identical generator), at the run's resolution."""
        side = ctx.images.shape[-1]
        params = self.params(name, side)
        out, boxes = [], [] if name == "crop" else None
        for i in range(len(ctx.images)):
            out.append(
                augment.apply(
                    name, ctx.images[i : i + 1], generator_for(ctx.seed, "invariance", name, i), **params
                )
            )
            if boxes is not None:
                gen = generator_for(ctx.seed, "invariance", name, i)
                boxes.append(augment.crop_box(side, side, gen, params["scale"], params["ratio"]))
        return torch.cat(out), boxes

    def measure(self, name, images, aug, clean_s, aug_s, boxes) -> dict[str, float]:
        """What one arm's samples carry of one augmentation (see the module docstring)."""
        m = {
            "match_rate": match_rate(aug_s, aug, images),
            "match_rate_clean": match_rate(clean_s, aug, images),
        }
        if name == "grayscale":
            sat_clean, sat_aug = (
                float(saturation(clean_s.flatten(0, 1)).mean()),
                float(saturation(aug_s.flatten(0, 1)).mean()),
            )
            m |= {"saturation_samples_clean": sat_clean, "saturation_samples_aug": sat_aug}
            m["carried"] = 1 - sat_aug / sat_clean if sat_clean > 1e-6 else 0.0
        elif name == "color_jitter":
            d_in_b = brightness(aug) - brightness(images)
            d_out_b = brightness(aug_s).mean(1) - brightness(clean_s).mean(1)
            d_in_h = hue_shift_turns(hue_vector(images), hue_vector(aug))
            d_out_h = hue_shift_turns(hue_vector(clean_s).mean(1), hue_vector(aug_s).mean(1))
            m |= {
                "brightness_shift_input": float(d_in_b.abs().mean()),
                "brightness_carried": slope(d_in_b, d_out_b),
                "hue_shift_input_deg": float(d_in_h.abs().mean()) * 360,
                "hue_carried": slope(d_in_h, d_out_h),
            }
            # each share clipped to [-1, 1]: a slope far outside it is noise on a tiny shift, not "more than all"
            m["carried"] = sum(max(-1.0, min(1.0, m[k])) for k in ("brightness_carried", "hue_carried")) / 2
        elif name == "blur":
            ratio_in = float(sharpness(aug).mean() / sharpness(images).mean().clamp_min(1e-12))
            ratio_out = float(sharpness(aug_s).mean() / sharpness(clean_s).mean().clamp_min(1e-12))
            m |= {"sharpness_ratio_input": ratio_in, "sharpness_ratio_samples": ratio_out}
            m["carried"] = (1 - ratio_out) / (1 - ratio_in) if ratio_in < 1 - 1e-6 else 0.0
        elif name == "crop":
            m["zoom_samples_aug"] = zoom_carried(aug_s, images, boxes)
            m["zoom_samples_clean"] = zoom_carried(clean_s, images, boxes)
            m["crop_area"] = (
                sum(b[2] * b[3] for b in boxes) / (len(boxes) * images.shape[-1] ** 2) if boxes else 1.0
            )
            m["carried"] = m["zoom_samples_aug"] - m["zoom_samples_clean"]
        else:
            m["carried"] = m["match_rate"] - m["match_rate_clean"]
        return m

    def run(self, ctx: rc.ProbeContext) -> rc.ProbeResult:
        metrics = {arm.name: {} for arm in ctx.arms}
        figures, notes = [], []
        run_side = ctx.images.shape[-1]
        rows_table = []
        for name in self.augmentations:
            aug_run, boxes = self.augmented(ctx, name)
            stream = INVARIANCE + list(augment.AUGMENTATIONS).index(name)
            readings = []
            for arm in ctx.arms:
                cond, clean_s = standard_samples(ctx, arm)
                images, aug = ctx.images_for(arm), ctx.images_for(arm, aug_run)
                aug_cond = ctx.encode(arm, aug)
                aug_s = sample_per_image(ctx, arm, aug_cond, stream)
                scale = images.shape[-1] / run_side
                arm_boxes = [tuple(v * scale for v in b) for b in boxes] if boxes is not None else None
                m = {"cosine": float(cosine(cond, aug_cond).mean())}
                m |= self.measure(name, images, aug, clean_s, aug_s, arm_boxes)
                metrics[arm.name][name] = m
                readings.append((arm.name, m))
                fig_rows = []
                for i in range(min(len(images), self.figure_images)):
                    fig_rows += [
                        torch.cat([images[i : i + 1], clean_s[i]]),
                        torch.cat([aug[i : i + 1], aug_s[i]]),
                    ]
                if fig_rows:
                    path = ctx.probe_dir(self.name) / f"{name}_{safe_name(arm.name)}.png"
                    figures.append(rel(ctx, save_rows(fig_rows, path)))
            notes.append(self.reading(name, readings))
            rows_table.append(
                [name]
                + [
                    f"{fmt(m['carried'])} {verdict(m['carried'])} (cos {fmt(m['cosine'])})"
                    for _, m in readings
                ]
            )
        notes.append(
            "carried: near 1 when samples of r(aug x) reproduce the augmentation, near 0 when they ignore it "
            "(the representation is invariant to it). Figures (one per augmentation and arm): per image, x then "
            "samples of r(x), aug(x) then samples of r(aug(x))."
        )
        table = {
            "title": "What the samples carry (findings 1 and 2)",
            "columns": ["augmentation"] + [a.name for a in ctx.arms],
            "rows": rows_table,
        }
        summary = "; ".join(
            f"{a}: carried " + ", ".join(f"{n} {fmt(metrics[a][n]['carried'])}" for n in self.augmentations)
            for a in metrics
        )
        return rc.ProbeResult(metrics=metrics, figures=figures, summary=summary, notes=notes, tables=[table])

    @staticmethod
    def reading(name: str, readings: list[tuple[str, dict]]) -> str:
        """One plain sentence per augmentation, from the numbers."""
        parts = []
        for arm, m in readings:
            detail = f"cosine {fmt(m['cosine'])}"
            if name == "grayscale":
                detail += f", sample saturation {fmt(m['saturation_samples_aug'])} vs {fmt(m['saturation_samples_clean'])} from r(x)"
            elif name == "color_jitter":
                detail += (
                    f", {fmt(m['brightness_carried'])} of the brightness shift and {fmt(m['hue_carried'])} of "
                    f"the hue shift ({fmt(m['hue_shift_input_deg'])} deg) reappear"
                )
            elif name == "blur":
                detail += f", sample sharpness ratio {fmt(m['sharpness_ratio_samples'])} (input {fmt(m['sharpness_ratio_input'])})"
            elif name == "crop":
                detail += f", samples match zoom {fmt(m['zoom_samples_aug'])} (r(x): {fmt(m['zoom_samples_clean'])})"
            else:
                detail += f", {fmt(m['match_rate'])} of samples match aug(x) better than x (r(x): {fmt(m['match_rate_clean'])})"
            parts.append(f"{verdict(m['carried'])} for {arm} ({detail})")
        return f"{name}: " + "; ".join(parts) + "."
