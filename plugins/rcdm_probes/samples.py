"""``samples``: N samples per image, grids (original, samples, per-pixel std map) and the mean pixel std."""

from __future__ import annotations

import torch

import rcdm_core as rc
from rcdm_core.images import heatmap, save_rows
from rcdm_core.stats import mean_pixel_std, pixel_std_map

from ._common import fmt, rel, safe_name, standard_samples


class SamplesProbe(rc.Probe):
    """Per arm: samples of r(x) for every image; what varies across them is what r(x) does not pin down."""

    name = "samples"
    OPTIONS = {
        "figure_images": rc.Option(8, "at most this many images (rows) in each grid", type=int),
    }

    def __init__(self, figure_images: int = 8):
        self.figure_images = figure_images

    def run(self, ctx: rc.ProbeContext) -> rc.ProbeResult:
        metrics, figures, readings = {}, [], []
        out = ctx.probe_dir(self.name)
        for arm in ctx.arms:
            _, samples = standard_samples(ctx, arm)
            images = ctx.images_for(arm)
            per_image = {ctx.ids[i]: mean_pixel_std(samples[i]) for i in range(len(images))}
            value = sum(per_image.values()) / max(1, len(per_image))
            metrics[arm.name] = {"mean_pixel_std": value, "per_image": per_image}
            readings.append((arm.name, value))
            rows = [
                torch.cat([images[i : i + 1], samples[i], heatmap(pixel_std_map(samples[i]))[None]])
                for i in range(min(len(images), self.figure_images))
            ]
            if rows:
                figures.append(rel(ctx, save_rows(rows, out / f"{safe_name(arm.name)}.png")))
        notes = [
            "Each grid row: the original, its samples, then the per-pixel std across samples (bright = the "
            "representation leaves that region open)."
        ]
        if ctx.n_samples < 2:
            notes.append(
                "With one sample per image the pixel std is 0 by construction; use --n-samples 2 or more."
            )
        elif len(readings) > 1:
            ordered = sorted(readings, key=lambda r: r[1])
            (lo_arm, lo), (hi_arm, hi) = ordered[0], ordered[-1]
            if hi - lo <= 0.02 * max(hi, 1e-12):
                notes.append(
                    f"All arms leave about the same amount open (mean pixel std {fmt(lo)} to {fmt(hi)})."
                )
            else:
                notes.append(
                    f"Arm {lo_arm} pins the image down most (mean pixel std {fmt(lo)}); arm {hi_arm} leaves the "
                    f"most open ({fmt(hi)})."
                )
        summary = ", ".join(f"{a}: mean pixel std {fmt(v)}" for a, v in readings)
        return rc.ProbeResult(metrics=metrics, figures=figures, summary=summary, notes=notes)
