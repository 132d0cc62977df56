"""The run context handed to probes: arms, images, reference set, sampler, seeds, output folder."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import attrs
import torch

from .errors import ConfigError, RcdmError
from .images import encoder_input, to_pixels
from .interfaces import ConditionalDenoiser, Representation, Sampler
from .records import Arm


@attrs.define
class ArmRuntime:
    """A built arm: its spec, representation (encoder + layer) and denoiser."""

    spec: Arm
    rep: Representation
    denoiser: ConditionalDenoiser

    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def image_size(self) -> int:
        return int(self.denoiser.image_size)


@attrs.define
class ProbeContext:
    """What a probe sees. ``images``/``reference`` are pixels (N, 3, S, S) in [0, 1] at the run's size."""

    arms: list[ArmRuntime]
    ids: list[str]
    images: torch.Tensor
    sampler: Sampler
    sampler_spec: str
    seed: int
    out_dir: Path
    n_samples: int = 4
    batch_size: int = 16
    device: torch.device = torch.device("cpu")
    reference_ids: list[str] | None = None
    reference: torch.Tensor | None = None
    options: dict[str, Any] = attrs.field(factory=dict)
    progress: bool = True
    precision: str = "fp32"
    hook: Any = None
    notes: list[str] = attrs.field(factory=list)

    def images_for(self, arm: ArmRuntime, images: torch.Tensor | None = None) -> torch.Tensor:
        """Images at the arm's denoiser resolution (short-side resize + centre crop)."""
        imgs = self.images if images is None else images
        return encoder_input(imgs, arm.image_size) if imgs.shape[-1] != arm.image_size else imgs

    def require_reference(self, k: int = 1, probe: str = "this probe") -> torch.Tensor:
        if self.reference is None:
            raise ConfigError(
                f"{probe} needs a reference set: pass --reference SRC (or reference = ... in the config)"
            )
        if len(self.reference) < k:
            raise ConfigError(
                f"{probe} needs at least {k} reference images; --reference has {len(self.reference)}"
            )
        return self.reference

    def probe_dir(self, name: str) -> Path:
        d = self.out_dir / "probes" / name
        d.mkdir(parents=True, exist_ok=True)
        return d

    def autocast(self):
        if self.precision == "fp32":
            return torch.autocast(self.device.type, enabled=False)
        dtype = torch.bfloat16 if self.precision == "bf16" else torch.float16
        return torch.autocast(self.device.type, dtype=dtype)

    def sample(
        self,
        arm: ArmRuntime,
        cond: torch.Tensor,
        sample_ids: Sequence[int] | None = None,
        seed: int | None = None,
        x_T: torch.Tensor | None = None,
        desc: str | None = None,
    ) -> torch.Tensor:
        """cond (N, D) -> samples as pixels (N, 3, S, S) in [0, 1], batched by ``batch_size``.

        Row i's noise is keyed on (seed, sample_ids[i], step): give the same ids to get the same x_T (e.g. for
        occlusion or interpolation with fixed noise).
        """
        if not torch.isfinite(cond).all():
            raise RcdmError(
                f"arm {arm.name}: the representation holds NaN or inf values; cannot sample from it"
            )
        if cond.shape[-1] != arm.denoiser.cond_dim:
            raise ConfigError(
                f"arm {arm.name}: condition has dimension {cond.shape[-1]} but the denoiser expects "
                f"cond_dim {arm.denoiser.cond_dim} (layer {arm.spec.layer})"
            )
        seed = self.seed if seed is None else seed
        ids = list(range(len(cond))) if sample_ids is None else [int(i) for i in sample_ids]
        out = []
        for i in range(0, len(cond), self.batch_size):
            c = cond[i : i + self.batch_size].to(self.device)
            xt = None if x_T is None else x_T[i : i + self.batch_size].to(self.device)
            with self.autocast():
                x = self.sampler.sample(
                    arm.denoiser,
                    c,
                    seed=seed,
                    sample_ids=ids[i : i + self.batch_size],
                    x_T=xt,
                    progress=self.progress and len(cond) > 0,
                )
            x = x.float()
            if self.hook is not None:
                self.hook.rcdm_after_sample(arm=arm.name, cond=c, samples=x)
            out.append(to_pixels(x).cpu())
        return torch.cat(out) if out else torch.zeros(0, 3, arm.image_size, arm.image_size)

    def encode(self, arm: ArmRuntime, pixels: torch.Tensor) -> torch.Tensor:
        """pixels -> (N, D) with the arm's representation, on the run's device, float32 on CPU."""
        return arm.rep.encode(pixels.to(self.device), batch_size=self.batch_size).cpu()
