"""First-party samplers: ``ddpm`` (ancestral, learned-range variance), ``ddim`` and ``dpm-solver++``.

Sampler strings: ``ddpm:100``, ``ddim:25,eta=0``, ``dpm-solver++:20,order=2``, each with optional
``spacing=even|ddim|leading|trailing`` and ``clip_denoised=true|false``; the official respacing strings alone
(``100``, ``ddim25``, ``10,15,20``) mean ancestral DDPM over that spacing (see ``rc.parse_sampler_spec``).
"""

from __future__ import annotations

import rcdm_core as rc

from .base import ACCEPTED_FORMS, BaseSampler
from .samplers import DDIMSampler, DDPMSampler, DPMSolverPPSampler
from .spacing import SPACINGS, kept_timesteps

__all__ = [
    "BaseSampler",
    "DDPMSampler",
    "DDIMSampler",
    "DPMSolverPPSampler",
    "kept_timesteps",
    "ACCEPTED_FORMS",
]

_COMMON = {
    "spacing": rc.Option(
        "even",
        "which timesteps: even (official 'N'), ddim (official 'ddimN'), leading, trailing",
        choices=SPACINGS,
    ),
    "clip_denoised": rc.Option(True, "clamp the predicted x0 to [-1, 1] at every step"),
    "precision": rc.Option("fp32", "autocast dtype around the denoiser", choices=("fp32", "bf16", "fp16")),
    "compile": rc.Option(False, "torch.compile the denoiser"),
    "channels_last": rc.Option(False, "run the denoiser in channels_last memory format"),
}


@rc.hookimpl
def rcdm_samplers():
    return [
        rc.SamplerRecord(
            "ddpm",
            DDPMSampler,
            "ancestral DDPM over the respaced schedule with the learned-range variance (the official sampler)",
            options=dict(_COMMON),
        ),
        rc.SamplerRecord(
            "ddim",
            DDIMSampler,
            "DDIM, epsilon re-derived from the clipped x0; eta=0 deterministic",
            options={
                **_COMMON,
                "eta": rc.Option(0.0, "noise scale: 0 deterministic, 1 DDPM-like", type=float),
            },
        ),
        rc.SamplerRecord(
            "dpm-solver++",
            DPMSolverPPSampler,
            "DPM-Solver++ multistep (2M, or 3M with order=3), data prediction",
            options={**_COMMON, "order": rc.Option(2, "solver order 1, 2 or 3", type=int, choices=(1, 2, 3))},
        ),
    ]
