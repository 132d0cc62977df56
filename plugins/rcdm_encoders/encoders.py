"""One Encoder class for every network: a trunk (torchvision / timm / open_clip module), optional head, layers.

``features(x, names)`` never runs further than it must: block features are captured with forward hooks and,
when no pooled output is asked for, the forward pass is stopped right after the deepest block needed; the
head runs only for ``projector`` / ``projector_bn``.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

import rcdm_core as rc
from rcdm_core.errors import ConfigError

POOLED = ("backbone", "projector", "projector_bn")


class EncoderNet(nn.Module):
    """Container whose state dict is ``backbone.*`` (+ ``projector.*``, ``projector_bn.*``)."""

    def __init__(
        self, backbone: nn.Module, projector: nn.Module | None = None, projector_bn: nn.Module | None = None
    ):
        super().__init__()
        self.backbone = backbone
        self.projector = projector
        self.projector_bn = projector_bn

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.backbone(x)


class _Stop(Exception):
    """Raised from a forward hook once every block asked for has been captured."""


def run_with_hooks(
    module: nn.Module, x: torch.Tensor, paths: Sequence[str], stop_early: bool
) -> tuple[torch.Tensor | None, dict[str, torch.Tensor]]:
    """Run ``module(x)`` capturing the outputs of the submodules at ``paths``.

    With ``stop_early`` the pass ends as soon as all are captured (returns None for the module output).
    """
    modules = dict(module.named_modules())
    got: dict[str, torch.Tensor] = {}
    wanted = set(paths)

    def make(path: str):
        def hook(_mod, _inp, out):
            got[path] = out
            if stop_early and wanted <= set(got):
                raise _Stop

        return hook

    handles = [modules[p].register_forward_hook(make(p)) for p in wanted]
    try:
        result = module(x)
    except _Stop:
        result = None
    finally:
        for h in handles:
            h.remove()
    return result, got


class NetEncoder(rc.Encoder):
    """An encoder over ``EncoderNet``; ``blocks`` maps a block name (``layer2``, ``blocks.3``) to its module path
    inside the trunk. ``probe_size`` is the input side used once to measure layer dimensions.
    """

    def __init__(
        self,
        name: str,
        net: EncoderNet,
        blocks: dict[str, str],
        *,
        input_size: int = 224,
        mean: tuple[float, float, float] | None = (0.485, 0.456, 0.406),
        std: tuple[float, float, float] | None = (0.229, 0.224, 0.225),
        resize_mode: str = "bicubic",
        meta: dict[str, Any] | None = None,
        random_weights: bool = False,
        probe_size: int | None = None,
        transformer: bool = False,
        trunk_dims: dict[str, int] | None = None,
    ):
        self.name = name
        self.module = net.eval()  # encoders are read, not trained: BatchNorm uses its running statistics
        self.blocks = dict(blocks)
        self.input_size = input_size
        self.mean, self.std = mean, (std if mean is not None else None)
        self.resize_mode = resize_mode
        self.meta = dict(meta or {})
        self.random_weights = random_weights
        self.probe_size = probe_size or input_size
        self.transformer = transformer
        self._dims: dict[str, int] | None = self._known_dims(trunk_dims) if trunk_dims else None

    def _known_dims(self, trunk_dims: dict[str, int]) -> dict[str, int]:
        """Dimensions without a forward pass: the trunk's given, the head's read from its last Linear."""
        dims = {"backbone": trunk_dims["backbone"]}
        if self.module.projector is not None:
            last = [m for m in self.module.projector.modules() if isinstance(m, nn.Linear)][-1]
            dims["projector"] = last.out_features
            if self.module.projector_bn is not None:
                dims["projector_bn"] = last.out_features
        dims.update({f"block:{b}": trunk_dims[b] for b in self.blocks})
        return dims

    # ---- layers ---------------------------------------------------------------------------------------------
    def layers(self) -> dict[str, int]:
        """{feature name: dim}: backbone, projector / projector_bn when present, block:NAME (channels or width).

        Measured once by a forward pass at ``probe_size`` unless the builder gave the trunk's dimensions.
        """
        if self._dims is None:
            names = [n for n in POOLED if self._has(n)] + [f"block:{b}" for b in self.blocks]
            was = self.module.training
            self.module.eval()
            try:
                with torch.no_grad():
                    x = torch.zeros(1, 3, self.probe_size, self.probe_size, device=self.device)
                    feats = self.features(x, names, _check=False)
            finally:
                self.module.train(was)
            self._dims = {n: int(f.shape[-1] if f.ndim == 3 else f.shape[1]) for n, f in feats.items()}
        return dict(self._dims)

    def _has(self, name: str) -> bool:
        return name == "backbone" or getattr(self.module, name, None) is not None

    def no_head_message(self) -> str:
        src = self.meta.get("weights") or "(random weights)"
        return (
            f"encoder {self.name} loaded from {src} ({self.meta.get('layout', 'no head')}) holds no projector head: "
            f"the file is a backbone-only release; use --layer backbone or give a full checkpoint with the head"
        )

    def check_names(self, names: Sequence[str]) -> None:
        known = set(self.layers())
        for n in names:
            if n in known:
                continue
            if n in ("projector", "projector_bn") and not self._has("projector"):
                raise ConfigError(self.no_head_message())
            raise ConfigError(f"encoder {self.name} has no layer {n!r}; layers: {', '.join(self.layers())}")

    # ---- forward ----------------------------------------------------------------------------------------------
    def features(
        self, x: torch.Tensor, layers: Sequence[str], _check: bool = True
    ) -> dict[str, torch.Tensor]:
        """x: preprocessed (N, 3, S, S) -> {name: tensor}; blocks (N, C, h, w) or (N, T, D) with cls first,
        backbone (N, D), projector (N, P), projector_bn (N, P)."""
        names = list(dict.fromkeys(layers))
        if _check:
            self.check_names(names)
        paths = {n: self.blocks[n.removeprefix("block:")] for n in names if n.startswith("block:")}
        pooled_needed = any(n in POOLED for n in names)
        if paths:
            pooled, got = run_with_hooks(
                self.module.backbone, x, list(paths.values()), stop_early=not pooled_needed
            )
        else:
            pooled, got = self.module.backbone(x), {}
        out = {n: _first(got[p]) for n, p in paths.items()}
        if pooled_needed:
            out["backbone"] = pooled
            if "projector" in names or "projector_bn" in names:
                out["projector"] = self.module.projector(pooled)
            if "projector_bn" in names:
                out["projector_bn"] = self.module.projector_bn(out["projector"])
        return {n: out[n] for n in names}


def _first(out: Any) -> torch.Tensor:
    # some blocks return tuples (attention weights); the features are the first item
    return out[0] if isinstance(out, (tuple, list)) else out


def warn_random(name: str) -> None:
    """The loud warning every encoder built without weights prints."""
    print(
        f"rcdm: WARNING: encoder {name} has RANDOM weights (no --weights given); its representations mean nothing "
        f"beyond testing",
        file=sys.stderr,
    )
