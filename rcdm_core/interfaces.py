"""The small abstract classes every plugin implements.

Image convention across components: ``pixels`` are float tensors ``(N, 3, H, W)`` in [0, 1]; samplers return
``(N, 3, H, W)`` in [-1, 1]; data sources yield ``(id, uint8 RGB array (H, W, 3))``.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import torch
from torch import nn

from .errors import ConfigError
from .images import encoder_input


class Encoder(ABC):
    """Wraps a network and knows its own input convention (decided by the weights it loaded).

    Subclasses set ``name``, ``input_size`` (the side the network was trained at), ``mean``/``std`` (applied
    after scaling to [0, 1]; None for [0, 1] input), ``random_weights`` (True when no weights were given) and
    ``meta`` (weights path, hash, detected layout, ignored keys).
    """

    name: str = "encoder"
    input_size: int = 224
    mean: tuple[float, float, float] | None = (0.485, 0.456, 0.406)
    std: tuple[float, float, float] | None = (0.229, 0.224, 0.225)
    resize_mode: str = "bicubic"
    random_weights: bool = True
    meta: dict[str, Any]
    module: nn.Module

    def preprocess(self, pixels: torch.Tensor, input_norm: str = "own") -> torch.Tensor:
        """pixels: (N, 3, H, W) in [0, 1], any size -> network input (N, 3, S, S).

        ``own``: short-side resize + centre crop to ``input_size``, then mean/std when the weights use it.
        ``rcdm``: the released RCDMs' convention, 224 centre crop scaled to [-1, 1].
        """
        if input_norm == "rcdm":
            return encoder_input(pixels, 224, mode=self.resize_mode) * 2 - 1
        if input_norm != "own":
            raise ConfigError(f"input_norm must be 'own' or 'rcdm', got {input_norm!r}")
        x = encoder_input(pixels, self.input_size, mode=self.resize_mode)
        if self.mean is not None:
            mean = torch.tensor(self.mean, dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
            std = torch.tensor(self.std, dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
            x = (x - mean) / std
        return x

    @abstractmethod
    def features(self, x: torch.Tensor, layers: Sequence[str]) -> dict[str, torch.Tensor]:
        """x: preprocessed (N, 3, S, S) -> {feature name: tensor}; runs no further than the deepest name asked.

        Names: ``backbone`` (N, D), ``projector`` (N, P) when a head exists, ``block:NAME`` raw block output
        ((N, C, h, w) for conv stages, (N, T, D) for transformer blocks with the class token first).
        """

    @abstractmethod
    def layers(self) -> dict[str, int]:
        """{feature name: channel or vector dimension} of every name ``features`` accepts."""

    def to(self, device: torch.device | str) -> Encoder:
        self.module.to(device)
        return self

    @property
    def device(self) -> torch.device:
        for p in self.module.parameters():
            return p.device
        return torch.device("cpu")


class LayerSelector(ABC):
    """Turns an encoder's features into the conditioning vector (N, D) for one layer spec."""

    @abstractmethod
    def feature_name(self, spec: str, encoder: Encoder) -> str:
        """Which encoder feature the spec needs (raise ConfigError listing the layers when it is unknown)."""

    @abstractmethod
    def reduce(self, spec: str, feature: torch.Tensor) -> torch.Tensor:
        """feature as ``Encoder.features`` gave it -> (N, D)."""

    @abstractmethod
    def dim(self, spec: str, encoder: Encoder) -> int:
        """D of the vector this spec produces with this encoder."""

    def names(self, encoder: Encoder) -> dict[str, int]:
        """Selectable specs with their dimensions (for ``rcdm layers``)."""
        return {}


