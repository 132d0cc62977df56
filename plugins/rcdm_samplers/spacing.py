"""Which original timesteps a sampler visits: ``even`` / ``ddim`` (the official rules) and diffusers'
``leading`` / ``trailing``."""

from __future__ import annotations

import numpy as np

from rcdm_core.diffusion import space_timesteps
from rcdm_core.errors import ConfigError

SPACINGS = ("even", "ddim", "leading", "trailing")


def kept_timesteps(num_steps: int, steps: str, spacing: str = "even") -> list[int]:
    """T and a step string -> the sorted original indices to visit.

    ``even``: the official "N" rule (also comma sections "10,15,20"), any N from 1 to T. ``ddim``: the official
    "ddimN" stride rule. ``leading``: 0, T//N, 2*(T//N), ... ``trailing``: round(T - k*T/N) - 1, k = 0..N-1.
    """
    if spacing == "even":
        return space_timesteps(num_steps, steps)
    if "," in steps:
        raise ConfigError(f"comma-separated step sections ({steps!r}) only work with spacing=even")
    n = int(steps)
    if spacing == "ddim":
        return space_timesteps(num_steps, f"ddim{n}")
    if spacing == "leading":
        return sorted({int(k) * (num_steps // n) for k in range(n)})
    if spacing == "trailing":
        # diffusers' formula, float stride included
        values = np.round(np.arange(num_steps, 0, -num_steps / n)).astype(np.int64) - 1
        return sorted({int(v) for v in values})
    raise ConfigError(f"spacing={spacing!r} is not known; use one of {', '.join(SPACINGS)}")
