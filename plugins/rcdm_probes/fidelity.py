"""``fidelity``: Fréchet distance and precision/recall between samples and real images.

In the feature space of any registered encoder (default: the arm's own representation), and FID proper when
the user gives the local FID Inception weights file of the pytorch-fid package (``pt_inception-2015-12-05``):
that package's port of the TensorFlow graph the official evaluator uses, so the numbers are comparable.
The network comes from pytorch-fid itself (optional dependency ``pip install pytorch-fid``); only the weights
download is replaced by the local file.
"""

from __future__ import annotations

import math
from pathlib import Path

import torch

import rcdm_core as rc
from rcdm_core.errors import CheckpointError, ConfigError
from rcdm_core.io import check_finite, safe_load

from ._common import fmt, reference_features, standard_samples


def _centred(feats: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    x = feats.detach().double().cpu()
    if len(x) < 2:
        raise ConfigError(
            f"fidelity: a Fréchet distance needs at least 2 feature vectors per set, got {len(x)}"
        )
    mu = x.mean(0)
    return mu, x - mu


def _clean(w: torch.Tensor) -> torch.Tensor:
    """Eigenvalues of a PSD matrix with rounding noise (below D * eps * max) set to 0 before a square root."""
    tol = len(w) * torch.finfo(torch.float64).eps * max(float(w.abs().max()) if len(w) else 0.0, 1e-300)
    return torch.where(w > tol, w, torch.zeros_like(w))


def trace_sqrt_product(s1: torch.Tensor, s2: torch.Tensor) -> float:
    """tr((s1 s2)^(1/2)) for PSD (D, D) matrices: the sum of square roots of the eigenvalues of the symmetric
    PSD matrix s1^(1/2) s2 s1^(1/2), which has the eigenvalues of s1 s2 (stable where sqrtm needs an epsilon)."""
    w, v = torch.linalg.eigh((s1 + s1.T) / 2)
    r = (v * _clean(w).sqrt()) @ v.T
    m = r @ s2 @ r
    return float(_clean(torch.linalg.eigvalsh((m + m.T) / 2)).sqrt().sum())


def frechet_from_stats(mu1: torch.Tensor, s1: torch.Tensor, mu2: torch.Tensor, s2: torch.Tensor) -> float:
    """||mu1 - mu2||^2 + tr(s1 + s2 - 2 (s1 s2)^(1/2)) from means (D,) and covariances (D, D), float64."""
    mu1, s1, mu2, s2 = (t.double() for t in (mu1, s1, mu2, s2))
    diff = mu1 - mu2
    return float(diff @ diff + s1.trace() + s2.trace()) - 2 * trace_sqrt_product(s1, s2)


def frechet_distance(a: torch.Tensor, b: torch.Tensor) -> float:
    """Fréchet distance between Gaussians fitted to feature sets a (N, D) and b (M, D) (unbiased covariances).

    With fewer points than dimensions it works in the points' span: with centred X1, X2,
    tr((s1 s2)^(1/2)) = ||X1 X2^T||_* / sqrt((N-1)(M-1)) (the singular values of X1 X2^T are the square roots
    of the non-zero eigenvalues of s1 s2), an (N, M) problem instead of (D, D); otherwise it uses the
    covariances.
    """
    mu1, x1 = _centred(a)
    mu2, x2 = _centred(b)
    n, m, d = len(x1), len(x2), x1.shape[1]
    if max(n, m) <= d:
        diff = mu1 - mu2
        traces = float((x1 * x1).sum()) / (n - 1) + float((x2 * x2).sum()) / (m - 1)
        nuclear = float(torch.linalg.svdvals(x1 @ x2.T).sum()) / math.sqrt((n - 1) * (m - 1))
        return float(diff @ diff) + traces - 2 * nuclear
    return frechet_from_stats(mu1, x1.T @ x1 / (n - 1), mu2, x2.T @ x2 / (m - 1))


def precision_recall(real: torch.Tensor, fake: torch.Tensor, k: int = 3) -> tuple[float, float]:
    """Improved precision and recall (Kynkäänniemi et al. 2019) with k-NN manifolds.

    precision: fraction of fake points inside some real point's k-NN ball; recall: fraction of real points
    inside some fake point's k-NN ball. real (N, D), fake (M, D); each set needs more than k points.
    """
    real, fake = real.double(), fake.double()

    def radii(x: torch.Tensor) -> torch.Tensor:
        return torch.cdist(x, x).topk(k + 1, dim=1, largest=False).values[:, -1]  # +1: self at distance 0

    def coverage(manifold: torch.Tensor, r: torch.Tensor, probes: torch.Tensor) -> float:
        return float((torch.cdist(probes, manifold) <= r[None]).any(dim=1).double().mean())

    return coverage(real, radii(real), fake), coverage(fake, radii(fake), real)


# ---- FID Inception (pytorch-fid) -------------------------------------------------------------------------------

_INCEPTION: dict[tuple[str, str], torch.nn.Module] = {}


def fid_inception(
    weights: str | Path, device: torch.device, trust_checkpoint: bool = False
) -> torch.nn.Module:
    """pytorch-fid's InceptionV3 (pool3, 2048-d, input resized to 299 and scaled to [-1, 1]) from a local file."""
    try:
        import pytorch_fid.inception as pfi
    except ImportError:
        raise ConfigError(
            "fidelity.inception_weights needs the pytorch-fid package for the FID Inception network: "
            "pip install pytorch-fid (or pip install 'rcdm[fid]')"
        ) from None
    path = Path(weights)
    if not path.exists():
        raise CheckpointError(f"fidelity.inception_weights {path}: no such file")
    key = (str(path.resolve()), str(device))
    if key not in _INCEPTION:
        state = safe_load(path, trust_checkpoint=trust_checkpoint)
        if isinstance(state, dict):
            check_finite(state, path)
        loaded: list[str] = []

        def local(url, *args, **kwargs):  # pytorch-fid calls this with its release URL; we hand it the file
            loaded.append(url)
            return state

        original = pfi.load_state_dict_from_url
        pfi.load_state_dict_from_url = local
        try:
            model = pfi.InceptionV3([pfi.InceptionV3.BLOCK_INDEX_BY_DIM[2048]])
        except RuntimeError as exc:  # load_state_dict is strict inside pytorch-fid
            raise CheckpointError(
                f"{path}: not the pytorch-fid FID Inception weights ({str(exc).splitlines()[0]})"
            ) from None
        finally:
            pfi.load_state_dict_from_url = original
        if not loaded:
            raise CheckpointError(
                "pytorch-fid did not load weights through the expected call; its version is unsupported"
            )
        _INCEPTION[key] = model.to(device).eval()
    return _INCEPTION[key]


@torch.inference_mode()
def inception_features(
    model: torch.nn.Module, pixels: torch.Tensor, device: torch.device, batch_size: int
) -> torch.Tensor:
    """pixels (N, 3, H, W) in [0, 1] -> (N, 2048). Quantised to 8 bits first, as the evaluator reads PNGs."""
    out = []
    for i in range(0, len(pixels), batch_size):
        x = (pixels[i : i + batch_size].float().clamp(0, 1) * 255).round() / 255
        out.append(model(x.to(device))[0].flatten(1).double().cpu())
    return torch.cat(out)


class FidelityProbe(rc.Probe):
    """Per arm: Fréchet distance and precision/recall of its samples against real images."""

    name = "fidelity"
    OPTIONS = {
        "feature_encoder": rc.Option(
            "", "registered encoder for the feature space (default: each arm's own)"
        ),
        "feature_weights": rc.Option(None, "weights file for feature_encoder"),
        "feature_layer": rc.Option("backbone", "layer of feature_encoder"),
        "inception_weights": rc.Option(None, "local pytorch-fid FID Inception weights file -> FID proper"),
        "k_nn": rc.Option(3, "neighbours for the precision/recall manifolds", type=int),
    }

    def __init__(
        self,
        feature_encoder="",
        feature_weights=None,
        feature_layer="backbone",
        inception_weights=None,
        k_nn=3,
    ):
        self.feature_encoder, self.feature_weights, self.feature_layer = (
            feature_encoder,
            feature_weights,
            feature_layer,
        )
        self.inception_weights, self.k_nn = inception_weights, int(k_nn)

    def run(self, ctx: rc.ProbeContext) -> rc.ProbeResult:
        real_all = ctx.reference if ctx.reference is not None else ctx.images
        real_name = (
            f"the {len(real_all)} reference images"
            if ctx.reference is not None
            else f"the run's {len(real_all)} images"
        )
        shared = None
        if self.feature_encoder:
            shared = rc.load_encoder(
                self.feature_encoder, self.feature_weights, self.feature_layer, device=ctx.device
            )
        inception = fid_inception(self.inception_weights, ctx.device) if self.inception_weights else None
        metrics, notes, parts = {}, [], []
        real_incep = None
        shared_real: dict[int, torch.Tensor] = {}  # the real set through the shared encoder, per resolution
        for arm in ctx.arms:
            _, samples = standard_samples(ctx, arm)
            fake = samples.flatten(0, 1)
            real = ctx.images_for(arm, real_all)
            if shared is not None:
                side = real.shape[-1]
                if side not in shared_real:
                    shared_real[side] = shared.encode(real.to(ctx.device), batch_size=ctx.batch_size).cpu()
                f_real = shared_real[side]
                f_fake = shared.encode(fake.to(ctx.device), batch_size=ctx.batch_size).cpu()
                space = f"{self.feature_encoder}:{self.feature_layer}"
            else:
                f_real = reference_features(ctx, arm) if ctx.reference is not None else ctx.encode(arm, real)
                f_fake = ctx.encode(arm, fake)
                space = f"{arm.spec.encoder}:{arm.spec.layer} (the arm's own)"
            m = {
                "feature_space": space,
                "n_real": len(real),
                "n_fake": len(fake),
                "fd": frechet_distance(f_fake, f_real),
            }
            if min(len(real), len(fake)) > self.k_nn:
                m["precision"], m["recall"] = precision_recall(f_real, f_fake, self.k_nn)
            else:
                notes.append(
                    f"Arm {arm.name}: precision/recall need more than k_nn={self.k_nn} real and fake images; skipped."
                )
            if inception is not None:
                if real_incep is None:  # the real set at the run's resolution, once for all arms
                    real_incep = inception_features(inception, real_all, ctx.device, ctx.batch_size)
                m["fid"] = frechet_distance(
                    inception_features(inception, fake, ctx.device, ctx.batch_size), real_incep
                )
            metrics[arm.name] = m
            parts.append(f"{arm.name}: FD {fmt(m['fd'])}" + (f", FID {fmt(m['fid'])}" if "fid" in m else ""))
            pr = f", precision {fmt(m['precision'])}, recall {fmt(m['recall'])}" if "precision" in m else ""
            notes.append(
                f"Arm {arm.name}: Fréchet distance {fmt(m['fd'])} in {space} between {len(fake)} samples and "
                f"{real_name}{pr}"
                + (f"; FID (pytorch-fid Inception) {fmt(m['fid'])}." if "fid" in m else ".")
            )
            dim = f_real.shape[1]
            if min(len(real), len(fake)) < dim:
                notes.append(
                    f"Arm {arm.name}: fewer images than feature dimensions ({min(len(real), len(fake))} < {dim}): the "
                    "Fréchet distance is dominated by estimation bias; compare arms only at equal sample counts."
                )
        if inception is None:
            notes.append(
                "No FID: give fidelity.inception_weights (pytorch-fid's pt_inception-2015-12-05 file) for FID proper."
            )
        return rc.ProbeResult(metrics=metrics, summary="; ".join(parts), notes=notes)
