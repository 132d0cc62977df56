"""Run attributions with gradients on, whatever the caller's mode, and put everything back afterwards."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import numpy as np
import torch
from torch import nn


@contextmanager
def preserved_modes(module: nn.Module) -> Iterator[None]:
    """Restore every submodule's own ``training`` flag on exit (``Module.train(flag)`` elsewhere, e.g. in
    ``Representation.encode``, resets the children to the root's flag)."""
    training = {m: m.training for m in module.modules()}
    try:
        yield
    finally:
        for m, was_training in training.items():
            m.training = was_training


@contextmanager
def attribution_mode(module: nn.Module) -> Iterator[None]:
    """Gradients enabled (even inside ``torch.inference_mode()`` or ``no_grad``), ``module`` in eval mode with
    its parameters frozen (attributions need input gradients only, and frozen weights save the memory of
    parameter gradients); every submodule's ``training`` flag and every parameter's ``requires_grad`` are
    restored on exit, also after an error.

    Tensors made under inference mode cannot be saved for backward: clone them inside this block.
    """
    training = {m: m.training for m in module.modules()}
    flags = {p: p.requires_grad for p in module.parameters()}
    with torch.inference_mode(False), torch.enable_grad():
        try:
            module.eval()
            for p in flags:
                p.requires_grad_(False)
            yield
        finally:
            # Set each flag directly: Module.train() would recurse and overwrite the children's own states.
            for m, was_training in training.items():
                m.training = was_training
            for p, flag in flags.items():
                p.requires_grad_(flag)


@contextmanager
def seeded(seed: int, device: torch.device | None = None) -> Iterator[None]:
    """Seed torch and numpy's global generators for captum's random draws (GradientShap picks baselines with
    numpy, noise with torch) and restore the caller's generator states afterwards."""
    devices = [device] if device is not None and device.type == "cuda" else []
    np_state = np.random.get_state()
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)
        np.random.seed(seed % (2**32))
        try:
            yield
        finally:
            np.random.set_state(np_state)
