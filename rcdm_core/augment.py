"""SSL augmentations on tensors: the one copy used by encoder training, RCDM training and the invariance probe.

pixels: (N, 3, H, W) float in [0, 1]. Every random draw comes from the given ``torch.Generator`` (CPU), so the
same generator state gives the same views. ``apply`` always applies the named augmentation (probability 1) at a
given strength; :class:`SSLAugment` is the random recipe (SimCLR/BYOL style) used for training views.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F

from .errors import ConfigError
from .images import resize

# ---- colour helpers ------------------------------------------------------------------------------------------


def gray(pixels: torch.Tensor) -> torch.Tensor:
    """(N, 3, H, W) -> (N, 1, H, W) luma (ITU-R 601, as PIL and torchvision)."""
    r, g, b = pixels[:, 0:1], pixels[:, 1:2], pixels[:, 2:3]
    return 0.299 * r + 0.587 * g + 0.114 * b


def rgb_to_hsv(pixels: torch.Tensor) -> torch.Tensor:
    r, g, b = pixels.unbind(1)
    mx, _ = pixels.max(1)
    mn, _ = pixels.min(1)
    delta = mx - mn
    safe = torch.where(delta > 0, delta, torch.ones_like(delta))
    h = torch.where(
        mx == r, ((g - b) / safe) % 6, torch.where(mx == g, (b - r) / safe + 2, (r - g) / safe + 4)
    )
    h = torch.where(delta > 0, h / 6.0, torch.zeros_like(h)) % 1.0
    s = torch.where(mx > 0, delta / mx.clamp_min(1e-12), torch.zeros_like(mx))
    return torch.stack([h, s, mx], 1)


def hsv_to_rgb(hsv: torch.Tensor) -> torch.Tensor:
    h, s, v = hsv.unbind(1)
    i = torch.floor(h * 6) % 6
    f = h * 6 - torch.floor(h * 6)
    p, q, t = v * (1 - s), v * (1 - f * s), v * (1 - (1 - f) * s)
    choices = [(v, t, p), (q, v, p), (p, v, t), (p, q, v), (t, p, v), (v, p, q)]
    out = torch.zeros_like(hsv)
    for k, (rr, gg, bb) in enumerate(choices):
        m = (i == k).unsqueeze(1)
        out = torch.where(m, torch.stack([rr, gg, bb], 1), out)
    return out


def _per_sample(values: torch.Tensor) -> torch.Tensor:
    return values.view(-1, 1, 1, 1)


def _uniform(n: int, lo: float, hi: float, generator: torch.Generator | None) -> torch.Tensor:
    return lo + (hi - lo) * torch.rand(n, generator=generator)


# ---- the augmentations (probability 1) ------------------------------------------------------------------------


def hflip(pixels: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    return pixels.flip(-1)


def grayscale(pixels: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    return gray(pixels).expand(-1, 3, -1, -1).clone()


def color_jitter(
    pixels: torch.Tensor,
    generator: torch.Generator | None = None,
    brightness: float = 0.4,
    contrast: float = 0.4,
    saturation: float = 0.4,
    hue: float = 0.1,
    strength: float = 1.0,
) -> torch.Tensor:
    """Random brightness, contrast, saturation factors in [1-s, 1+s] and hue shift in [-h, h] (x strength)."""
    n = pixels.shape[0]
    b = _uniform(n, 1 - brightness * strength, 1 + brightness * strength, generator)
    c = _uniform(n, 1 - contrast * strength, 1 + contrast * strength, generator)
    s = _uniform(n, 1 - saturation * strength, 1 + saturation * strength, generator)
    h = _uniform(n, -hue * strength, hue * strength, generator)
    x = (pixels * _per_sample(b)).clamp(0, 1)
    mean = gray(x).mean(dim=(1, 2, 3), keepdim=True)
    x = (mean + (x - mean) * _per_sample(c)).clamp(0, 1)
    g = gray(x)
    x = (g + (x - g) * _per_sample(s)).clamp(0, 1)
    hsv = rgb_to_hsv(x)
    hsv = torch.stack([(hsv[:, 0] + h.view(-1, 1, 1)) % 1.0, hsv[:, 1], hsv[:, 2]], 1)
    return hsv_to_rgb(hsv).clamp(0, 1)


def hue_shift(pixels: torch.Tensor, shift: float) -> torch.Tensor:
    """Deterministic hue rotation by ``shift`` turns (used to measure what the samples carried)."""
    hsv = rgb_to_hsv(pixels)
    return hsv_to_rgb(torch.stack([(hsv[:, 0] + shift) % 1.0, hsv[:, 1], hsv[:, 2]], 1))


def gaussian_blur(
    pixels: torch.Tensor,
    generator: torch.Generator | None = None,
    sigma: tuple[float, float] = (0.1, 2.0),
    strength: float = 1.0,
) -> torch.Tensor:
    """Per-sample Gaussian blur, sigma (in pixels of the image as given) drawn uniformly in ``sigma`` x strength."""
    n = pixels.shape[0]
    sigmas = _uniform(n, sigma[0], sigma[1], generator) * strength
    out = torch.empty_like(pixels)
    for i in range(n):
        out[i] = blur_fixed(pixels[i : i + 1], float(sigmas[i]))[0]
    return out


def blur_fixed(pixels: torch.Tensor, sigma: float) -> torch.Tensor:
    """Gaussian blur with a fixed sigma (pixels), reflect padding; sigma <= 0 returns the input."""
    if sigma <= 1e-3:
        return pixels.clone()
    radius = max(1, int(math.ceil(3 * sigma)))
    radius = min(radius, (min(pixels.shape[-2:]) - 1) or 1)
    xs = torch.arange(-radius, radius + 1, dtype=pixels.dtype)
    k = torch.exp(-(xs**2) / (2 * sigma**2))
    k = k / k.sum()
    c = pixels.shape[1]
    x = F.pad(pixels, (radius, radius, 0, 0), mode="reflect")
    x = F.conv2d(x, k.view(1, 1, 1, -1).expand(c, 1, 1, -1), groups=c)
    x = F.pad(x, (0, 0, radius, radius), mode="reflect")
    return F.conv2d(x, k.view(1, 1, -1, 1).expand(c, 1, -1, 1), groups=c)


def solarize(
    pixels: torch.Tensor, generator: torch.Generator | None = None, threshold: float = 0.5
) -> torch.Tensor:
    return torch.where(pixels >= threshold, 1.0 - pixels, pixels)


def crop_box(
    h: int, w: int, generator: torch.Generator | None, scale: tuple[float, float], ratio: tuple[float, float]
) -> tuple[int, int, int, int]:
    """A random-resized-crop box (top, left, height, width) as torchvision draws it (10 tries, then centre)."""
    area = h * w
    log_r = (math.log(ratio[0]), math.log(ratio[1]))
    for _ in range(10):
        target = area * float(_uniform(1, scale[0], scale[1], generator))
        aspect = math.exp(float(_uniform(1, log_r[0], log_r[1], generator)))
        cw = int(round(math.sqrt(target * aspect)))
        ch = int(round(math.sqrt(target / aspect)))
        if 0 < cw <= w and 0 < ch <= h:
            top = int(torch.randint(0, h - ch + 1, (1,), generator=generator))
            left = int(torch.randint(0, w - cw + 1, (1,), generator=generator))
            return top, left, ch, cw
    side = min(h, w)
    return (h - side) // 2, (w - side) // 2, side, side


def random_resized_crop(
    pixels: torch.Tensor,
    generator: torch.Generator | None = None,
    scale: tuple[float, float] = (0.08, 1.0),
    ratio: tuple[float, float] = (3 / 4, 4 / 3),
    size: int | None = None,
) -> torch.Tensor:
    """Per-sample random crop of area fraction in ``scale``, resized back to ``size`` (default: input size)."""
    n, _, h, w = pixels.shape
    out_size = (size, size) if size else (h, w)
    out = []
    for i in range(n):
        top, left, ch, cw = crop_box(h, w, generator, scale, ratio)
        out.append(resize(pixels[i : i + 1, :, top : top + ch, left : left + cw], out_size, mode="bilinear"))
    return torch.cat(out).clamp(0, 1)


def center_zoom(pixels: torch.Tensor, scale: float) -> torch.Tensor:
    """Deterministic centre crop keeping ``scale`` of the area, resized back (the probe's fixed-strength crop)."""
    h, w = pixels.shape[-2:]
    ch, cw = max(1, round(h * math.sqrt(scale))), max(1, round(w * math.sqrt(scale)))
    top, left = (h - ch) // 2, (w - cw) // 2
    return resize(pixels[..., top : top + ch, left : left + cw], (h, w), mode="bilinear").clamp(0, 1)


AUGMENTATIONS: dict[str, Callable[..., torch.Tensor]] = {
    "crop": random_resized_crop,
    "flip": hflip,
    "color_jitter": color_jitter,
    "grayscale": grayscale,
    "blur": gaussian_blur,
    "solarize": solarize,
}


def apply(
    name: str, pixels: torch.Tensor, generator: torch.Generator | None = None, **params: Any
) -> torch.Tensor:
    """Apply the named augmentation with probability 1; unknown names raise an error listing the known ones."""
    if name not in AUGMENTATIONS:
        raise ConfigError(f"unknown augmentation {name!r}; known: {', '.join(AUGMENTATIONS)}")
    return AUGMENTATIONS[name](pixels, generator, **params)


class SSLAugment:
    """The random two-view recipe of SimCLR/BYOL, scaled for small images.

    ``views(pixels, generator)`` -> two independently augmented (N, 3, size, size) batches. Each augmentation is
    applied per sample with its probability: crop (always), flip p_flip, colour jitter p_jitter, grayscale p_gray,
    blur p_blur, solarize p_solarize.
    """

    def __init__(
        self,
        size: int,
        crop_scale: tuple[float, float] = (0.2, 1.0),
        p_flip: float = 0.5,
        p_jitter: float = 0.8,
        jitter: tuple[float, float, float, float] = (0.4, 0.4, 0.4, 0.1),
        p_gray: float = 0.2,
        p_blur: float = 0.0,
        p_solarize: float = 0.0,
    ):
        self.size = size
        self.crop_scale = crop_scale
        self.p = {
            "flip": p_flip,
            "color_jitter": p_jitter,
            "grayscale": p_gray,
            "blur": p_blur,
            "solarize": p_solarize,
        }
        self.jitter = dict(zip(("brightness", "contrast", "saturation", "hue"), jitter))

    def __call__(self, pixels: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        x = random_resized_crop(pixels, generator, scale=self.crop_scale, size=self.size)
        for name in ("flip", "color_jitter", "grayscale", "blur", "solarize"):
            p = self.p[name]
            if p <= 0:
                continue
            mask = torch.rand(x.shape[0], generator=generator) < p
            if not mask.any():
                continue
            params = self.jitter if name == "color_jitter" else {}
            x = x.clone()
            x[mask] = apply(name, x[mask], generator, **params)
        return x

    def views(
        self, pixels: torch.Tensor, generator: torch.Generator | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        return self(pixels, generator), self(pixels, generator)
