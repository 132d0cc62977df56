"""Helpers the probes of this plugin share: sample ids, seeded generators, the cached standard samples,
source ranking, option converters and figure rows.

Sample ids: every sampling call of a probe uses its own *stream*; row (image i, sample k) of stream s gets id
``s * STREAM + i * K + k``. Ids are deterministic and disjoint between uses, so the same seed gives the same
numbers and the batch a row happens to sit in never matters.
"""

from __future__ import annotations

import hashlib
import weakref
from collections.abc import Sequence
from typing import Any

import torch

import rcdm_core as rc
from rcdm_core.errors import ConfigError
from rcdm_core.images import resize
from rcdm_core.stats import cosine

STREAM = 10_000_000

# Streams, one per use. The standard samples (one set per image, conditioned on r(x)) are shared between probes.
STANDARD = 0
INVARIANCE = 1  # + index of the augmentation in AUGMENTATIONS
ADVERSARIAL = 20
MANIPULATION_ZERO = 30
MANIPULATION_SWAP = 31
INTERPOLATION = 40


def stream_ids(stream: int, image_indices: Sequence[int], per_image: int) -> list[int]:
    """Ids of rows (image i, sample k), image-major: ``stream * STREAM + i * per_image + k``."""
    return [stream * STREAM + int(i) * per_image + k for i in image_indices for k in range(per_image)]


def generator_for(seed: int, *keys: Any) -> torch.Generator:
    """A CPU generator keyed on (seed, keys): the same keys give the same draws on every machine."""
    text = ":".join(["rcdm_probes", str(int(seed)), *map(str, keys)])
    digest = hashlib.blake2b(text.encode(), digest_size=8).digest()
    return torch.Generator().manual_seed(int.from_bytes(digest, "little") & ((1 << 63) - 1))


def derangement(n: int, generator: torch.Generator) -> list[int]:
    """A random permutation with no fixed point (Sattolo's algorithm: a single n-cycle); n >= 2."""
    perm = list(range(n))
    for i in range(n - 1, 0, -1):
        j = int(torch.randint(0, i, (1,), generator=generator))
        perm[i], perm[j] = perm[j], perm[i]
    return perm


# ---- conditions and samples ---------------------------------------------------------------------------------

_CACHE: dict[tuple, tuple[weakref.ref, Any]] = {}


def cached(ctx: rc.ProbeContext, key: tuple, compute):
    """``compute()`` once per (context, key); entries die with their context (ids of dead contexts are reused)."""
    for k in [k for k, (ref, _) in _CACHE.items() if ref() is None]:
        del _CACHE[k]
    full = (id(ctx), *key)
    hit = _CACHE.get(full)
    if hit is not None and hit[0]() is ctx:
        return hit[1]
    value = compute()
    _CACHE[full] = (weakref.ref(ctx), value)
    return value


def _arm_key(ctx: rc.ProbeContext, arm: rc.ArmRuntime, images: torch.Tensor) -> tuple:
    return (arm.name, id(arm.denoiser), id(arm.rep), images.data_ptr(), tuple(images.shape))


def standard_samples(ctx: rc.ProbeContext, arm: rc.ArmRuntime) -> tuple[torch.Tensor, torch.Tensor]:
    """cond r(x) (N, D) and samples (N, K, 3, S, S) in [0, 1], K = ctx.n_samples, stream STANDARD.

    Computed once per (context, arm, seed) and shared by the probes of a run (samples, faithfulness,
    fidelity, invariance, adversarial and manipulation all start from the same samples of r(x)).
    """

    def compute():
        cond = ctx.encode(arm, ctx.images_for(arm))
        return cond, sample_per_image(ctx, arm, cond, STANDARD)

    key = (
        "standard",
        *_arm_key(ctx, arm, ctx.images),
        ctx.seed,
        ctx.n_samples,
        ctx.sampler_spec,
        id(ctx.sampler),
    )
    cond, samples = cached(ctx, key, compute)
    return cond.clone(), samples.clone()


def reference_features(ctx: rc.ProbeContext, arm: rc.ArmRuntime) -> torch.Tensor:
    """The reference set through the arm's representation (M, D), computed once per run and arm."""
    ref = ctx.require_reference(1, "this probe")
    key = ("reference", *_arm_key(ctx, arm, ref))
    return cached(ctx, key, lambda: ctx.encode(arm, ctx.images_for(arm, ref))).clone()


def sample_per_image(
    ctx: rc.ProbeContext, arm: rc.ArmRuntime, cond: torch.Tensor, stream: int, per_image: int | None = None
) -> torch.Tensor:
    """cond (N, D) -> samples (N, K, 3, S, S) in [0, 1] with ids of ``stream`` (K = per_image or n_samples)."""
    k = per_image or ctx.n_samples
    n = len(cond)
    with torch.no_grad():  # a sampler that leaves autograd on must not keep graphs alive
        flat = ctx.sample(arm, cond.repeat_interleave(k, 0), sample_ids=stream_ids(stream, range(n), k))
    return flat.view(n, k, *flat.shape[1:])


