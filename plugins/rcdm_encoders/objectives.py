"""The four SSL objectives, on two batches of projections of two views of the same images.

z1, z2: (N, D) projector outputs (row i of both comes from image i). Each returns a scalar loss; the VICReg and
DINO helpers also return their parts. Defaults are the papers'.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def nt_xent(z1: torch.Tensor, z2: torch.Tensor, temperature: float = 0.5) -> torch.Tensor:
    """SimCLR's normalised-temperature cross-entropy over the 2N views: each view's positive is its twin, the
    other 2N - 2 views are negatives; mean over all 2N anchors."""
    n = z1.shape[0]
    z = F.normalize(torch.cat([z1, z2]), dim=1)
    logits = z @ z.T / temperature
    logits = logits.masked_fill(torch.eye(2 * n, dtype=torch.bool, device=z.device), float("-inf"))
    targets = torch.cat([torch.arange(n, 2 * n), torch.arange(0, n)]).to(z.device)
    return F.cross_entropy(logits, targets)


def _off_diagonal(m: torch.Tensor) -> torch.Tensor:
    return m.masked_select(~torch.eye(m.shape[0], dtype=torch.bool, device=m.device))


def vicreg(
    z1: torch.Tensor,
    z2: torch.Tensor,
    sim_coeff: float = 25.0,
    std_coeff: float = 25.0,
    cov_coeff: float = 1.0,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """VICReg: invariance (MSE), variance (hinge on the per-dimension std at 1, eps 1e-4) and covariance
    (squared off-diagonal covariances / D), as in facebookresearch/vicreg."""
    n, d = z1.shape
    inv = F.mse_loss(z1, z2)
    x, y = z1 - z1.mean(0), z2 - z2.mean(0)
    std_x, std_y = torch.sqrt(x.var(0) + 1e-4), torch.sqrt(y.var(0) + 1e-4)
    var = F.relu(1 - std_x).mean() / 2 + F.relu(1 - std_y).mean() / 2
    cov_x, cov_y = x.T @ x / (n - 1), y.T @ y / (n - 1)
    cov = _off_diagonal(cov_x).pow(2).sum() / d + _off_diagonal(cov_y).pow(2).sum() / d
    loss = sim_coeff * inv + std_coeff * var + cov_coeff * cov
    return loss, {"invariance": inv.detach(), "variance": var.detach(), "covariance": cov.detach()}


def barlow_twins(
    z1: torch.Tensor, z2: torch.Tensor, lambd: float = 0.0051, eps: float = 1e-5
) -> torch.Tensor:
    """Barlow Twins: cross-correlation of the batch-standardised projections (the loss's BatchNorm without
    affine: biased variance, eps 1e-5) pushed to the identity; off-diagonal terms weighted by ``lambd``."""
    n = z1.shape[0]

    def standardise(z: torch.Tensor) -> torch.Tensor:
        return (z - z.mean(0)) / torch.sqrt(z.var(0, unbiased=False) + eps)

    c = standardise(z1).T @ standardise(z2) / n
    on = (torch.diagonal(c) - 1).pow(2).sum()
    off = _off_diagonal(c).pow(2).sum()
    return on + lambd * off


def dino(
    student: list[torch.Tensor],
    teacher: list[torch.Tensor],
    center: torch.Tensor,
    student_temp: float = 0.1,
    teacher_temp: float = 0.04,
) -> torch.Tensor:
    """DINO: cross-entropy between the centred, sharpened teacher distribution of one view and the student's
    distribution of every OTHER view, averaged over pairs. Inputs are prototype scores (N, K) per view."""
    targets = [F.softmax((t - center) / teacher_temp, dim=-1).detach() for t in teacher]
    logs = [F.log_softmax(s / student_temp, dim=-1) for s in student]
    total, terms = 0.0, 0
    for i, q in enumerate(targets):
        for j, log_p in enumerate(logs):
            if i == j:
                continue
            total = total + torch.sum(-q * log_p, dim=-1).mean()
            terms += 1
    return total / terms


@torch.no_grad()
def updated_center(center: torch.Tensor, teacher: list[torch.Tensor], momentum: float = 0.9) -> torch.Tensor:
    """DINO's centre: an EMA of the teacher's mean output (over this batch's views; all ranks when distributed)."""
    mean = torch.cat(teacher).mean(0, keepdim=True)
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.all_reduce(mean)
        mean /= torch.distributed.get_world_size()
    return center * momentum + mean * (1 - momentum)
