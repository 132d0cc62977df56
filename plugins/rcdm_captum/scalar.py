"""The attributed scalar: how similar the representation of x' stays to a reference representation."""

from __future__ import annotations

import torch

from rcdm_core.errors import ConfigError
from rcdm_core.interfaces import Representation
from rcdm_core.stats import cosine

TARGET_HELP = (
    "what the attributed scalar compares r(x') with: 'self' (cosine with the image's own r(x)), "
    "'dim:K' (dimension K of r(x')), 'image:J' (cosine with r of run image J) or 'reference:J' (reference image J)"
)


def parse_target(spec: str) -> tuple[str, int | None]:
    """``self`` | ``dim:K`` | ``image:J`` | ``reference:J`` -> (kind, index); ConfigError on anything else."""
    kind, _, arg = str(spec).partition(":")
    if kind == "self" and not arg:
        return "self", None
    if kind in ("dim", "image", "reference") and arg.strip().isdigit():
        return kind, int(arg)
    raise ConfigError(f"attribution option target={spec!r}: write self, dim:K, image:J or reference:J")


def check_target(spec: str) -> str | None:
    try:
        parse_target(spec)
    except ConfigError as exc:
        return str(exc)
    return None


class SimilarityScalar:
    """``scalar(x, ref) -> (N,)``: cosine(r(x), ref), or the projection r(x) . ref when ``kind='dim'``.

    x: (N, 3, H, W) pixels in [0, 1] (differentiable); ref: (N, D), passed by captum through
    ``additional_forward_args`` so that it is expanded along with the inputs (steps, perturbations, noise).
    For ``dim:K`` the ref is the one-hot vector e_K, so the projection is dimension K.
    """

    def __init__(self, rep: Representation, projection: bool = False):
        self.rep = rep
        self.projection = projection

    def __call__(self, x: torch.Tensor, ref: torch.Tensor) -> torch.Tensor:
        r = self.rep.encode_with_grad(x).float()
        ref = ref.to(r.device)
        if self.projection:
            return (r * ref).sum(dim=-1)
        return cosine(r, ref)


def reference_vectors(
    kind: str,
    index: int | None,
    own: torch.Tensor,
    encode,
    run_images: torch.Tensor,
    reference: torch.Tensor | None,
) -> torch.Tensor:
    """The (N, D) reference for each image, given its own representations ``own`` (N, D).

    ``encode(pixels) -> (M, D)``; ``run_images``/``reference`` are the pixels that ``image:J``/``reference:J``
    index into.
    """
    n, dim = own.shape
    if kind == "self":
        return own.clone()
    if kind == "dim":
        if index >= dim:
            raise ConfigError(
                f"attribution option target=dim:{index}: the representation has only {dim} dimensions"
            )
        return torch.nn.functional.one_hot(torch.full((n,), index), dim).float()
    pool = run_images if kind == "image" else reference
    if pool is None:
        raise ConfigError(
            f"attribution option target=reference:{index} needs a reference set: pass --reference SRC"
        )
    if index >= len(pool):
        raise ConfigError(
            f"attribution option target={kind}:{index}: there are only {len(pool)} {kind} images"
        )
    return encode(pool[index : index + 1]).expand(n, dim).clone()
