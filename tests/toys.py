"""Hand-built pieces the tests share: a base for toy samplers that keeps the Sampler interface in one place."""

from __future__ import annotations

import torch

import rcdm_core as rc
from rcdm_core.noise import STEP_INIT, sample_noise


class ToySampler(rc.Sampler):
    """A sampler whose subclasses write only ``draw``; ``sample`` resolves the ids and x_T as real ones do."""

    def sample(
        self,
        denoiser,
        cond,
        *,
        seed=0,
        sample_ids=None,
        x_T=None,
        generator=None,
        progress=True,
        callback=None,
    ):
        ids = list(range(len(cond))) if sample_ids is None else [int(i) for i in sample_ids]
        shape = (3, denoiser.image_size, denoiser.image_size)
        x = sample_noise(shape, seed, ids, STEP_INIT) if x_T is None else x_T
        return self.draw(denoiser, cond, x, seed, ids)

    def draw(
        self, denoiser, cond: torch.Tensor, x_T: torch.Tensor, seed: int, ids: list[int]
    ) -> torch.Tensor:
        raise NotImplementedError
