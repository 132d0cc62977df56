"""Typed records that plugins register and that components exchange (attrs classes)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import attrs


@attrs.frozen
class Option:
    """One option a plugin declares; config keys that no plugin declared are rejected.

    ``type`` converts the raw value (from TOML or ``--opt name.key=value``); ``check`` returns an error message or
    None; ``choices`` limits the value.
    """

    default: Any
    help: str = ""
    type: Callable[[Any], Any] | None = None
    choices: tuple | None = None
    check: Callable[[Any], str | None] | None = None


@attrs.frozen
class _Registration:
    name: str
    factory: Callable[..., Any]
    summary: str = ""
    options: dict[str, Option] = attrs.field(factory=dict)
    # A name ending in ":" is a prefix: "clip:" serves "clip:ViT-B-32" and gets the rest as its argument.


@attrs.frozen
class EncoderRecord(_Registration):
    """``factory(arg: str | None, weights: str | None, trust_checkpoint: bool) -> Encoder``."""


@attrs.frozen
class LayerSelectorRecord(_Registration):
    """``factory() -> LayerSelector``; ``name`` is the first word of a layer spec (``backbone``, ``block``)."""


@attrs.frozen
class DenoiserRecord(_Registration):
    """``factory(**flags) -> ConditionalDenoiser``; ``load(state_dict, flags) -> ConditionalDenoiser`` optional."""

    detect: Callable[[dict], bool] | None = None


@attrs.frozen
class SamplerRecord(_Registration):
    """``factory(steps: str | None, **keys) -> Sampler``; the sampler string is ``name:steps,key=value``."""


@attrs.frozen
class ProbeRecord(_Registration):
    """``factory(**options) -> Probe``."""

    needs_reference: bool = False


@attrs.frozen
class DataSourceRecord(_Registration):
    """``factory(arg: str, **options) -> DataSource``; the spec is ``name:arg`` (``folder:/path``)."""


@attrs.frozen
class CommandRecord:
    """A CLI subcommand: ``add_arguments(parser)`` then ``run(args) -> int`` (the exit code)."""

    name: str
    help: str
    add_arguments: Callable[[Any], None]
    run: Callable[[Any], int]
    description: str = ""
    example: str = ""


@attrs.define
class Arm:
    """One named combination to study: encoder + weights + layer + input_norm + denoiser checkpoint."""

    name: str
    encoder: str
    layer: str = "backbone"
    weights: str | None = None
    input_norm: str = "own"
    checkpoint: str | None = None


@attrs.define
class ProbeResult:
    """What a probe returns: JSON-able metrics, written figure paths (relative to the run folder) and a line."""

    metrics: dict[str, Any] = attrs.field(factory=dict)
    figures: list[str] = attrs.field(factory=list)
    summary: str = ""
    tables: list[dict[str, Any]] = attrs.field(factory=list)
    notes: list[str] = attrs.field(factory=list)


@attrs.define
class Features:
    """A representation file's content (``rcdm encode``): ids, features (N, D) and meta."""

    ids: list[str]
    features: Any
    meta: dict[str, Any]

    def save(self, path: str | Path) -> None:
        from .io import atomic_torch_save

        atomic_torch_save({"ids": list(self.ids), "features": self.features, "meta": dict(self.meta)}, path)
