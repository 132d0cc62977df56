"""What ``rcdm demo`` runs, and why these numbers.

Budget: the whole demo in under 3 minutes on 2 CPU cores. Measured: 1 min 38 s wall (90 s in the probes:
samples 8, invariance 33, interpolation 10, manipulation 17, attribution 22; the rest is start-up) on the
2-core machine it was made on. Sampling dominates (each sample costs one UNet call per sampler step), so the
counts below are chosen from the denoiser calls the probes make per arm:

- sampler ``ddpm:20,spacing=leading``: ancestral DDPM (learned variances) with 20 denoiser calls over the
  steps 0, 50, ..., 950. Starting below 999 matters for these small CPU-trained models: under the cosine
  schedule alphabar(999) is 2e-9, so a first step there multiplies the model's epsilon error by ~20000 and
  its x0 estimate comes out as clipped noise (saturated colour, whatever the condition). On the shipped
  weights (the model cards' protocol: 32 held-out patches x 2 samples among 288 candidates) the mean rank of
  the source was 36 / 39 (backbone / projector arm) with ddpm:20 leading, 36 / 35 with ddpm:25, 35 / 37 with
  ddim:20 eta=1 and 58 / 59 with the deterministic dpm-solver++:20 (all leading): the fresh noise of the stochastic
  samplers washes out the small models' errors, so the cheapest of them is the demo's;
- images: 8 held-out photo patches (photos never seen in training), 4 samples each, seed 0; reference set
  (faithfulness ranking, manipulation neighbours, fidelity) = 512 training patches;
- invariance: grayscale, colour jitter, flip and crop (findings 1 and 2); interpolation: 2 pairs x 6 points;
- attribution: IntegratedGradients (16 steps), Saliency (SmoothGrad), Occlusion and GradCam on 2 images, and
  the occlusion-through-RCDM map on 8 px patches (16 patches x 2 samples per image).

``--fast`` (used by the tests) keeps every probe and figure but cuts the counts to the bone.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import attrs

from rcdm_core.config import RunConfig, build_config

WEIGHTS_DIR = Path(__file__).resolve().parent / "weights"
ENCODER_FILE = "ssl_small_simclr.pt"
ARM_FILES = {"backbone": "rcdm_backbone.pt", "projector": "rcdm_projector.pt"}

# Training patches: whole-resolution photos plus 1/2 and 1/4 downscales (more object-like 32 px patches).
TRAIN_DATA = "builtin:photos?split=train&size=32&scales=1,0.5,0.25"
# The demo's images: patches of the three held-out photos (a cat, a coffee cup, a flower), downscaled so a
# 32 px patch shows a recognisable part of the scene.
HELDOUT_DATA = "builtin:photos?split=heldout&size=32&scales=0.5,0.25"

PROBES = ["samples", "invariance", "faithfulness", "interpolation", "manipulation", "fidelity", "attribution"]


@attrs.frozen
class DemoSettings:
    """The counts of one demo setting (see the module docstring)."""

    sampler: str
    n_images: int
    n_samples: int
    reference_limit: int
    augmentations: tuple[str, ...]
    interpolation_steps: int
    interpolation_pairs: int
    attribution: dict[str, Any]


FULL = DemoSettings(
    sampler="ddpm:20,spacing=leading",
    n_images=8,
    n_samples=4,
    reference_limit=512,
    augmentations=("grayscale", "color_jitter", "flip", "crop"),
    interpolation_steps=6,
    interpolation_pairs=2,
    attribution={
        "methods": ["integrated_gradients", "saliency", "occlusion", "gradcam"],
        "n_images": 2,
        "n_samples": 2,
        "ig_steps": 16,
        "rcdm_patch": 8,
        "infidelity_samples": 4,
        "sensitivity_samples": 0,
        "max_figures": 2,
    },
)

FAST = DemoSettings(
    sampler="ddim:2,spacing=leading",
    n_images=3,
    n_samples=2,
    reference_limit=24,
    augmentations=("grayscale", "color_jitter"),
    interpolation_steps=3,
    interpolation_pairs=1,
    attribution={
        "methods": ["integrated_gradients", "saliency", "occlusion", "gradcam"],
        "n_images": 1,
        "n_samples": 2,
        "ig_steps": 4,
        "nt_samples": 2,
        "rcdm_patch": 16,
        "infidelity_samples": 2,
        "sensitivity_samples": 0,
        "max_figures": 1,
    },
)


def weight_paths(weights_dir: str | Path = WEIGHTS_DIR) -> tuple[Path, dict[str, Path]]:
    """(encoder file, {arm: RCDM file}) inside ``weights_dir``."""
    d = Path(weights_dir)
    return d / ENCODER_FILE, {arm: d / f for arm, f in ARM_FILES.items()}


def demo_raw(
    out: str | Path,
    weights_dir: str | Path = WEIGHTS_DIR,
    settings: DemoSettings = FULL,
    device: str = "auto",
    seed: int = 0,
    progress: bool = True,
) -> dict[str, Any]:
    """The demo's run config as the dict a run.toml would hold (what ``build_config`` takes)."""
    encoder, arms = weight_paths(weights_dir)
    s = settings
    return {
        "data": HELDOUT_DATA,
        "reference": f"{TRAIN_DATA}&limit={s.reference_limit}",
        "sampler": s.sampler,
        "seed": seed,
        "n_images": s.n_images,
        "n_samples": s.n_samples,
        "batch_size": 64,
        "device": device,
        "out": str(out),
        "progress": progress,
        "probes": list(PROBES),
        "arm": [
            {
                "name": arm,
                "encoder": "ssl-small",
                "weights": str(encoder),
                "layer": arm,
                "checkpoint": str(ckpt),
            }
            for arm, ckpt in arms.items()
        ],
        "probe": {
            "invariance": {"augmentations": list(s.augmentations), "figure_images": min(4, s.n_images)},
            "interpolation": {
                "steps": s.interpolation_steps,
                "max_pairs": s.interpolation_pairs,
                "mode": "both",
            },
            "manipulation": {"k": 20, "n": 14, "figure_images": min(4, s.n_images)},
            "attribution": dict(s.attribution),
        },
    }


def demo_config(out: str | Path, **kwargs: Any) -> RunConfig:
    """:func:`demo_raw` validated into a RunConfig."""
    return build_config(demo_raw(out, **kwargs), source="rcdm demo")
