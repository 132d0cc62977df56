"""Seeded per-sample noise: a sample's noise depends only on (seed, sample id, step).

So a sample does not depend on the batch it was in, the batch size or the number of ranks. Noise is drawn on
the CPU (bitwise identical on every machine) and then moved to the requested device.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

import torch

# Step keys for draws that are not sampler steps.
STEP_INIT = -1  # x_T


def _key(seed: int, sample_id: int, step: int) -> int:
    digest = hashlib.blake2b(
        f"rcdm:{int(seed)}:{int(sample_id)}:{int(step)}".encode(), digest_size=8
    ).digest()
    return int.from_bytes(digest, "little") & ((1 << 63) - 1)


def sample_noise(
    shape: Sequence[int],
    seed: int,
    sample_ids: Sequence[int] | torch.Tensor,
    step: int,
    device: torch.device | str = "cpu",
    dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """Standard normal noise (N, *shape) whose row i is keyed on (seed, sample_ids[i], step)."""
    ids = sample_ids.tolist() if isinstance(sample_ids, torch.Tensor) else list(sample_ids)
    gen = torch.Generator(device="cpu")
    rows = []
    for sid in ids:
        gen.manual_seed(_key(seed, sid, step))
        rows.append(torch.randn(tuple(shape), generator=gen, dtype=torch.float32))
    out = torch.stack(rows) if rows else torch.zeros((0, *shape))
    return out.to(device=device, dtype=dtype)


def default_ids(n: int, sample_ids: Sequence[int] | torch.Tensor | None) -> list[int]:
    if sample_ids is None:
        return list(range(n))
    ids = sample_ids.tolist() if isinstance(sample_ids, torch.Tensor) else list(sample_ids)
    if len(ids) != n:
        raise ValueError(f"sample_ids has {len(ids)} entries for {n} conditions")
    return [int(i) for i in ids]


def seed_everything(seed: int) -> None:
    """Seed python, numpy and torch (CPU and CUDA) for code paths that draw from global generators."""
    import random

    import numpy as np

    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)
