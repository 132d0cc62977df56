"""Gaussian diffusion maths shared by training and the samplers (official ADM / RCDM numerics).

Schedules are built and kept in float64 (numpy); a value is indexed at ``t`` and only then cast to float32, as
guided-diffusion does, so results match the official code. Respacing keeps a subset of the original timesteps
and recomputes the betas from the kept cumulative products; the network is always called with the ORIGINAL
timestep index (``timestep_map[t]``), unscaled. See reference/paper.md, "Diffusion numerics".
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch

from .errors import ConfigError

__all__ = [
    "Diffusion",
    "get_betas",
    "space_timesteps",
    "normal_kl",
    "discretized_gaussian_log_likelihood",
]


def get_betas(schedule: str, num_steps: int) -> np.ndarray:
    """The official beta schedule: ``linear`` or ``cosine`` -> (num_steps,) float64."""
    if num_steps < 1:
        raise ConfigError(f"diffusion_steps must be at least 1, got {num_steps}")
    if schedule == "linear":
        # Scaled so that any T behaves like the 1000-step schedule.
        scale = 1000 / num_steps
        return np.linspace(scale * 0.0001, scale * 0.02, num_steps, dtype=np.float64)
    if schedule == "cosine":

        def alpha_bar(s: float) -> float:
            return math.cos((s + 0.008) / 1.008 * math.pi / 2) ** 2

        betas = [
            min(1 - alpha_bar((i + 1) / num_steps) / alpha_bar(i / num_steps), 0.999)
            for i in range(num_steps)
        ]
        return np.array(betas, dtype=np.float64)
    raise ConfigError(f"noise_schedule must be 'linear' or 'cosine', got {schedule!r}")


def space_timesteps(num_steps: int, spec: str | int | Sequence[int]) -> list[int]:
    """The official respacing rules -> the sorted kept timesteps (original indices).

    ``"N"`` or ``"10,15,20"``: equal sections with that many steps each, taken with a float accumulator and
    Python's round-half-to-even (``"100"`` -> 0, 10, ..., 989, 999). ``"ddimN"``: the smallest integer stride
    whose ``range(0, T, stride)`` has exactly N elements (``"ddim25"`` -> 0, 40, ..., 960).
    """
    if isinstance(spec, int):
        counts = [spec]
    elif isinstance(spec, str):
        text = spec.strip()
        if text.startswith("ddim"):
            return _ddim_stride_steps(num_steps, text)
        try:
            counts = [int(x) for x in text.split(",")]
        except ValueError:
            raise ConfigError(
                f"timestep respacing {spec!r}: expected 'N', comma-separated counts like '10,15,20', or 'ddimN'"
            ) from None
    else:
        counts = [int(c) for c in spec]
    if not counts or any(c < 0 for c in counts) or sum(counts) == 0:
        raise ConfigError(f"timestep respacing {spec!r}: step counts must be positive")
    size_per, extra = divmod(num_steps, len(counts))
    start, kept = 0, []
    for i, count in enumerate(counts):
        size = size_per + (1 if i < extra else 0)
        if size < count:
            raise ConfigError(
                f"timestep respacing {spec!r}: cannot take {count} steps from a section of {size} "
                f"(T = {num_steps} split into {len(counts)} sections)"
            )
        stride = 1 if count <= 1 else (size - 1) / (count - 1)
        acc = 0.0  # accumulated in floating point on purpose: the official rule, e.g. "27" keeps 499 not 500
        for _ in range(count):
            kept.append(start + round(acc))
            acc += stride
        start += size
    return sorted(set(kept))


def _ddim_stride_steps(num_steps: int, text: str) -> list[int]:
    try:
        want = int(text[len("ddim") :])
    except ValueError:
        raise ConfigError(f"timestep respacing {text!r}: expected 'ddimN' with an integer N") from None
    for stride in range(1, num_steps):
        if len(range(0, num_steps, stride)) == want:
            return list(range(0, num_steps, stride))
    raise ConfigError(
        f"timestep respacing {text!r}: no integer stride gives exactly {want} steps out of {num_steps}; "
        f"use '{want}' (evenly spaced) instead"
    )


def normal_kl(
    mean1: torch.Tensor, logvar1: torch.Tensor, mean2: torch.Tensor, logvar2: torch.Tensor
) -> torch.Tensor:
    """KL(N(mean1, e^logvar1) || N(mean2, e^logvar2)) elementwise, in nats."""
    return 0.5 * (
        -1.0 + logvar2 - logvar1 + torch.exp(logvar1 - logvar2) + (mean1 - mean2) ** 2 * torch.exp(-logvar2)
    )


def _approx_standard_normal_cdf(x: torch.Tensor) -> torch.Tensor:
    # The tanh approximation the official code uses (kept for identical loss values).
    return 0.5 * (1.0 + torch.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * x**3)))


def discretized_gaussian_log_likelihood(
    x: torch.Tensor, means: torch.Tensor, log_scales: torch.Tensor
) -> torch.Tensor:
    """Log-likelihood of 8-bit images ``x`` in [-1, 1] under a Gaussian discretised to 256 bins, elementwise."""
    centered = x - means
    inv_stdv = torch.exp(-log_scales)
    cdf_plus = _approx_standard_normal_cdf(inv_stdv * (centered + 1.0 / 255.0))
    cdf_min = _approx_standard_normal_cdf(inv_stdv * (centered - 1.0 / 255.0))
    log_cdf_plus = torch.log(cdf_plus.clamp(min=1e-12))
    log_one_minus_cdf_min = torch.log((1.0 - cdf_min).clamp(min=1e-12))
    log_cdf_delta = torch.log((cdf_plus - cdf_min).clamp(min=1e-12))
    return torch.where(x < -0.999, log_cdf_plus, torch.where(x > 0.999, log_one_minus_cdf_min, log_cdf_delta))


def _mean_flat(x: torch.Tensor) -> torch.Tensor:
    return x.mean(dim=tuple(range(1, x.ndim)))


class Diffusion:
    """A (possibly respaced) Gaussian diffusion over float64 schedules.

    ``betas``: the ORIGINAL schedule (T,) float64; ``timesteps``: the kept original indices (default: all).
    Indices ``t`` given to the methods are positions in the kept schedule (0..num_timesteps-1);
    ``timestep_map[t]`` is what the network sees.
    """

    def __init__(self, betas: np.ndarray | Sequence[float], timesteps: Sequence[int] | None = None):
        base = np.asarray(betas, dtype=np.float64)
        if base.ndim != 1 or len(base) == 0 or not ((base > 0) & (base <= 1)).all():
            raise ConfigError("betas must be a non-empty 1-d array with values in (0, 1]")
        self.base_betas = base
        self.original_num_steps = len(base)
        kept = list(range(len(base))) if timesteps is None else sorted({int(t) for t in timesteps})
        if not kept or kept[0] < 0 or kept[-1] >= len(base):
            raise ConfigError(f"kept timesteps must lie in 0..{len(base) - 1}, got {kept[:3]}...{kept[-3:]}")
        self.kept = kept
        base_alphabar = np.cumprod(1.0 - base)
        betas_new, last = [], 1.0
        for i in kept:
            betas_new.append(1.0 - base_alphabar[i] / last)
            last = base_alphabar[i]
        self._build(np.array(betas_new, dtype=np.float64))
        self.timestep_map = torch.tensor(kept, dtype=torch.long)
        self._device_tables: dict[tuple[str, str], torch.Tensor] = {}

    @classmethod
    def from_flags(
        cls,
        diffusion_steps: int = 1000,
        noise_schedule: str = "linear",
        timestep_respacing: str | None = None,
    ) -> Diffusion:
        """The official flags: ``diffusion_steps``, ``noise_schedule`` and ``timestep_respacing`` ("" = all)."""
        betas = get_betas(noise_schedule, int(diffusion_steps))
        kept = space_timesteps(int(diffusion_steps), timestep_respacing) if timestep_respacing else None
        return cls(betas, kept)

    @classmethod
    def for_denoiser(cls, denoiser: Any, timesteps: Sequence[int] | None = None) -> Diffusion:
        """The diffusion a ConditionalDenoiser was trained with (its ``flags``), optionally respaced."""
        flags = getattr(denoiser, "flags", {}) or {}
        betas = get_betas(str(flags.get("noise_schedule", "linear")), int(flags.get("diffusion_steps", 1000)))
        return cls(betas, timesteps)

    def respaced(self, timesteps: Sequence[int]) -> Diffusion:
        """A new diffusion over the same original schedule keeping ``timesteps`` (original indices)."""
        return Diffusion(self.base_betas, timesteps)

    def _build(self, betas: np.ndarray) -> None:
        self.betas = betas
        self.num_timesteps = len(betas)
        alphas = 1.0 - betas
        self.alphas_cumprod = np.cumprod(alphas)
        self.alphas_cumprod_prev = np.append(1.0, self.alphas_cumprod[:-1])
        self.sqrt_alphas_cumprod = np.sqrt(self.alphas_cumprod)
        self.sqrt_one_minus_alphas_cumprod = np.sqrt(1.0 - self.alphas_cumprod)
        self.sqrt_recip_alphas_cumprod = np.sqrt(1.0 / self.alphas_cumprod)
        self.sqrt_recipm1_alphas_cumprod = np.sqrt(1.0 / self.alphas_cumprod - 1)
        self.posterior_variance = betas * (1.0 - self.alphas_cumprod_prev) / (1.0 - self.alphas_cumprod)
        # The posterior variance is 0 at t = 0: its log uses the t = 1 value there (a single kept step has no
        # t = 1; the official code would index out of range, we use beta_0 which is then the only sensible value).
        first = self.posterior_variance[1] if len(betas) > 1 else betas[0]
        self.posterior_log_variance_clipped = np.log(np.append(first, self.posterior_variance[1:]))
        self.log_betas = np.log(betas)
        self.fixed_large_variance = np.append(first, betas[1:])
        self.fixed_large_log_variance = np.log(self.fixed_large_variance)
        self.posterior_mean_coef1 = betas * np.sqrt(self.alphas_cumprod_prev) / (1.0 - self.alphas_cumprod)
        self.posterior_mean_coef2 = (
            (1.0 - self.alphas_cumprod_prev) * np.sqrt(alphas) / (1.0 - self.alphas_cumprod)
        )

    # -- indexing ---------------------------------------------------------------------------------------------

    def extract(self, name: str, t: torch.Tensor, ndim: int = 4) -> torch.Tensor:
        """Table ``name`` (float64) indexed at ``t`` (N,) long, cast to float32, shaped (N, 1, ..., 1)."""
        key = (name, str(t.device))
        table = self._device_tables.get(key)
        if table is None:
            # float64 on the device where possible; devices without float64 index on the CPU instead.
            dev = t.device if t.device.type in ("cpu", "cuda") else torch.device("cpu")
            table = torch.from_numpy(np.ascontiguousarray(getattr(self, name))).to(dev)
            self._device_tables[key] = table
        values = table[t.to(table.device)].float().to(t.device)
        return values.view(-1, *([1] * (ndim - 1)))

    def model_timesteps(self, t: torch.Tensor) -> torch.Tensor:
        """Respaced indices (N,) -> the original timestep indices the network is given."""
        return self.timestep_map.to(t.device)[t]

    def sample_timesteps(
        self, n: int, generator: torch.Generator | None = None, device: Any = "cpu"
    ) -> torch.Tensor:
        """Uniform timestep indices (n,) long in 0..num_timesteps-1 (uniform importance weights are all 1)."""
        return torch.randint(0, self.num_timesteps, (n,), generator=generator).to(device)

    def p2_weights(self, t: torch.Tensor, gamma: float, k: float = 1.0) -> torch.Tensor:
        """P2 weights (N,) float32: ``1 / (k + SNR(t)) ** gamma`` with SNR = alphabar / (1 - alphabar)."""
        snr = self.extract("alphas_cumprod", t, 1).double()
        snr = snr / (1.0 - snr)
        return (1.0 / (float(k) + snr) ** float(gamma)).float()

    # -- forward process and posterior ------------------------------------------------------------------------

    def q_sample(self, x0: torch.Tensor, t: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        """x_t ~ q(x_t | x0): x0, noise (N, C, H, W); t (N,) -> (N, C, H, W)."""
        return self.extract("sqrt_alphas_cumprod", t, x0.ndim) * x0 + (
            self.extract("sqrt_one_minus_alphas_cumprod", t, x0.ndim) * noise
        )

    def q_posterior_mean_variance(
        self, x0: torch.Tensor, x_t: torch.Tensor, t: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """q(x_{t-1} | x_t, x0) -> (mean (N, C, H, W), variance (N, 1, 1, 1), clipped log variance (N, 1, 1, 1))."""
        mean = self.extract("posterior_mean_coef1", t, x_t.ndim) * x0 + (
            self.extract("posterior_mean_coef2", t, x_t.ndim) * x_t
        )
        variance = self.extract("posterior_variance", t, x_t.ndim)
        log_variance = self.extract("posterior_log_variance_clipped", t, x_t.ndim)
        return mean, variance, log_variance

    def predict_xstart_from_eps(self, x_t: torch.Tensor, t: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
        return self.extract("sqrt_recip_alphas_cumprod", t, x_t.ndim) * x_t - (
            self.extract("sqrt_recipm1_alphas_cumprod", t, x_t.ndim) * eps
        )

    def predict_eps_from_xstart(self, x_t: torch.Tensor, t: torch.Tensor, x0: torch.Tensor) -> torch.Tensor:
        return (self.extract("sqrt_recip_alphas_cumprod", t, x_t.ndim) * x_t - x0) / self.extract(
            "sqrt_recipm1_alphas_cumprod", t, x_t.ndim
        )

    # -- the model's reverse step -----------------------------------------------------------------------------

    def p_mean_variance(
        self,
        model_output: torch.Tensor,
        x_t: torch.Tensor,
        t: torch.Tensor,
        clip_denoised: bool = True,
        learn_sigma: bool = True,
        denoised_fn: Callable[[torch.Tensor], torch.Tensor] | None = None,
    ) -> dict[str, torch.Tensor]:
        """p(x_{t-1} | x_t) from a raw network output.

        model_output: (N, 2C, H, W) [eps, v] with learned sigma (learned-range variance), else (N, C, H, W) eps
        with the fixed-large variance (beta_t, with the posterior variance at t = 0, as the official code).
        Returns ``mean``, ``variance``, ``log_variance`` (broadcastable to x_t), ``pred_xstart``, ``eps`` (raw).
        """
        channels = x_t.shape[1]
        if learn_sigma:
            if model_output.shape[1] != 2 * channels:
                raise ValueError(
                    f"learned sigma needs {2 * channels} output channels, got {model_output.shape[1]}"
                )
            eps, var_values = torch.split(model_output, channels, dim=1)
            min_log = self.extract("posterior_log_variance_clipped", t, x_t.ndim)
            max_log = self.extract("log_betas", t, x_t.ndim)
            frac = (var_values + 1) / 2
            log_variance = frac * max_log + (1 - frac) * min_log
            variance = torch.exp(log_variance)
        else:
            eps = model_output
            variance = self.extract("fixed_large_variance", t, x_t.ndim).expand_as(x_t)
            log_variance = self.extract("fixed_large_log_variance", t, x_t.ndim).expand_as(x_t)
        pred_xstart = self.predict_xstart_from_eps(x_t, t, eps)
        if denoised_fn is not None:
            pred_xstart = denoised_fn(pred_xstart)
        if clip_denoised:
            pred_xstart = pred_xstart.clamp(-1, 1)
        mean, _, _ = self.q_posterior_mean_variance(pred_xstart, x_t, t)
        return {
            "mean": mean,
            "variance": variance,
            "log_variance": log_variance,
            "pred_xstart": pred_xstart,
            "eps": eps,
        }

    # -- training ---------------------------------------------------------------------------------------------

    def training_losses(
        self,
        model: Callable[..., torch.Tensor],
        x0: torch.Tensor,
        t: torch.Tensor,
        cond: torch.Tensor,
        noise: torch.Tensor | None = None,
        learn_sigma: bool | None = None,
        rescale_learned_sigmas: bool = False,
        p2_gamma: float = 0.0,
        p2_k: float = 1.0,
    ) -> dict[str, torch.Tensor]:
        """The official hybrid loss, per example: {"loss", "mse", "vb"} each (N,).

        x0: (N, C, H, W) in [-1, 1]; t: (N,) respaced indices; cond: (N, D). The model is called as
        ``model(x_t, timestep_map[t], cond)``. With learned sigma, vb (bits) trains only the variance: the mean
        comes from the DETACHED epsilon; at t = 0 the discretised decoder NLL replaces the KL.
        ``rescale_learned_sigmas`` (official flag, default off) multiplies vb by num_timesteps / 1000.
        ``p2_gamma`` > 0 weights each example's mse by ``1 / (p2_k + SNR(t)) ** p2_gamma`` with
        SNR = alphabar / (1 - alphabar): the perception-prioritised (P2) weighting of Choi et al., CVPR 2022,
        with the flag names of their guided-diffusion fork. It shifts training towards the noisy steps where
        colour and layout (and so the condition) are decided; vb is left as it is. 0 (default) = off, the
        official loss bit for bit.
        """
        if noise is None:
            noise = torch.randn_like(x0)
        x_t = self.q_sample(x0, t, noise)
        out = model(x_t, self.model_timesteps(t), cond).float()
        if learn_sigma is None:
            learn_sigma = bool(getattr(model, "learn_sigma", out.shape[1] == 2 * x0.shape[1]))
        channels = x0.shape[1]
        eps = out[:, :channels]
        mse = _mean_flat((noise - eps) ** 2)
        if p2_gamma:
            mse = mse * self.p2_weights(t, p2_gamma, p2_k)
        if not learn_sigma:
            return {"loss": mse, "mse": mse, "vb": torch.zeros_like(mse)}
        frozen = torch.cat([eps.detach(), out[:, channels:]], dim=1)
        vb = self.vb_terms_bpd(frozen, x0, x_t, t)
        if rescale_learned_sigmas:  # the official option (off in the RCDM flags): vb * T / 1000
            vb = vb * (self.num_timesteps / 1000.0)
        return {"loss": mse + vb, "mse": mse, "vb": vb}

    def vb_terms_bpd(
        self, model_output: torch.Tensor, x0: torch.Tensor, x_t: torch.Tensor, t: torch.Tensor
    ) -> torch.Tensor:
        """Variational-bound term in bits per dimension (N,): KL at t > 0, decoder NLL at t = 0 (no clipping)."""
        true_mean, _, true_log_var = self.q_posterior_mean_variance(x0, x_t, t)
        out = self.p_mean_variance(model_output, x_t, t, clip_denoised=False, learn_sigma=True)
        kl = _mean_flat(normal_kl(true_mean, true_log_var, out["mean"], out["log_variance"])) / math.log(2.0)
        nll = -discretized_gaussian_log_likelihood(
            x0, means=out["mean"], log_scales=0.5 * out["log_variance"]
        )
        nll = _mean_flat(nll) / math.log(2.0)
        return torch.where(t == 0, nll, kl)
