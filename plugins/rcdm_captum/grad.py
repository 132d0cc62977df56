"""Run attributions with gradients on, whatever the caller's mode, and put everything back afterwards.

The mode/grad bookkeeping itself is rcdm_core.grad (shared with the adversarial probe)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import numpy as np
import torch


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
