"""First-party rcdm plugin rcdm_layers: layer selectors ``backbone``, ``projector``, ``projector_bn`` and
``block:NAME[:avg|:cls]``.

``block:NAME`` on a convolutional stage (N, C, h, w) is the spatial mean (same as ``:avg``); on a transformer
block (N, T, D) it is the class token (same as ``:cls``); ``:avg`` there is the mean of the patch tokens
without the class token.
"""

from __future__ import annotations

import torch

import rcdm_core as rc
from rcdm_core.errors import ConfigError

POOLINGS = ("avg", "cls")


def _layers_text(encoder: rc.Encoder) -> str:
    return ", ".join(f"{n} ({d})" for n, d in encoder.layers().items())


def _no_head(encoder: rc.Encoder, spec: str) -> str:
    note = getattr(encoder, "no_head_message", None)
    if note is not None:
        return note()
    return f"encoder {encoder.name} has no projector head, so layer {spec!r} does not exist; use --layer backbone"


class NamedSelector(rc.LayerSelector):
    """``backbone``, ``projector`` or ``projector_bn``: the encoder's vector output of that name."""

    def __init__(self, name: str):
        self.name = name

    def feature_name(self, spec: str, encoder: rc.Encoder) -> str:
        if spec != self.name:
            raise ConfigError(
                f"layer {spec!r}: {self.name} takes no options; layers: {_layers_text(encoder)}"
            )
        if self.name not in encoder.layers():
            if self.name.startswith("projector"):
                raise ConfigError(_no_head(encoder, spec))
            raise ConfigError(
                f"encoder {encoder.name} has no layer {spec!r}; layers: {_layers_text(encoder)}"
            )
        return self.name

    def reduce(self, spec: str, feature: torch.Tensor) -> torch.Tensor:
        """feature (N, D) -> (N, D)."""
        return feature.flatten(1)

    def dim(self, spec: str, encoder: rc.Encoder) -> int:
        return encoder.layers()[self.feature_name(spec, encoder)]

    def names(self, encoder: rc.Encoder) -> dict[str, int]:
        layers = encoder.layers()
        return {self.name: layers[self.name]} if self.name in layers else {}


def parse_block(spec: str) -> tuple[str, str | None]:
    """``block:layer2:avg`` -> ("layer2", "avg"); ``block:blocks.3`` -> ("blocks.3", None)."""
    rest = spec.removeprefix("block:")
    if rest == spec or not rest:
        raise ConfigError(f"layer {spec!r}: write block:NAME, block:NAME:avg or block:NAME:cls")
    name, sep, pool = rest.rpartition(":")
    if sep and pool in POOLINGS:
        return name, pool
    if sep:
        raise ConfigError(f"layer {spec!r}: pooling must be one of {', '.join(POOLINGS)}, got {pool!r}")
    return rest, None


class BlockSelector(rc.LayerSelector):
    """``block:NAME[:avg|:cls]``: a ResNet stage (N, C, h, w) or ViT block (N, T, D) pooled to (N, D)."""

    def feature_name(self, spec: str, encoder: rc.Encoder) -> str:
        name, _ = parse_block(spec)
        feature = f"block:{name}"
        if feature not in encoder.layers():
            raise ConfigError(
                f"encoder {encoder.name} has no layer {spec!r}; layers: {_layers_text(encoder)}"
            )
        return feature

    def reduce(self, spec: str, feature: torch.Tensor) -> torch.Tensor:
        """(N, C, h, w) -> spatial mean (N, C); (N, T, D) -> class token (``cls``, default) or mean of tokens 1.."""
        _, pool = parse_block(spec)
        if feature.ndim == 4:
            if pool == "cls":
                raise ConfigError(f"layer {spec!r}: a convolutional block has no class token; use :avg")
            return feature.mean(dim=(2, 3))
        if feature.ndim == 3:
            return feature[:, 1:].mean(dim=1) if pool == "avg" else feature[:, 0]
        return feature.flatten(1)

    def dim(self, spec: str, encoder: rc.Encoder) -> int:
        return encoder.layers()[self.feature_name(spec, encoder)]

    def names(self, encoder: rc.Encoder) -> dict[str, int]:
        out: dict[str, int] = {}
        tokens = bool(getattr(encoder, "transformer", False))
        for n, d in encoder.layers().items():
            if n.startswith("block:"):
                out[n] = d
                out[f"{n}:avg"] = d
                if tokens:
                    out[f"{n}:cls"] = d
        return out


@rc.hookimpl
def rcdm_layer_selectors():
    return [
        rc.LayerSelectorRecord(
            name="backbone",
            factory=lambda: NamedSelector("backbone"),
            summary="global pooled trunk output (N, D)",
        ),
        rc.LayerSelectorRecord(
            name="projector",
            factory=lambda: NamedSelector("projector"),
            summary="projector head output (DINO: the 256-d bottleneck)",
        ),
        rc.LayerSelectorRecord(
            name="projector_bn",
            factory=lambda: NamedSelector("projector_bn"),
            summary="Barlow Twins: the projector through the loss's BatchNorm",
        ),
        rc.LayerSelectorRecord(
            name="block",
            factory=BlockSelector,
            summary="block:NAME[:avg|:cls] — a ResNet stage or ViT block, pooled",
        ),
    ]
