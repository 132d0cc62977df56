"""First-party rcdm plugin: the probes that reproduce the paper's findings, plus faithfulness and fidelity.

Registered through the ``rcdm`` entry-point group like any third-party plugin. Each probe reports per arm
(``metrics = {arm: {...}}``), writes its figures under ``probes/<name>/`` and adds plain-language notes read
from its numbers.
"""

from __future__ import annotations

import rcdm_core as rc

from .adversarial import AdversarialProbe, pgd_linf
from .faithfulness import FaithfulnessProbe
from .fidelity import FidelityProbe, frechet_distance, precision_recall
from .interpolation import InterpolationProbe, lerp, slerp
from .invariance import InvarianceProbe
from .manipulation import ManipulationProbe, common_dimensions
from .samples import SamplesProbe

PROBES = [
    (SamplesProbe, "N samples per image, grids and per-pixel std maps", False),
    (
        InvarianceProbe,
        "r(x) vs r(aug x) for the SSL augmentations: what the samples carry (findings 1, 2)",
        False,
    ),
    (AdversarialProbe, "PGD (L-inf, pixel space) on the representation; samples from it (finding 3)", False),
    (
        ManipulationProbe,
        "official nearest-neighbour manipulation: common dimensions zeroed or swapped (finding 4)",
        True,
    ),
    (
        InterpolationProbe,
        "0..1 sweep between two representations with fixed noise, linear and spherical",
        False,
    ),
    (FaithfulnessProbe, "rank of the source among real images from the samples' representations", False),
    (FidelityProbe, "Fréchet distance, precision/recall; FID with the pytorch-fid Inception weights", False),
]


@rc.hookimpl
def rcdm_probes():
    return [
        rc.ProbeRecord(
            name=cls.name, factory=cls, summary=summary, options=dict(cls.OPTIONS), needs_reference=ref
        )
        for cls, summary, ref in PROBES
    ]


__all__ = [
    "AdversarialProbe",
    "FaithfulnessProbe",
    "FidelityProbe",
    "InterpolationProbe",
    "InvarianceProbe",
    "ManipulationProbe",
    "SamplesProbe",
    "common_dimensions",
    "frechet_distance",
    "lerp",
    "pgd_linf",
    "precision_recall",
    "slerp",
]
