"""An example third-party rcdm plugin: the encoder ``pixel-grid`` and the probe ``colour-shift``.

Copy this file to start your own: implement the rcdm_core interfaces, return records from the registration
hooks, and declare every option you read (undeclared config keys are rejected by rcdm).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

import rcdm_core as rc
from rcdm_core.images import save_rows


class _Grid(nn.Module):
    def __init__(self, grid: int):
        super().__init__()
        self.grid = grid

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.adaptive_avg_pool2d(x, self.grid).flatten(1)


class PixelGridEncoder(rc.Encoder):
    """Mean colour of each cell of a G x G grid: (N, 3 * G * G). Input [0, 1], 32 px, no weights."""

    name = "pixel-grid"
    input_size = 32
    mean = None
    std = None
    random_weights = False  # nothing to learn: deterministic by construction

    def __init__(self, grid: int = 4):
        self.module = _Grid(grid)
        self.meta = {"weights": None, "layout": "none (no parameters)"}
        self.grid = grid

    def features(self, x: torch.Tensor, layers: Sequence[str]) -> dict[str, torch.Tensor]:
        return {"backbone": self.module(x)}

    def layers(self) -> dict[str, int]:
        return {"backbone": 3 * self.grid * self.grid}


def _make_encoder(arg, weights, trust_checkpoint):
    if weights is not None:
        raise rc.ConfigError("pixel-grid has no weights; drop --weights")
    return PixelGridEncoder()


class ColourShiftProbe(rc.Probe):
    """Mean |mean colour(image) - mean colour(sample)| per arm, and a grid of image + samples."""

    name = "colour-shift"

    def __init__(self, n_images: int = 4):
        self.n_images = n_images

    def run(self, ctx: rc.ProbeContext) -> rc.ProbeResult:
        metrics, figures = {}, []
        out = ctx.probe_dir(self.name)
        for arm in ctx.arms:
            images = ctx.images_for(arm)[: self.n_images]
            cond = ctx.encode(arm, images)
            k = ctx.n_samples
            ids = [i * k + j for i in range(len(images)) for j in range(k)]
            samples = ctx.sample(arm, cond.repeat_interleave(k, 0), sample_ids=ids)
            shift = (samples.mean(dim=(2, 3)) - images.repeat_interleave(k, 0).mean(dim=(2, 3))).abs().mean()
            metrics[arm.name] = {"mean_colour_shift": float(shift)}
            rows = [torch.cat([images[i : i + 1], samples[i * k : (i + 1) * k]]) for i in range(len(images))]
            figures.append(str(save_rows(rows, out / f"{arm.name}.png").relative_to(ctx.out_dir)))
        summary = ", ".join(f"{a}: {m['mean_colour_shift']:.3f}" for a, m in metrics.items())
        return rc.ProbeResult(metrics=metrics, figures=figures, summary=f"mean colour shift {summary}")


@rc.hookimpl
def rcdm_encoders():
    return [rc.EncoderRecord("pixel-grid", _make_encoder, "mean colour of a 4x4 grid (example plugin)")]


@rc.hookimpl
def rcdm_probes():
    return [
        rc.ProbeRecord(
            "colour-shift",
            lambda **o: ColourShiftProbe(**o),
            "mean colour shift between images and samples",
            options={"n_images": rc.Option(4, "images to use", type=int)},
        )
    ]
