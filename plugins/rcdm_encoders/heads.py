"""Projector heads as plain ``nn.Sequential`` whose state-dict keys are the official ones.

A head is described by a list of :class:`HeadLayer` (linear, batch norm, activation) so the same description
is read from a checkpoint (widths from the file) or written down for random weights at the official widths.
Two key styles exist in the wild: flat (``0.weight``, ``1.running_mean``, ``3.weight`` — VICReg, Barlow Twins,
DINO ``mlp``, Spijkervet) where activations sit in the index gaps, and VISSL (``0.clf.0.weight``,
``1.clf.0.weight``) where each stage is a module holding a ``clf`` Sequential and the activation closes a stage.
"""

from __future__ import annotations

import attrs
import torch
from torch import nn

from rcdm_core.errors import CheckpointError


@attrs.frozen
class HeadLayer:
    """``kind``: ``linear`` (in_dim -> out_dim, ``bias``), ``bn`` (BatchNorm1d(out_dim), ``affine``) or ``act``."""

    kind: str
    out_dim: int = 0
    in_dim: int = 0
    bias: bool = True
    affine: bool = True


def linear(in_dim: int, out_dim: int, bias: bool = True) -> HeadLayer:
    return HeadLayer("linear", out_dim, in_dim, bias)


def bn(dim: int, affine: bool = True) -> HeadLayer:
    return HeadLayer("bn", dim, affine=affine)


ACT = HeadLayer("act")


def mlp(
    dims: list[int], bias: bool = True, norm: bool = False, last_bias: bool | None = None
) -> list[HeadLayer]:
    """``[2048, 8192, 8192, 8192]`` -> Linear (+BN) + act between, last Linear alone (the SSL projector shape)."""
    out: list[HeadLayer] = []
    for i in range(len(dims) - 1):
        last = i == len(dims) - 2
        out.append(linear(dims[i], dims[i + 1], bias if not last or last_bias is None else last_bias))
        if not last:
            if norm:
                out.append(bn(dims[i + 1]))
            out.append(ACT)
    return out


def _make(layer: HeadLayer, act: str) -> nn.Module:
    if layer.kind == "linear":
        return nn.Linear(layer.in_dim, layer.out_dim, bias=layer.bias)
    if layer.kind == "bn":
        return nn.BatchNorm1d(layer.out_dim, affine=layer.affine)
    return nn.GELU() if act == "gelu" else nn.ReLU(inplace=False)


def build_flat(layers: list[HeadLayer], act: str) -> nn.Sequential:
    """Flat Sequential: index i of the list is key prefix ``i.``."""
    return nn.Sequential(*[_make(layer, act) for layer in layers])


class VisslStage(nn.Module):
    """One VISSL MLP head stage: its layers live under ``clf`` (keys ``clf.0.weight``...)."""

    def __init__(self, layers: list[HeadLayer], act: str):
        super().__init__()
        self.clf = build_flat(layers, act)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.clf(x)


def build_vissl(stages: list[list[HeadLayer]], act: str) -> nn.Sequential:
    """VISSL heads: Sequential of stages (keys ``{stage}.clf.{i}.*``)."""
    return nn.Sequential(*[VisslStage(s, act) for s in stages])


def _infer_sequence(state: dict[str, torch.Tensor], where: str) -> list[HeadLayer]:
    """Flat keys ``{i}.weight`` ... -> layers; a missing index is a parameter-free activation."""
    indices = sorted({int(k.split(".", 1)[0]) for k in state if k.split(".", 1)[0].isdigit()})
    stray = [k for k in state if not k.split(".", 1)[0].isdigit()]
    if stray or not indices:
        raise CheckpointError(f"{where}: head key {(stray or ['(none)'])[0]!r} is not of the form INDEX.NAME")
    out: list[HeadLayer] = []
    for i in range(indices[-1] + 1):
        if i not in indices:
            out.append(ACT)
            continue
        if f"{i}.running_mean" in state:
            dim = state[f"{i}.running_mean"].shape[0]
            out.append(bn(dim, affine=f"{i}.weight" in state))
        elif f"{i}.weight" in state and state[f"{i}.weight"].ndim == 2:
            w = state[f"{i}.weight"]
            out.append(linear(w.shape[1], w.shape[0], bias=f"{i}.bias" in state))
        else:
            raise CheckpointError(f"{where}: head layer {i} is neither a Linear nor a BatchNorm1d")
    return out


def infer_flat(state: dict[str, torch.Tensor], where: str) -> list[HeadLayer]:
    """Head description read from a flat head state dict (widths from the file)."""
    layers = _infer_sequence(state, where)
    if layers[-1].kind == "act":
        raise CheckpointError(f"{where}: head ends with a gap; keys are missing")
    return layers


def infer_vissl(state: dict[str, torch.Tensor], where: str) -> list[list[HeadLayer]]:
    """VISSL heads ``{stage}.clf.{i}.*`` -> per-stage layers; every stage but the last ends with an activation."""
    stages: dict[int, dict[str, torch.Tensor]] = {}
    for key, value in state.items():
        head, _, rest = key.partition(".")
        if not head.isdigit() or not rest.startswith("clf."):
            raise CheckpointError(f"{where}: VISSL head key {key!r} is not of the form STAGE.clf.INDEX.NAME")
        stages.setdefault(int(head), {})[rest.removeprefix("clf.")] = value
    if sorted(stages) != list(range(len(stages))):
        raise CheckpointError(
            f"{where}: VISSL head stages {sorted(stages)} are not numbered 0..{len(stages) - 1}"
        )
    out = []
    for i in range(len(stages)):
        layers = _infer_sequence(stages[i], where)
        if i < len(stages) - 1:
            layers.append(ACT)  # VISSL's MLP closes each stage with ReLU; it holds no parameters
        out.append(layers)
    return out


def out_dim(layers: list[HeadLayer]) -> int:
    return [layer for layer in layers if layer.kind != "act"][-1].out_dim


def in_dim(layers: list[HeadLayer]) -> int:
    return next(layer for layer in layers if layer.kind == "linear").in_dim