def embed_samples(ctx: rc.ProbeContext, arm: rc.ArmRuntime, samples: torch.Tensor) -> torch.Tensor:
    """samples (N, K, 3, S, S) -> their representation (N, K, D) with the arm's own encoder and layer."""
    n, k = samples.shape[:2]
    return ctx.encode(arm, samples.flatten(0, 1)).view(n, k, -1)


def resolve_target(ctx: rc.ProbeContext, target: Any, option: str) -> list[int]:
    """For each run image, the index of its target image: ``next`` (the following image, cyclic), an image
    id of the run, or an integer index."""
    n = len(ctx.ids)
    if target in (None, "", "next"):
        if n < 2:
            raise ConfigError(f"{option}=next needs at least 2 images; --n-images is {n}")
        return [(i + 1) % n for i in range(n)]
    if isinstance(target, int) and not isinstance(target, bool):
        if not 0 <= target < n:
            raise ConfigError(f"{option}={target}: index out of range for {n} images (0..{n - 1})")
        return [target] * n
    if str(target) in ctx.ids:
        return [ctx.ids.index(str(target))] * n
    raise ConfigError(
        f"{option}={target!r}: give 'next', an image index 0..{n - 1} or one of the run's image ids"
    )


# ---- faithfulness ranking -----------------------------------------------------------------------------------


def candidate_set(ctx: rc.ProbeContext, arm: rc.ArmRuntime, cond: torch.Tensor) -> tuple[torch.Tensor, str]:
    """The real images a sample's source is ranked among, as representations (C, D), and a description.

    With a reference set: the N source images first (so index i is source i), then the reference images.
    Without: the run's own N images.
    """
    if ctx.reference is None:
        return cond, f"the run's {len(cond)} images (no --reference given)"
    ref = reference_features(ctx, arm)
    return torch.cat([cond, ref]), f"the {len(cond)} source images plus {len(ref)} reference images"


def source_ranks(sample_feats: torch.Tensor, source: torch.Tensor, candidates: torch.Tensor) -> torch.Tensor:
    """Rank (1 = best) of each sample's true source among the candidates, by cosine similarity.

    sample_feats: (M, D); source: (M,) index into candidates (C, D). Rank = 1 + the number of candidates
    strictly more similar than the source, so an exact duplicate of the source costs nothing.
    """
    a = torch.nn.functional.normalize(sample_feats.double(), dim=-1, eps=1e-12)
    b = torch.nn.functional.normalize(candidates.double(), dim=-1, eps=1e-12)
    sims = a @ b.T
    src = sims.gather(1, source.view(-1, 1).long())
    return 1 + (sims > src).sum(dim=1)


def rank_metrics(
    sample_feats: torch.Tensor, source: torch.Tensor, candidates: torch.Tensor, source_feats: torch.Tensor
) -> dict[str, float]:
    """mean_rank, top1, top5 (rates) and cosine (mean cosine of each sample to its source's representation)."""
    ranks = source_ranks(sample_feats, source, candidates).double()
    return {
        "mean_rank": float(ranks.mean()),
        "top1": float((ranks <= 1).double().mean()),
        "top5": float((ranks <= 5).double().mean()),
        "cosine": float(cosine(sample_feats, source_feats[source.long()]).mean()),
    }


# ---- pixel measures used to read samples ---------------------------------------------------------------------

LOW = 16  # side at which samples are compared with images: layout and colour, not texture


def low(pixels: torch.Tensor, side: int = LOW) -> torch.Tensor:
    """(..., 3, H, W) -> (..., 3, side, side), antialiased."""
    shape = pixels.shape
    out = resize(pixels.reshape(-1, *shape[-3:]).float(), side, mode="bilinear")
    return out.view(*shape[:-2], side, side)


def low_mse(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Mean squared difference at LOW resolution over the last three dims (broadcasting)."""
    return (low(a) - low(b)).pow(2).flatten(-3).mean(-1)


# ---- options ----------------------------------------------------------------------------------------------------


def str_list(value: Any) -> list[str]:
    """``"flip,grayscale"`` or ``["flip", "grayscale"]`` -> list of names."""
    if isinstance(value, str):
        return [v.strip() for v in value.split(",") if v.strip()]
    return [str(v) for v in value]


def float_range(value: Any) -> tuple[float, float]:
    """A number (fixed) or [lo, hi] -> (lo, hi)."""
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value), float(value)
    lo, hi = (float(v) for v in value)
    return lo, hi


def positive_int(name: str):
    def check(v: Any) -> str | None:
        return (
            None
            if isinstance(v, int) and not isinstance(v, bool) and v > 0
            else f"{name} must be > 0, got {v!r}"
        )

    return check


def rel(ctx: rc.ProbeContext, path) -> str:
    """A written figure's path relative to the run folder (what ProbeResult.figures holds)."""
    return str(path.relative_to(ctx.out_dir)) if path.is_relative_to(ctx.out_dir) else str(path)


def safe_name(name: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in name)


def fmt(v: float) -> str:
    return f"{v:.3g}"
