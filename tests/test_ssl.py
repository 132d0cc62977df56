"""SSL objectives against values worked out independently (numpy, explicit loops), and a training smoke test."""

from __future__ import annotations

import json
import math

import numpy as np
import torch
from rcdm_encoders import objectives as O

import rcdm_core as rc
from tests.conftest import run_cli


def _pair(n=5, d=4, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, d, generator=g, dtype=torch.float64), torch.randn(
        n, d, generator=g, dtype=torch.float64
    )


def test_nt_xent_matches_the_per_anchor_formula():
    z1, z2 = _pair()
    t = 0.5
    z = np.concatenate([z1.numpy(), z2.numpy()])
    z = z / np.linalg.norm(z, axis=1, keepdims=True)
    n2 = len(z)
    total = 0.0
    for k in range(n2):
        pos = (k + n2 // 2) % n2
        denom = sum(math.exp(z[k] @ z[j] / t) for j in range(n2) if j != k)
        total += -math.log(math.exp(z[k] @ z[pos] / t) / denom)
    assert math.isclose(float(O.nt_xent(z1, z2, t)), total / n2, rel_tol=1e-10)


def test_vicreg_matches_variance_invariance_covariance_by_hand():
    z1, z2 = _pair(6, 3, seed=1)
    a, b = z1.numpy(), z2.numpy()
    n, d = a.shape
    inv = ((a - b) ** 2).mean()

    def var_term(x):
        std = np.sqrt(x.var(axis=0, ddof=1) + 1e-4)
        return np.maximum(0, 1 - std).mean()

    def cov_term(x):
        xc = x - x.mean(0)
        c = xc.T @ xc / (n - 1)
        return sum(c[i, j] ** 2 for i in range(d) for j in range(d) if i != j) / d

    want = 25 * inv + 25 * (var_term(a) / 2 + var_term(b) / 2) + (cov_term(a) + cov_term(b))
    loss, parts = O.vicreg(z1, z2)
    assert math.isclose(float(loss), want, rel_tol=1e-10)
    assert math.isclose(float(parts["invariance"]), inv, rel_tol=1e-10)


def test_barlow_twins_matches_the_cross_correlation_by_hand():
    z1, z2 = _pair(7, 3, seed=2)
    a, b = z1.numpy(), z2.numpy()
    an = (a - a.mean(0)) / np.sqrt(a.var(0) + 1e-5)
    bn = (b - b.mean(0)) / np.sqrt(b.var(0) + 1e-5)
    c = np.zeros((3, 3))
    for i in range(3):
        for j in range(3):
            c[i, j] = sum(an[k, i] * bn[k, j] for k in range(7)) / 7
    want = sum((c[i, i] - 1) ** 2 for i in range(3)) + 0.0051 * sum(
        c[i, j] ** 2 for i in range(3) for j in range(3) if i != j
    )
    assert math.isclose(float(O.barlow_twins(z1, z2)), want, rel_tol=1e-10)
    # identical, standardised, decorrelated views give zero loss
    eye = torch.tensor([[1.0, 1.0], [1.0, -1.0], [-1.0, 1.0], [-1.0, -1.0]], dtype=torch.float64)
    assert float(O.barlow_twins(eye, eye, eps=0.0)) == 0.0


def test_dino_cross_entropy_over_other_views_with_centre_and_temperatures():
    g = torch.Generator().manual_seed(3)
    s = [torch.randn(4, 6, generator=g, dtype=torch.float64) for _ in range(2)]
    t = [torch.randn(4, 6, generator=g, dtype=torch.float64) for _ in range(2)]
    center = torch.randn(1, 6, generator=g, dtype=torch.float64)

    def softmax(x):
        e = np.exp(x - x.max(axis=1, keepdims=True))
        return e / e.sum(axis=1, keepdims=True)

    terms = []
    for i in range(2):
        for j in range(2):
            if i != j:
                q = softmax((t[i].numpy() - center.numpy()) / 0.04)
                logp = np.log(softmax(s[j].numpy() / 0.1))
                terms.append((-(q * logp).sum(axis=1)).mean())
    assert math.isclose(float(O.dino(s, t, center)), sum(terms) / len(terms), rel_tol=1e-10)
    new = O.updated_center(center, t, momentum=0.9)
    assert torch.allclose(new, 0.9 * center + 0.1 * torch.cat(t).mean(0, keepdim=True))


def test_train_encoder_loss_falls_and_the_file_loads_back_as_ssl_small(tmp_path, manager):
    out = tmp_path / "run"
    res = run_cli(
        "train-encoder",
        "--method",
        "vicreg",
        "--data",
        "builtin:photos?size=16",
        "--out",
        str(out),
        "--steps",
        "16",
        "--batch-size",
        "16",
        "--size",
        "16",
        "--width",
        "4",
        "--limit",
        "48",
        "--lr",
        "3e-3",
        "--device",
        "cpu",
    )
    assert res.returncode == 0, res.stderr
    losses = [float(r.split(",")[1]) for r in (out / "losses.csv").read_text().splitlines()[1:]]
    header = (out / "losses.csv").read_text().splitlines()[0].split(",")
    assert header[:2] == ["step", "loss"] and len(losses) == 16
    assert np.mean(losses[-4:]) < np.mean(losses[:4])
    path = out / "ssl_small_vicreg.pt"
    side = json.loads(path.with_suffix(".json").read_text())
    assert side["method"] == "vicreg" and side["architecture"]["widths"] == [4, 8, 16, 32]
    assert side["command"][:2] == ["rcdm", "train-encoder"]
    for layer, dim in (("backbone", 32), ("projector", 128)):
        rep = rc.load_encoder("ssl-small", weights=str(path), layer=layer)
        assert rep.dim == dim and not rep.encoder.random_weights and rep.encoder.input_size == 16
        assert rep.encode(torch.rand(2, 3, 16, 16)).shape == (2, dim)