class Representation:
    """An encoder bound to one layer selection: ``encode(pixels) -> (N, D)``; what probes and the CLI use."""

    def __init__(self, encoder: Encoder, selector: LayerSelector, layer: str, input_norm: str = "own"):
        if input_norm not in ("own", "rcdm"):
            raise ConfigError(f"input_norm must be 'own' or 'rcdm', got {input_norm!r}")
        self.encoder = encoder
        self.selector = selector
        self.layer = layer
        self.input_norm = input_norm
        self.feature = selector.feature_name(layer, encoder)
        self.dim = selector.dim(layer, encoder)

    @property
    def device(self) -> torch.device:
        return self.encoder.device

    def to(self, device) -> Representation:
        self.encoder.to(device)
        return self

    def preprocess(self, pixels: torch.Tensor) -> torch.Tensor:
        if pixels.dtype == torch.uint8:
            pixels = pixels.float() / 255.0
        return self.encoder.preprocess(pixels.to(self.device), self.input_norm)

    def forward_preprocessed(self, x: torch.Tensor) -> torch.Tensor:
        """x already preprocessed -> (N, D); differentiable (used by attacks and attributions)."""
        feats = self.encoder.features(x, [self.feature])
        return self.selector.reduce(self.layer, feats[self.feature])

    def encode_with_grad(self, pixels: torch.Tensor) -> torch.Tensor:
        """pixels (N, 3, H, W) in [0, 1] -> (N, D), keeping the graph."""
        return self.forward_preprocessed(self.preprocess(pixels))

    @torch.inference_mode()
    def encode(self, pixels: torch.Tensor, batch_size: int = 64) -> torch.Tensor:
        """pixels (N, 3, H, W) in [0, 1] (or uint8) -> (N, D) float32, in eval mode, batched."""
        from .grad import preserved_modes

        with preserved_modes(self.encoder.module):
            self.encoder.module.eval()
            out = [
                self.encode_with_grad(pixels[i : i + batch_size]).float()
                for i in range(0, len(pixels), batch_size)
            ]
        return torch.cat(out) if out else torch.zeros(0, self.dim)

    def meta(self) -> dict[str, Any]:
        return {
            "encoder": self.encoder.name,
            "weights": self.encoder.meta.get("weights"),
            "weights_sha256": self.encoder.meta.get("sha256"),
            "random_weights": self.encoder.random_weights,
            "layer": self.layer,
            "input_norm": self.input_norm,
            "dim": self.dim,
        }


class ConditionalDenoiser(nn.Module):
    """``model(x_t, t, cond) -> (N, 2C or C, H, W)``; t holds ORIGINAL timestep indices (0..T-1), unscaled.

    Subclasses set ``image_size``, ``cond_dim``, ``learn_sigma``, ``in_channels`` and ``flags`` (the official
    flag names with their values, including ``diffusion_steps`` and ``noise_schedule``).
    """

    image_size: int
    cond_dim: int
    learn_sigma: bool
    in_channels: int = 3
    flags: dict[str, Any]

    @property
    def diffusion_steps(self) -> int:
        return int(self.flags.get("diffusion_steps", 1000))

    @property
    def noise_schedule(self) -> str:
        return str(self.flags.get("noise_schedule", "linear"))


class Sampler(ABC):
    """Draws images from a denoiser given conditions."""

    name: str = "sampler"

    @abstractmethod
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
        """cond (N, D) -> images (N, C, S, S) in [-1, 1].

        Randomness is keyed on (seed, sample id, step) via ``rcdm_core.noise`` unless ``generator`` is given.
        ``callback(step_index, t, x)`` is called after each step.
        """

    @property
    def num_calls(self) -> int:
        """Denoiser evaluations per sample."""
        return 0


class Probe(ABC):
    """``run(ctx) -> ProbeResult``; writes its figures under ``ctx.probe_dir(name)``."""

    name: str = "probe"

    @abstractmethod
    def run(self, ctx: Any) -> Any: ...


class DataSource(ABC):
    """Yields ``(id, uint8 RGB array (H, W, 3))`` for a spec string; ids are stable across calls."""

    spec: str = ""
    skipped: list[tuple[str, str]]

    @abstractmethod
    def __iter__(self) -> Iterator[tuple[str, Any]]: ...
