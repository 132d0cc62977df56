"""What every sampler shares: step parsing, the respaced diffusion, seeded noise, the model call, the loop."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Sequence
from typing import Any

import torch

from rcdm_core import noise as rnoise
from rcdm_core.config import parse_bool as _parse_bool
from rcdm_core.diffusion import Diffusion
from rcdm_core.errors import ConfigError
from rcdm_core.interfaces import ConditionalDenoiser, Sampler
from rcdm_core.progress import bar

from .spacing import SPACINGS, kept_timesteps

ACCEPTED_FORMS = (
    "ddpm:N, ddim:N[,eta=E], dpm-solver++:N[,order=2|3], each with optional ,spacing=even|ddim|leading|trailing "
    "and ,clip_denoised=true|false; or the official respacing strings 100, ddim25, 10,15,20"
)
PRECISIONS = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}


def parse_bool(name: str, value: Any) -> bool:
    return _parse_bool(value, f"sampler key {name}")


def parse_float(name: str, value: Any) -> float:
    try:
        return float(value)
    except (TypeError, ValueError):
        raise ConfigError(f"sampler key {name}={value!r}: expected a number") from None


class BaseSampler(Sampler):
    """A sampler over the kept timesteps of the denoiser's own schedule; subclasses implement the loop body.

    steps: "N" (or comma sections for ``even`` spacing); spacing: even|ddim|leading|trailing;
    clip_denoised: clamp predicted x0 to [-1, 1]; precision: fp32|bf16|fp16 (autocast around the denoiser);
    compile: torch.compile the denoiser; channels_last: run the denoiser in channels_last memory format.
    """

    name = "sampler"
    default_steps = "100"
    needs_learned_sigma = False

    def __init__(
        self,
        steps: str | int | None = None,
        *,
        spacing: str = "even",
        clip_denoised: bool | str = True,
        precision: str = "fp32",
        compile: bool | str = False,
        channels_last: bool | str = False,
    ):
        self.steps = str(self.default_steps if steps is None else steps).strip()
        self._check_steps()
        if spacing not in SPACINGS:
            raise ConfigError(
                f"sampler {self.name}: spacing={spacing!r} is not known; use one of {', '.join(SPACINGS)}"
            )
        if "," in self.steps and spacing != "even":
            raise ConfigError(
                f"sampler {self.name}: step sections {self.steps!r} only work with spacing=even"
            )
        if precision not in PRECISIONS:
            raise ConfigError(f"sampler {self.name}: precision={precision!r}; use fp32, bf16 or fp16")
        self.spacing = spacing
        self.clip_denoised = parse_bool("clip_denoised", clip_denoised)
        self.precision = precision
        self.compile = parse_bool("compile", compile)
        self.channels_last = parse_bool("channels_last", channels_last)
        self._num_calls = sum(int(c) for c in self.steps.split(","))
        self._cache: dict[tuple, Diffusion] = {}
        self._compiled: tuple[int, Callable] | None = None

    # -- configuration ----------------------------------------------------------------------------------------

    def _check_steps(self) -> None:
        parts = self.steps.split(",")
        if not all(p.strip().lstrip("-").isdigit() for p in parts):
            raise ConfigError(
                f"sampler {self.name}:{self.steps}: steps must be whole numbers; accepted: {ACCEPTED_FORMS}"
            )
        if any(int(p) < 0 for p in parts) or sum(int(p) for p in parts) <= 0:
            raise ConfigError(
                f"sampler {self.name}:{self.steps}: steps must be at least 1; accepted: {ACCEPTED_FORMS}"
            )

    def describe(self) -> str:
        return f"{self.name}:{self.steps},spacing={self.spacing}"

    @property
    def num_calls(self) -> int:
        """Denoiser evaluations per sample (exact once the denoiser's T is known)."""
        return self._num_calls

    def diffusion_for(self, denoiser: ConditionalDenoiser) -> Diffusion:
        """The denoiser's schedule respaced to this sampler's kept timesteps (cached per schedule)."""
        flags = getattr(denoiser, "flags", {}) or {}
        T, schedule = int(flags.get("diffusion_steps", 1000)), str(flags.get("noise_schedule", "linear"))
        key = (T, schedule)
        if key not in self._cache:
            total = sum(int(c) for c in self.steps.split(","))
            if total > T:
                raise ConfigError(
                    f"sampler {self.describe()}: {total} steps but the denoiser has only T = {T} diffusion steps; "
                    f"use at most {T}"
                )
            try:
                kept = kept_timesteps(T, self.steps, self.spacing)
            except ConfigError as exc:
                raise ConfigError(f"sampler {self.describe()}: {exc}") from None
            self._cache[key] = Diffusion.from_flags(T, schedule).respaced(kept)
        diffusion = self._cache[key]
        self._num_calls = diffusion.num_timesteps
        return diffusion

    # -- the denoiser call ------------------------------------------------------------------------------------

    def _network(self, denoiser: ConditionalDenoiser) -> Callable:
        if not self.compile:
            return denoiser
        if self._compiled is None or self._compiled[0] != id(denoiser):
            self._compiled = (id(denoiser), torch.compile(denoiser))
        return self._compiled[1]

    def model_output(
        self, net: Callable, x: torch.Tensor, t_original: int, cond: torch.Tensor
    ) -> torch.Tensor:
        """x (N, C, H, W) float32 -> the raw network output as float32, under this sampler's precision."""
        t = torch.full((x.shape[0],), t_original, dtype=torch.long, device=x.device)
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        dtype = PRECISIONS[self.precision]
        ctx = torch.autocast(x.device.type, dtype=dtype) if dtype is not None else contextlib.nullcontext()
        with ctx:
            out = net(x, t, cond)
        return out.float()

    # -- randomness -------------------------------------------------------------------------------------------

    def noise(self, x: torch.Tensor, seed: int, ids: list[int], step: int, generator: torch.Generator | None):
        """(N, C, H, W) standard normal noise keyed on (seed, id, step), or drawn from ``generator`` in order."""
        if generator is not None:
            return torch.randn(x.shape, generator=generator, device=generator.device).to(x.device)
        return rnoise.sample_noise(x.shape[1:], seed, ids, step, device=x.device)

    # -- the loop ---------------------------------------------------------------------------------------------

    def _check_inputs(
        self, denoiser: ConditionalDenoiser, cond: torch.Tensor, x_T: torch.Tensor | None
    ) -> None:
        if self.needs_learned_sigma and not getattr(denoiser, "learn_sigma", False):
            raise ConfigError(
                f"sampler {self.name} uses the learned-range variance but this denoiser has learn_sigma False; "
                f"use ddim:N or dpm-solver++:N"
            )
        cond_dim = getattr(denoiser, "cond_dim", None)
        if cond.ndim != 2 or (cond_dim is not None and cond.shape[1] != cond_dim):
            raise ConfigError(
                f"condition has shape {tuple(cond.shape)} but the denoiser expects (N, {cond_dim})"
            )
        if not torch.isfinite(cond).all():
            raise ConfigError("the condition holds NaN or inf values; cannot sample from it")
        if x_T is not None and tuple(x_T.shape) != self.image_shape(denoiser, len(cond)):
            raise ConfigError(
                f"x_T has shape {tuple(x_T.shape)}; expected {self.image_shape(denoiser, len(cond))}"
            )

    @staticmethod
    def image_shape(denoiser: ConditionalDenoiser, n: int) -> tuple[int, int, int, int]:
        s = int(denoiser.image_size)
        return (n, int(getattr(denoiser, "in_channels", 3)), s, s)

    @torch.inference_mode()
    def sample(
        self,
        denoiser: ConditionalDenoiser,
        cond: torch.Tensor,
        *,
        seed: int = 0,
        sample_ids: Sequence[int] | torch.Tensor | None = None,
        x_T: torch.Tensor | None = None,
        generator: torch.Generator | None = None,
        progress: bool = True,
        callback: Callable[[int, int, torch.Tensor], None] | None = None,
    ) -> torch.Tensor:
        """cond (N, D) -> images (N, C, S, S) in [-1, 1] (see :class:`rcdm_core.interfaces.Sampler`)."""
        self._check_inputs(denoiser, cond, x_T)
        diffusion = self.diffusion_for(denoiser)
        device = next((p.device for p in denoiser.parameters()), cond.device)
        cond = cond.to(device=device, dtype=torch.float32)
        try:
            ids = rnoise.default_ids(len(cond), sample_ids)
        except ValueError as exc:
            raise ConfigError(str(exc)) from None
        if x_T is None:
            shape = self.image_shape(denoiser, len(cond))
            x = self.noise(torch.empty(shape, device=device), seed, ids, rnoise.STEP_INIT, generator)
        else:
            x = x_T.to(device=device, dtype=torch.float32)
        if self.channels_last:
            denoiser.to(memory_format=torch.channels_last)
        state = {"seed": seed, "ids": ids, "generator": generator}
        net = self._network(denoiser)
        indices = list(range(diffusion.num_timesteps))[::-1]
        for k, i in enumerate(bar(indices, desc=self.describe(), progress=progress)):
            t_original = int(diffusion.timestep_map[i])
            out = self.model_output(net, x, t_original, cond)
            x = self.step(diffusion, k, i, x, out, state)
            if callback is not None:
                callback(k, t_original, x)
        return x.clamp(-1, 1)

    def step(
        self, diffusion: Diffusion, k: int, i: int, x: torch.Tensor, out: torch.Tensor, state: dict[str, Any]
    ) -> torch.Tensor:
        """One update from respaced index i (the k-th step) given the network output -> the next x."""
        raise NotImplementedError
