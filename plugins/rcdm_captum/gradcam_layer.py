"""Choosing the GradCam layer, and viewing a transformer block's patch tokens as a (N, D, h, w) map."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import torch
from torch import nn

from rcdm_core.errors import ConfigError


def _is_block(name: str, root: nn.Module) -> bool:
    """A module that is one item of a Sequential/ModuleList (``blocks.3``, ``layer4.1``)."""
    parent, _, child = name.rpartition(".")
    if not child.isdigit():
        return False
    owner = root.get_submodule(parent) if parent else root
    return isinstance(owner, (nn.Sequential, nn.ModuleList))


def _token_layout(shape: tuple[int, ...], n: int) -> str | None:
    """'nld' for (N, T, D) tokens, 'lnd' for (T, N, D) (older open_clip), None when not token-shaped."""
    if len(shape) != 3:
        return None
    if shape[0] == n and shape[1] > 1:
        return "nld"
    if shape[1] == n and shape[0] > 1:
        return "lnd"
    return None


def trace_outputs(root: nn.Module, run: Callable[[], object], n: int) -> list[tuple[str, tuple[int, ...]]]:
    """(name, output shape) of every named submodule, in the order their forwards finished, for one ``run()``."""
    events: list[tuple[str, tuple[int, ...]]] = []
    handles = []
    for name, mod in root.named_modules():
        if not name:
            continue

        def hook(_m, _i, out, name=name):
            if isinstance(out, torch.Tensor):
                events.append((name, tuple(out.shape)))

        handles.append(mod.register_forward_hook(hook))
    try:
        with torch.no_grad():
            run()
    finally:
        for h in handles:
            h.remove()
    return events


def choose_layer(root: nn.Module, events: list[tuple[str, tuple[int, ...]]], n: int) -> str:
    """The deepest spatial layer: the last conv-like output (N, C, h, w) with h, w >= 2, or a transformer
    block (N, T, D). For blocks it takes the one before the last, because with a class-token readout the last
    block's patch tokens never reach the representation (their gradient is zero)."""
    cands: list[tuple[str, str]] = []
    for name, shape in events:
        if len(shape) == 4 and shape[0] == n and shape[2] >= 2 and shape[3] >= 2:
            cands.append((name, "conv"))
        elif _token_layout(shape, n) and _is_block(name, root):
            cands.append((name, "tokens"))
    if not cands:
        raise ConfigError(
            "attribution: no layer with a spatial output was found for GradCam; set gradcam_layer to a module "
            "name of the encoder, or leave gradcam out of methods"
        )
    name, kind = cands[-1]
    if kind == "tokens":
        tokens = [c for c, k in cands if k == "tokens"]
        if len(tokens) >= 2:
            name = tokens[-2]
    return name


class TokensAsGrid(nn.Module):
    """Wraps a transformer block: its patch tokens (prefix tokens such as [CLS] left out) pass through
    ``self.grid`` (an Identity) shaped (N, D, h, w), so a layer method attributes over the image, not over D."""

    def __init__(self, block: nn.Module, n_prefix: int, layout: str = "nld"):
        super().__init__()
        self.block = block
        self.n_prefix = n_prefix
        self.layout = layout
        self.grid = nn.Identity()

    def forward(self, *args, **kwargs):
        out = self.block(*args, **kwargs)
        if not isinstance(out, torch.Tensor):
            raise ConfigError(
                "attribution: the GradCam block returns a tuple; choose a block that returns tokens"
            )
        t = out.transpose(0, 1) if self.layout == "lnd" else out
        prefix, patches = t[:, : self.n_prefix], t[:, self.n_prefix :]
        n, count, dim = patches.shape
        side = math.isqrt(count)
        grid = self.grid(patches.transpose(1, 2).reshape(n, dim, side, count // side))
        t = torch.cat([prefix, grid.flatten(2).transpose(1, 2)], dim=1)
        return t.transpose(0, 1) if self.layout == "lnd" else t


def prefix_tokens(root: nn.Module, count: int) -> int:
    """Number of non-patch tokens: the model's ``num_prefix_tokens`` (timm) or what exceeds a square grid."""
    declared = getattr(root, "num_prefix_tokens", None)
    if isinstance(declared, int):
        return declared
    side = math.isqrt(count)
    return count - side * side


@contextmanager
def gradcam_target(root: nn.Module, name: str, shape: tuple[int, ...], n: int) -> Iterator[nn.Module]:
    """Yields the module to give LayerGradCam: ``name`` itself for a conv output, or for a transformer block
    the grid view of its patch tokens, installed in place of the block until the block ends."""
    try:
        layer = root.get_submodule(name)
    except AttributeError:
        raise ConfigError(
            f"attribution option gradcam_layer={name!r}: the encoder has no such module"
        ) from None
    if len(shape) == 4:
        yield layer
        return
    layout = _token_layout(shape, n)
    if layout is None:
        raise ConfigError(
            f"attribution option gradcam_layer={name!r}: output shape {shape} is neither (N, C, h, w) nor tokens"
        )
    count = shape[1] if layout == "nld" else shape[0]
    n_prefix = prefix_tokens(root, count)
    side = math.isqrt(count - n_prefix)
    if side * side != count - n_prefix:
        raise ConfigError(
            f"attribution option gradcam_layer={name!r}: {count - n_prefix} patch tokens do not form a square grid"
        )
    parent_name, _, child = name.rpartition(".")
    parent = root.get_submodule(parent_name) if parent_name else root
    wrapper = TokensAsGrid(layer, n_prefix, layout)
    setattr(parent, child, wrapper)
    try:
        yield wrapper.grid
    finally:
        setattr(parent, child, layer)
