"""The three samplers: ancestral DDPM (learned-range variance), DDIM (official update), DPM-Solver++ (2M/3M)."""

from __future__ import annotations

import math
from typing import Any

import torch

from rcdm_core.diffusion import Diffusion
from rcdm_core.errors import ConfigError

from .base import BaseSampler, parse_float


def _batch_t(i: int, x: torch.Tensor) -> torch.Tensor:
    return torch.full((x.shape[0],), i, dtype=torch.long, device=x.device)


class DDPMSampler(BaseSampler):
    """Ancestral sampling over the respaced schedule with the learned-range variance (official ``p_sample``).

    x_{t-1} = posterior mean of the (clipped) predicted x0 + exp(0.5 * log_var) * noise; no noise at t = 0.
    """

    name = "ddpm"
    default_steps = "100"
    needs_learned_sigma = True

    def step(
        self, diffusion: Diffusion, k: int, i: int, x: torch.Tensor, out: torch.Tensor, state: dict[str, Any]
    ):
        t = _batch_t(i, x)
        p = diffusion.p_mean_variance(out, x, t, clip_denoised=self.clip_denoised, learn_sigma=True)
        if i == 0:
            return p["mean"]
        noise = self.noise(x, state["seed"], state["ids"], int(diffusion.timestep_map[i]), state["generator"])
        return p["mean"] + torch.exp(0.5 * p["log_variance"]) * noise


class DDIMSampler(BaseSampler):
    """The official DDIM update: epsilon re-derived from the (clipped) x0; eta = 0 is deterministic.

    sigma = eta * sqrt((1 - ab_prev) / (1 - ab)) * sqrt(1 - ab / ab_prev);
    x_prev = x0 * sqrt(ab_prev) + sqrt(1 - ab_prev - sigma^2) * eps (+ sigma * noise except at the last step).
    """

    name = "ddim"
    default_steps = "50"

    def __init__(self, steps: str | int | None = None, *, eta: float | str = 0.0, **kw: Any):
        super().__init__(steps, **kw)
        self.eta = parse_float("eta", eta)
        if self.eta < 0:
            raise ConfigError(
                f"sampler ddim: eta={self.eta} must be 0 or more (0 = deterministic, 1 = DDPM-like)"
            )

    def describe(self) -> str:
        return f"{super().describe()},eta={self.eta:g}"

    def step(
        self, diffusion: Diffusion, k: int, i: int, x: torch.Tensor, out: torch.Tensor, state: dict[str, Any]
    ):
        t = _batch_t(i, x)
        learn_sigma = out.shape[1] == 2 * x.shape[1]
        p = diffusion.p_mean_variance(out, x, t, clip_denoised=self.clip_denoised, learn_sigma=learn_sigma)
        eps = diffusion.predict_eps_from_xstart(x, t, p["pred_xstart"])
        ab = diffusion.extract("alphas_cumprod", t, x.ndim)
        ab_prev = diffusion.extract("alphas_cumprod_prev", t, x.ndim)
        sigma = self.eta * torch.sqrt((1 - ab_prev) / (1 - ab)) * torch.sqrt(1 - ab / ab_prev)
        x_prev = p["pred_xstart"] * torch.sqrt(ab_prev) + torch.sqrt(1 - ab_prev - sigma**2) * eps
        if i == 0 or self.eta == 0:
            return x_prev
        noise = self.noise(x, state["seed"], state["ids"], int(diffusion.timestep_map[i]), state["generator"])
        return x_prev + sigma * noise


class DPMSolverPPSampler(BaseSampler):
    """DPM-Solver++ multistep (2M by default, 3M with order=3) in data-prediction form.

    The network's epsilon channels give x0 = (x - sigma * eps) / alpha (clipped when clip_denoised); the variance
    channels are not used. Time points are the kept timesteps, then a final step to sigma = 0 (which is
    first order, as diffusers' ``lower_order_final``); coefficients in float64 over lambda = log(alpha / sigma).
    """

    name = "dpm-solver++"
    default_steps = "20"

    def __init__(self, steps: str | int | None = None, *, order: int | str = 2, **kw: Any):
        super().__init__(steps, **kw)
        try:
            self.order = int(order)
        except (TypeError, ValueError):
            self.order = -1
        if self.order not in (1, 2, 3):
            raise ConfigError(f"sampler dpm-solver++: order={order!r}; use 1, 2 or 3")

    def describe(self) -> str:
        return f"{super().describe()},order={self.order}"

    @staticmethod
    def _point(diffusion: Diffusion, i: int) -> tuple[float, float, float]:
        """(alpha, sigma, lambda) at respaced index i; i = -1 is the clean end (alpha 1, sigma 0)."""
        if i < 0:
            return 1.0, 0.0, math.inf
        ab = float(diffusion.alphas_cumprod[i])
        alpha, sigma = math.sqrt(ab), math.sqrt(1.0 - ab)
        return alpha, sigma, math.log(alpha) - math.log(sigma)

    def step(
        self, diffusion: Diffusion, k: int, i: int, x: torch.Tensor, out: torch.Tensor, state: dict[str, Any]
    ):
        eps = out[:, : x.shape[1]]
        alpha_s, sigma_s, lam_s = self._point(diffusion, i)
        x0 = (x - sigma_s * eps) / alpha_s
        if self.clip_denoised:
            x0 = x0.clamp(-1, 1)
        history = state.setdefault("dpm", [])  # [(lambda, x0)], newest last
        history.append((lam_s, x0))
        del history[:-3]
        alpha_t, sigma_t, lam_t = self._point(diffusion, i - 1)
        if i == 0:  # to sigma = 0: the data prediction itself (first order, h = inf)
            return x0
        order = min(self.order, len(history), 2 if i == 1 and self.order == 3 else self.order)
        h = lam_t - lam_s
        phi1 = math.expm1(-h)  # exp(-h) - 1
        base = (sigma_t / sigma_s) * x - alpha_t * phi1 * x0
        if order == 1:
            return base
        lam1, m1 = history[-2]
        r0 = (lam_s - lam1) / h
        d1_0 = (x0 - m1) / r0
        if order == 2:
            return base - 0.5 * alpha_t * phi1 * d1_0
        lam2, m2 = history[-3]
        r1 = (lam1 - lam2) / h
        d1_1 = (m1 - m2) / r1
        d1 = d1_0 + (r0 / (r0 + r1)) * (d1_0 - d1_1)
        d2 = (d1_0 - d1_1) / (r0 + r1)
        return base + alpha_t * (phi1 / h + 1.0) * d1 - alpha_t * ((phi1 + h) / h**2 - 0.5) * d2
