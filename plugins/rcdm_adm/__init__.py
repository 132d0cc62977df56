"""First-party rcdm plugin ``rcdm_adm``: the ADM UNet denoiser (``adm``), state-dict compatible with the released
RCDMs, and the ``rcdm inspect`` command."""

from __future__ import annotations

import rcdm_core as rc

from .inspect_cmd import COMMAND as INSPECT_COMMAND
from .loading import build, detect
from .unet import ADMUNet

__all__ = ["ADMUNet", "build", "detect"]


@rc.hookimpl
def rcdm_denoisers():
    return [
        rc.DenoiserRecord(
            name="adm",
            factory=build,
            summary="ADM UNet with representation conditioning (ssl_emb), as the released RCDMs",
            detect=detect,
        )
    ]


@rc.hookimpl
def rcdm_commands():
    return [INSPECT_COMMAND]
