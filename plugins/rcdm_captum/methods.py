"""The Captum methods, each run with its memory bound, returning attributions shaped like the input."""

from __future__ import annotations

from collections.abc import Callable

import attrs
import torch
from captum.attr import (
    GradientShap,
    IntegratedGradients,
    LayerAttribution,
    LayerGradCam,
    NoiseTunnel,
    Occlusion,
    Saliency,
)
from torch import nn

from .scalar import SimilarityScalar

METHODS = ("integrated_gradients", "gradient_shap", "saliency", "occlusion", "gradcam")
LABELS = {
    "integrated_gradients": "IG",
    "gradient_shap": "GradientShap",
    "saliency": "Saliency",
    "occlusion": "Occlusion",
    "gradcam": "GradCam",
}


@attrs.define
class MethodSettings:
    """Method parameters; every ``*_batch``/``per_eval`` value bounds how many forward passes run at once."""

    ig_steps: int = 32
    internal_batch_size: int = 16
    gs_samples: int = 16
    gs_stdev: float = 0.05
    gs_batch: int = 8
    noise: bool = True
    nt_samples: int = 8
    nt_stdev: float = 0.1
    nt_batch: int = 4
    occlusion_patch: int = 4
    occlusion_stride: int = 2
    perturbations_per_eval: int = 16


def _chunks(total: int, size: int) -> list[int]:
    size = max(1, size)
    return [min(size, total - i) for i in range(0, total, size)]


def _tensor(x) -> torch.Tensor:
    """captum's metrics pass inputs as 1-tuples; our explanation functions take either."""
    return x[0] if isinstance(x, tuple) else x


def _like(x, out: torch.Tensor):
    return (out,) if isinstance(x, tuple) else out


class Attributor:
    """Runs one method on a batch: ``explain(method)(x, baselines=, additional_forward_args=(ref,)) -> (N, C, H, W)``.

    x: (N, 3, H, W) pixels in [0, 1]; baselines like x; ref (N, D). GradCam returns (N, 1, H, W) (upsampled
    from its layer). The signature is the one captum's ``sensitivity_max`` calls, so the same functions serve
    the attribution and its sensitivity.
    """

    def __init__(
        self, scalar: SimilarityScalar, settings: MethodSettings, gradcam_layer: nn.Module | None = None
    ):
        self.scalar = scalar
        self.s = settings
        self.gradcam_layer = gradcam_layer
        self.last_delta: torch.Tensor | None = None

    def explain(self, method: str) -> Callable:
        return getattr(self, method)

    def integrated_gradients(self, x, baselines=None, additional_forward_args=None):
        attr, delta = IntegratedGradients(self.scalar).attribute(
            _tensor(x),
            baselines=_tensor(baselines),
            additional_forward_args=additional_forward_args,
            n_steps=self.s.ig_steps,
            internal_batch_size=max(1, self.s.internal_batch_size),
            return_convergence_delta=True,
        )
        self.last_delta = delta.detach()
        return _like(x, attr)

    def gradient_shap(self, x, baselines=None, additional_forward_args=None):
        # GradientShap has no batching option: draw its samples in chunks and average, weighted by chunk size.
        inp = _tensor(x)
        total = torch.zeros_like(inp)
        gs = GradientShap(self.scalar)
        for count in _chunks(self.s.gs_samples, self.s.gs_batch):
            total += count * gs.attribute(
                inp,
                baselines=_tensor(baselines),
                n_samples=count,
                stdevs=self.s.gs_stdev,
                additional_forward_args=additional_forward_args,
            )
        return _like(x, total / self.s.gs_samples)

    def saliency(self, x, baselines=None, additional_forward_args=None):
        sal = Saliency(self.scalar)
        if not self.s.noise:
            return _like(
                x, sal.attribute(_tensor(x), abs=True, additional_forward_args=additional_forward_args)
            )
        attr = NoiseTunnel(sal).attribute(
            _tensor(x),
            nt_type="smoothgrad",
            nt_samples=self.s.nt_samples,
            nt_samples_batch_size=max(1, self.s.nt_batch),
            stdevs=float(self.s.nt_stdev),
            abs=True,
            additional_forward_args=additional_forward_args,
        )
        return _like(x, attr)

    def occlusion(self, x, baselines=None, additional_forward_args=None):
        p, st = self.s.occlusion_patch, self.s.occlusion_stride
        attr = Occlusion(self.scalar).attribute(
            _tensor(x),
            sliding_window_shapes=(3, p, p),
            strides=(3, st, st),
            baselines=_tensor(baselines),
            additional_forward_args=additional_forward_args,
            perturbations_per_eval=max(1, self.s.perturbations_per_eval),
        )
        return _like(x, attr)

    def gradcam(self, x, baselines=None, additional_forward_args=None):
        inp = _tensor(x)
        cam = LayerGradCam(self.scalar, self.gradcam_layer)
        size = tuple(inp.shape[-2:])
        if not self.s.noise:
            out = cam.attribute(inp, additional_forward_args=additional_forward_args, relu_attributions=True)
            return _like(x, LayerAttribution.interpolate(out.detach(), size, "bilinear"))
        # SmoothGrad for GradCam (captum's NoiseTunnel is for input attributions): average over noisy copies.
        (ref,) = additional_forward_args
        total = torch.zeros(inp.shape[0], 1, *size, device=inp.device)
        for count in _chunks(self.s.nt_samples, self.s.nt_batch):
            noisy = inp.repeat_interleave(count, 0)
            noisy = noisy + self.s.nt_stdev * torch.randn_like(noisy)
            out = cam.attribute(
                noisy, additional_forward_args=(ref.repeat_interleave(count, 0),), relu_attributions=True
            )
            out = LayerAttribution.interpolate(out.detach(), size, "bilinear")
            total += out.view(inp.shape[0], count, 1, *size).sum(1)
        return _like(x, total / self.s.nt_samples)


def to_map(attr: torch.Tensor) -> torch.Tensor:
    """attribution (1, C, H, W) -> (H, W) magnitude: sum over channels of |attr| (channels can cancel)."""
    return attr.detach().float().abs().sum(dim=1)[0].cpu()
