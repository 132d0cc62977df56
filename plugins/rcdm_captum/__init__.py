"""First-party rcdm plugin rcdm_captum: the ``attribution`` probe (RCDM maps vs Captum attributions)."""

from __future__ import annotations

import rcdm_core as rc

from .options import OPTIONS
from .probe import AttributionProbe


@rc.hookimpl
def rcdm_probes():
    return [
        rc.ProbeRecord(
            name="attribution",
            factory=AttributionProbe,
            summary="Captum attributions (IG, GradientShap, Saliency, Occlusion, GradCam) vs RCDM maps "
            "(sample std, occlusion through RCDM): Spearman, top-k IoU, infidelity, sensitivity",
            options=OPTIONS,
        )
    ]
