"""Tiny hand-built encoders, denoisers and a one-step sampler for the probe tests (answers known by design).

The one-step sampler returns ``denoiser(x_T, 0, cond)`` with x_T keyed on (seed, sample id), so a denoiser that
decodes its condition back to pixels makes samples reproduce what the representation kept.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

import rcdm_core as rc
from rcdm_core.augment import gray

from .toys import ToySampler

SIDE = 16


class VectorSelector(rc.LayerSelector):
    def feature_name(self, spec, encoder):
        return "backbone"

    def reduce(self, spec, feature):
        return feature

    def dim(self, spec, encoder):
        return encoder.layers()["backbone"]


class FnEncoder(rc.Encoder):
    """An encoder given by a function of [0, 1] pixels at SIDE px (no mean/std unless given)."""

    def __init__(self, fn, dim: int, module: nn.Module | None = None, mean=None, std=None):
        self.fn, self.dim = fn, dim
        self.module = module if module is not None else nn.Identity()
        self.input_size, self.mean, self.std = SIDE, mean, std
        self.random_weights, self.meta, self.name = False, {}, "test"

    def features(self, x, layers):
        return {"backbone": self.fn(x)}

    def layers(self):
        return {"backbone": self.dim}


def pixel_encoder() -> FnEncoder:
    """r(x) = the pixels: keeps everything (colour, orientation, scale)."""
    return FnEncoder(lambda x: x.flatten(1), 3 * SIDE * SIDE)


def flip_invariant_encoder() -> FnEncoder:
    """r(x) = pixels of (x + flip(x)) / 2: exactly invariant to horizontal flips."""
    return FnEncoder(lambda x: ((x + x.flip(-1)) / 2).flatten(1), 3 * SIDE * SIDE)


def luma_encoder() -> FnEncoder:
    """r(x) = luma only: invariant to colour (and to grayscale conversion)."""
    return FnEncoder(lambda x: gray(x).flatten(1), SIDE * SIDE)


class ConvNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.bn = nn.BatchNorm2d(8)
        self.head = nn.Linear(8 * 4, 16)

    def forward(self, x):
        h = torch.relu(self.bn(self.conv(x)))
        return self.head(nn.functional.adaptive_avg_pool2d(h, 2).flatten(1))


def conv_encoder(seed: int = 0) -> FnEncoder:
    """A small random conv net with BatchNorm and ImageNet mean/std (normalisation inside the attack)."""
    torch.manual_seed(seed)
    net = ConvNet()
    return FnEncoder(net, 16, module=net, mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225))


class DecodeDenoiser(rc.ConditionalDenoiser):
    """Maps the condition back to a [-1, 1] image with ``decode`` and adds ``noise`` * x_t."""

    def __init__(self, decode, cond_dim: int, noise: float = 0.0):
        super().__init__()
        self.decode, self.noise = decode, noise
        self.image_size, self.cond_dim, self.learn_sigma, self.flags = SIDE, cond_dim, False, {}

    def forward(self, x_t, t, cond):
        return self.decode(cond) * 2 - 1 + self.noise * x_t


def pixels_decoder(cond):
    return cond.view(-1, 3, SIDE, SIDE)


def linear_decoder(dim: int, seed: int = 0):
    """A fixed random map from a dim-d condition to an image (for encoders that are not invertible)."""
    weight = torch.randn(dim, 3 * SIDE * SIDE, generator=torch.Generator().manual_seed(seed)) / dim**0.5
    return lambda cond: torch.sigmoid(cond @ weight).view(-1, 3, SIDE, SIDE)


TINT = torch.tensor([1.0, 0.55, 0.15]).view(1, 3, 1, 1)


def tinted_luma_decoder(cond):
    """Luma -> a strongly coloured image (what a colour-invariant representation's decoder invents)."""
    return cond.view(-1, 1, SIDE, SIDE) * TINT


class OneStepSampler(ToySampler):
    name = "onestep"

    def draw(self, denoiser, cond, x_T, seed, ids):
        return denoiser(x_T, torch.zeros(len(cond), dtype=torch.long), cond).clamp(-1, 1)


def arm(name: str, encoder: FnEncoder, decode=pixels_decoder, noise: float = 0.0) -> rc.ArmRuntime:
    rep = rc.Representation(encoder, VectorSelector(), "backbone")
    return rc.ArmRuntime(
        spec=rc.Arm(name=name, encoder="test"), rep=rep, denoiser=DecodeDenoiser(decode, rep.dim, noise)
    )


def random_images(n: int, seed: int = 0) -> torch.Tensor:
    """Smooth random colour images (low-frequency content, so 16 px comparisons see layout and colour)."""
    g = torch.Generator().manual_seed(seed)
    coarse = torch.rand(n, 3, 4, 4, generator=g)
    return nn.functional.interpolate(coarse, size=SIDE, mode="bilinear", align_corners=False).clamp(0, 1)


def context(arms, images, out: Path, reference=None, n_samples: int = 3, batch_size: int = 4, seed: int = 0):
    return rc.ProbeContext(
        arms=list(arms),
        ids=[f"img{i}" for i in range(len(images))],
        images=images,
        sampler=OneStepSampler(),
        sampler_spec="onestep",
        seed=seed,
        out_dir=out,
        n_samples=n_samples,
        batch_size=batch_size,
        reference=reference,
        reference_ids=None if reference is None else [f"ref{i}" for i in range(len(reference))],
        progress=False,
    )
