"""Every option the attribution probe reads (config keys nobody declared are rejected by rcdm_core)."""

from __future__ import annotations

from typing import Any

from rcdm_core.records import Option

from .baselines import BASELINES
from .methods import METHODS
from .scalar import TARGET_HELP, check_target


def as_methods(value: Any) -> list[str]:
    """``"ig,occlusion"`` or a list -> list of method names (aliases: ig, gs, gradient, gradcam)."""
    aliases = {
        "ig": "integrated_gradients",
        "gs": "gradient_shap",
        "shap": "gradient_shap",
        "grad_cam": "gradcam",
        "layer_gradcam": "gradcam",
        "smoothgrad": "saliency",
    }
    items = value.split(",") if isinstance(value, str) else list(value)
    return [aliases.get(str(m).strip().lower(), str(m).strip().lower()) for m in items if str(m).strip()]


def check_methods(value: list[str]) -> str | None:
    unknown = [m for m in value if m not in METHODS]
    if unknown:
        return f"unknown method {unknown[0]!r}; choose from {', '.join(METHODS)}"
    if not value:
        return "give at least one method"
    return None


def as_switch(value: Any) -> str:
    """true/false/"auto" -> "on"/"off"/"auto"."""
    if isinstance(value, bool):
        return "on" if value else "off"
    return {"true": "on", "false": "off", "1": "on", "0": "off"}.get(str(value).lower(), str(value).lower())


def as_bool(value: Any) -> bool:
    if isinstance(value, str):
        return value.strip().lower() in ("1", "true", "yes", "on")
    return bool(value)


def _positive(v: Any) -> str | None:
    return None if v > 0 else "must be a positive number"


def _not_negative(v: Any) -> str | None:
    return None if v >= 0 else "must be 0 (automatic) or positive"


def _percent(v: Any) -> str | None:
    return None if 0 < v <= 100 else "must be a percentage in (0, 100]"


OPTIONS: dict[str, Option] = {
    "methods": Option(
        list(METHODS),
        "Captum methods to run, a list or 'a,b': " + ", ".join(METHODS),
        type=as_methods,
        check=check_methods,
    ),
    "target": Option("self", TARGET_HELP, type=str, check=check_target),
    "baseline": Option(
        "blurred", "baseline for IG, GradientShap, Occlusion and RCDM occlusion", type=str, choices=BASELINES
    ),
    "blur_sigma": Option(
        0.0, "sigma in pixels of the blurred baseline; 0 = image side / 8", type=float, check=_not_negative
    ),
    "n_images": Option(8, "attribute the first N images of the run (0 = all)", type=int, check=_not_negative),
    "n_samples": Option(
        0, "RCDM samples per condition (0 = the run's n_samples)", type=int, check=_not_negative
    ),
    "ig_steps": Option(32, "IntegratedGradients steps (n_steps)", type=int, check=_positive),
    "internal_batch_size": Option(
        16, "IG: forward/backward passes at once (memory bound)", type=int, check=_positive
    ),
    "delta_warn": Option(
        0.1, "warn when |IG delta| / |f(x) - f(baseline)| exceeds this", type=float, check=_positive
    ),
    "gradient_shap_samples": Option(16, "GradientShap random samples", type=int, check=_positive),
    "gradient_shap_batch": Option(
        8, "GradientShap samples per chunk (memory bound)", type=int, check=_positive
    ),
    "gradient_shap_stdev": Option(
        0.05, "GradientShap input noise (pixels in [0, 1])", type=float, check=_not_negative
    ),
    "noise_tunnel": Option(
        "auto",
        "SmoothGrad for Saliency and GradCam: on, off, or auto (on for target=self, "
        "where the cosine's gradient vanishes at x' = x)",
        type=as_switch,
        choices=("auto", "on", "off"),
    ),
    "nt_samples": Option(8, "noisy copies per image for SmoothGrad", type=int, check=_positive),
    "nt_stdev": Option(0.1, "SmoothGrad noise std (pixels in [0, 1])", type=float, check=_positive),
    "nt_samples_batch_size": Option(4, "noisy copies at once (memory bound)", type=int, check=_positive),
    "gradcam_layer": Option(
        "auto",
        "encoder module for GradCam (e.g. layer4, blocks.10); auto = deepest "
        "spatial layer (for a ViT the block before the last)",
        type=str,
    ),
    "occlusion_patch": Option(
        0, "Captum Occlusion window side in pixels; 0 = image side / 8", type=int, check=_not_negative
    ),
    "occlusion_stride": Option(
        0, "Captum Occlusion stride; 0 = the window side (no overlap)", type=int, check=_not_negative
    ),
    "perturbations_per_eval": Option(
        16, "Occlusion/infidelity perturbations per forward (memory bound)", type=int, check=_positive
    ),
    "rcdm_occlusion": Option(
        True, "compute the occlusion-through-RCDM map (costs patches x samples)", type=as_bool
    ),
    "rcdm_patch": Option(
        0, "RCDM occlusion patch side in pixels; 0 = image side / 4", type=int, check=_not_negative
    ),
    "top_k": Option(10.0, "percent of pixels in the top-k IoU", type=float, check=_percent),
    "infidelity_samples": Option(
        8, "captum infidelity perturbations (0 = skip)", type=int, check=_not_negative
    ),
    "infidelity_noise": Option(
        0.05, "infidelity Gaussian perturbation std (pixels)", type=float, check=_positive
    ),
    "sensitivity_samples": Option(
        3,
        "captum sensitivity_max perturbations (0 = skip; each re-runs the method)",
        type=int,
        check=_not_negative,
    ),
    "sensitivity_radius": Option(0.02, "sensitivity_max L-inf radius (pixels)", type=float, check=_positive),
    "max_figures": Option(4, "panel-row figures per arm (first images)", type=int, check=_not_negative),
}
