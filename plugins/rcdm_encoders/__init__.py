"""First-party rcdm plugin rcdm_encoders: SSL encoders, their heads, official checkpoint readers, SSL objectives
and the small SSL models trained by ``rcdm train-encoder``.

Encoders: ``simclr-resnet50``, ``dino-resnet50``, ``dino-vits16``, ``dino-vitb16`` (``NAME:student`` reads DINO's
student instead of its teacher), ``vicreg-resnet50``, ``barlow-twins-resnet50``, ``supervised-resnet50``,
``clip:MODEL`` (open_clip), ``timm:MODEL`` (any timm model as a backbone) and ``ssl-small``.
"""

from __future__ import annotations

import rcdm_core as rc

from . import factories as F

_SUMMARIES = {
    "simclr-resnet50": "SimCLR ResNet-50 (VISSL, TF-converted v1, Spijkervet); head 2048-2048-128",
    "dino-resnet50": "DINO ResNet-50 (backbone-only or full teacher/student); head bottleneck 256",
    "dino-vits16": "DINO ViT-S/16 (timm vit_small_patch16_224); head bottleneck 256",
    "dino-vitb16": "DINO ViT-B/16 (timm vit_base_patch16_224); head bottleneck 256",
    "vicreg-resnet50": "VICReg ResNet-50 (resnet50.pth or fullckpt); projector 8192-8192-8192",
    "barlow-twins-resnet50": "Barlow Twins ResNet-50 (official or VISSL); projector 8192 x3, loss bn as projector_bn",
    "supervised-resnet50": "torchvision supervised ResNet-50 (fc ignored); no head",
}


@rc.hookimpl
def rcdm_encoders():
    records = []
    for name, summary in _SUMMARIES.items():
        records.append(rc.EncoderRecord(name=name, factory=F.named_factory(name), summary=summary))
        if F.SPECS[name].method == "dino":
            records.append(
                rc.EncoderRecord(
                    name=name + ":",
                    factory=F.named_factory(name),
                    summary=f"{name}:teacher|student — which DINO network to read",
                )
            )
    records += [
        rc.EncoderRecord(
            name="clip:", factory=F.build_clip, summary="open_clip image tower, e.g. clip:ViT-B-32"
        ),
        rc.EncoderRecord(
            name="timm:", factory=F.build_timm, summary="any timm model as a backbone, e.g. timm:resnet18"
        ),
        rc.EncoderRecord(
            name="ssl-small",
            factory=F.build_small,
            summary="small ResNet for 32-64 px trained by rcdm train-encoder",
        ),
    ]
    return records


@rc.hookimpl
def rcdm_commands():
    try:
        from .train import COMMAND
    except ImportError:  # the training command needs rcdm_core.training / augment
        return []
    return [COMMAND]
