"""Mode and gradient bookkeeping for code that differentiates through a frozen encoder (attacks, attributions)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import nn


@contextmanager
def preserved_modes(module: nn.Module) -> Iterator[None]:
    """Restore every submodule's own ``training`` flag on exit.

    ``Module.train(flag)`` recurses and overwrites the children's own states, so each flag is set directly.
    """
    training = {m: m.training for m in module.modules()}
    try:
        yield
    finally:
        for m, was_training in training.items():
            m.training = was_training


@contextmanager
def input_gradient_mode(module: nn.Module) -> Iterator[None]:
    """Gradients enabled (even inside ``torch.inference_mode()`` or ``no_grad``), ``module`` in eval mode with its
    parameters frozen (only input gradients are needed; frozen weights save their gradients' memory). Every
    submodule's ``training`` flag and every parameter's ``requires_grad`` are restored on exit, also after an error.

    Tensors made under inference mode cannot be saved for backward: clone them inside this block.
    """
    flags = {p: p.requires_grad for p in module.parameters()}
    with preserved_modes(module), torch.inference_mode(False), torch.enable_grad():
        try:
            module.eval()
            for p in flags:
                p.requires_grad_(False)
            yield
        finally:
            for p, flag in flags.items():
                p.requires_grad_(flag)
