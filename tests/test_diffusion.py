"""rcdm_core.diffusion against values computed independently here from paper.md's "Diffusion numerics"."""

from __future__ import annotations

import math
from fractions import Fraction

import numpy as np
import pytest
import torch

from rcdm_core.diffusion import Diffusion, get_betas, space_timesteps
from rcdm_core.errors import ConfigError


def test_linear_schedule_endpoints_scale_with_T():
    betas = get_betas("linear", 1000)
    assert betas.dtype == np.float64 and len(betas) == 1000
    assert betas[0] == 1e-4 and betas[-1] == 0.02
    short = get_betas("linear", 250)
    assert short[0] == pytest.approx(4e-4, abs=0) and short[-1] == pytest.approx(0.08, abs=1e-17)


def test_cosine_schedule_matches_closed_form():
    T = 50
    betas = get_betas("cosine", T)
    f = [math.cos(((s / T) + 0.008) / 1.008 * math.pi / 2) ** 2 for s in range(T + 1)]
    expected = [min(1 - f[i + 1] / f[i], 0.999) for i in range(T)]
    assert np.array_equal(betas, np.array(expected))
    assert betas[-1] == 0.999  # the cap applies at the last step


def test_respacing_official_examples():
    hundred = space_timesteps(1000, "100")
    assert hundred[:3] == [0, 10, 20] and hundred[-3:] == [979, 989, 999] and len(hundred) == 100
    assert space_timesteps(1000, "ddim25") == list(range(0, 1000, 40))
    for n in (21, 27, 53):
        kept = space_timesteps(1000, str(n))
        assert len(kept) == n and 499 in kept and 500 not in kept
    # In exact arithmetic step 13 of "27" is 499.5, which rounds half-to-even to 500: the float accumulator
    # (slightly below 499.5) is what makes the official rule keep 499.
    assert round(Fraction(13 * 999, 26)) == 500


def test_respacing_sections_and_edges():
    # T=10 in 3 sections of sizes 4, 3, 3: counts 2, 1, 3.
    assert space_timesteps(10, "2,1,3") == [0, 3, 4, 7, 8, 9]
    assert space_timesteps(1000, "1") == [0]
    assert space_timesteps(1000, "1000") == list(range(1000))
    assert space_timesteps(1000, "ddim1000") == list(range(1000))
    with pytest.raises(ConfigError, match="no integer stride"):
        space_timesteps(1000, "ddim1")
    with pytest.raises(ConfigError, match="section of 1000"):
        space_timesteps(1000, "1001")
    with pytest.raises(ConfigError, match="positive"):
        space_timesteps(1000, "0")
    with pytest.raises(ConfigError, match="ddimN"):
        space_timesteps(1000, "abc")


def _independent_tables(T: int = 1000, kept=None):
    betas = np.linspace(1e-4 * 1000 / T, 0.02 * 1000 / T, T)
    ab_full = np.cumprod(1 - betas)
    kept = list(range(T)) if kept is None else kept
    ab = ab_full[kept]
    ab_prev = np.concatenate([[1.0], ab[:-1]])
    b = 1 - ab / ab_prev
    post_var = b * (1 - ab_prev) / (1 - ab)
    return b, ab, ab_prev, post_var


def test_respaced_betas_from_kept_alphabar():
    kept = space_timesteps(1000, "10")
    diff = Diffusion.from_flags(1000, "linear", "10")
    b, ab, _, _ = _independent_tables(1000, kept)
    assert np.allclose(diff.betas, b, rtol=1e-12, atol=0)
    assert np.allclose(diff.alphas_cumprod, ab, rtol=1e-12, atol=0)
    assert diff.timestep_map.tolist() == kept and diff.num_timesteps == 10


def test_q_sample_and_posterior_against_formulas():
    diff = Diffusion.from_flags(1000, "linear", "25")
    b, ab, ab_prev, post_var = _independent_tables(1000, space_timesteps(1000, "25"))
    g = torch.Generator().manual_seed(0)
    x0 = torch.rand(3, 3, 4, 4, generator=g) * 2 - 1
    noise = torch.randn(3, 3, 4, 4, generator=g)
    t = torch.tensor([0, 7, 24])
    xt = diff.q_sample(x0, t, noise)
    for i, ti in enumerate(t.tolist()):
        want = math.sqrt(ab[ti]) * x0[i].double() + math.sqrt(1 - ab[ti]) * noise[i].double()
        assert torch.allclose(xt[i].double(), want, atol=1e-6)
    mean, var, logvar = diff.q_posterior_mean_variance(x0, xt, t)
    for i, ti in enumerate(t.tolist()):
        c1 = b[ti] * math.sqrt(ab_prev[ti]) / (1 - ab[ti])
        c2 = (1 - ab_prev[ti]) * math.sqrt(1 - b[ti]) / (1 - ab[ti])
        assert torch.allclose(mean[i].double(), c1 * x0[i].double() + c2 * xt[i].double(), atol=1e-6)
        assert var[i].item() == pytest.approx(post_var[ti], rel=1e-6)
        # clipped log: t = 0 uses the t = 1 value
        assert logvar[i].item() == pytest.approx(math.log(post_var[max(ti, 1)]), rel=1e-6)
    assert var[0].item() == 0.0


def test_p_mean_variance_learned_range_and_clipping():
    diff = Diffusion.from_flags(1000, "linear", "")
    b, ab, ab_prev, post_var = _independent_tables(1000)
    g = torch.Generator().manual_seed(1)
    x_t = torch.randn(2, 3, 4, 4, generator=g) * 2
    out = torch.randn(2, 6, 4, 4, generator=g)
    t = torch.tensor([0, 600])
    res = diff.p_mean_variance(out, x_t, t, clip_denoised=True)
    for i, ti in enumerate(t.tolist()):
        eps, v = out[i, :3].double(), out[i, 3:].double()
        frac = (v + 1) / 2
        min_log = math.log(post_var[max(ti, 1)])
        logv = frac * math.log(b[ti]) + (1 - frac) * min_log
        assert torch.allclose(res["log_variance"][i].double(), logv, atol=1e-5)
        x0 = (math.sqrt(1 / ab[ti]) * x_t[i].double() - math.sqrt(1 / ab[ti] - 1) * eps).clamp(-1, 1)
        assert torch.allclose(res["pred_xstart"][i].double(), x0, atol=1e-5)
        c1 = b[ti] * math.sqrt(ab_prev[ti]) / (1 - ab[ti])
        c2 = (1 - ab_prev[ti]) * math.sqrt(1 - b[ti]) / (1 - ab[ti])
        assert torch.allclose(res["mean"][i].double(), c1 * x0 + c2 * x_t[i].double(), atol=1e-5)
    assert res["pred_xstart"].abs().max() <= 1.0
    assert torch.equal(res["eps"], out[:, :3])


def test_values_indexed_in_float64_then_cast():
    diff = Diffusion.from_flags()
    t = torch.tensor([999])
    got = diff.extract("sqrt_recipm1_alphas_cumprod", t).item()
    assert got == float(np.float32(diff.sqrt_recipm1_alphas_cumprod[999]))


class _Net(torch.nn.Module):
    learn_sigma = True

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.conv = torch.nn.Conv2d(3, 6, 3, padding=1)
        self.seen_t = None

    def forward(self, x, t, cond):
        self.seen_t = t
        return torch.tanh(self.conv(x)) + cond.view(-1, 1, 1, 1) * 0.1


def _bits_reference(x0, x_t, t_list, out, diff_tables):
    """Hybrid vb in bits computed from scratch with torch.distributions and the exact normal CDF."""
    b, ab, ab_prev, post_var = diff_tables
    vbs = []
    for i, ti in enumerate(t_list):
        eps, v = out[i, :3].double(), out[i, 3:].double()
        frac = (v + 1) / 2
        logv = frac * math.log(b[ti]) + (1 - frac) * math.log(post_var[max(ti, 1)])
        xs = math.sqrt(1 / ab[ti]) * x_t[i].double() - math.sqrt(1 / ab[ti] - 1) * eps
        c1 = b[ti] * math.sqrt(ab_prev[ti]) / (1 - ab[ti])
        c2 = (1 - ab_prev[ti]) * math.sqrt(1 - b[ti]) / (1 - ab[ti])
        mean = c1 * xs + c2 * x_t[i].double()
        if ti == 0:
            std = torch.exp(0.5 * logv)
            normal = torch.distributions.Normal(mean, std)
            x = x0[i].double()
            hi = torch.where(x > 0.999, torch.ones_like(x), normal.cdf(x + 1 / 255))
            lo = torch.where(x < -0.999, torch.zeros_like(x), normal.cdf(x - 1 / 255))
            vbs.append((-torch.log((hi - lo).clamp(min=1e-12))).mean() / math.log(2))
        else:
            true_mean = c1 * x0[i].double() + c2 * x_t[i].double()
            p = torch.distributions.Normal(true_mean, math.sqrt(post_var[ti]))
            q = torch.distributions.Normal(mean, torch.exp(0.5 * logv))
            vbs.append(torch.distributions.kl_divergence(p, q).mean() / math.log(2))
    return torch.stack(vbs)


def test_training_losses_hybrid_terms():
    diff = Diffusion.from_flags(1000, "linear", "")
    net = _Net()
    g = torch.Generator().manual_seed(2)
    x0 = (torch.rand(3, 3, 8, 8, generator=g) * 2 - 1).clamp(-0.99, 0.99)
    x0[0, 0, 0, 0] = 1.0  # exercise the edge bins of the decoder
    noise = torch.randn(3, 3, 8, 8, generator=g)
    cond = torch.tensor([0.5, -1.0, 2.0])
    t = torch.tensor([0, 3, 700])
    losses = diff.training_losses(net, x0, t, cond, noise=noise)
    x_t = diff.q_sample(x0, t, noise)
    out = net(x_t, t, cond).detach()
    mse = ((noise - out[:, :3]) ** 2).mean(dim=(1, 2, 3))
    assert torch.allclose(losses["mse"], mse, atol=1e-6)
    vb_ref = _bits_reference(x0, x_t, t.tolist(), out, _independent_tables(1000))
    # t > 0: exact KL; t = 0: the official tanh CDF approximation differs from the exact CDF slightly
    assert torch.allclose(losses["vb"][1:].double(), vb_ref[1:], rtol=1e-4, atol=1e-6)
    assert losses["vb"][0].item() == pytest.approx(vb_ref[0].item(), rel=2e-2)
    assert torch.allclose(losses["loss"], losses["mse"] + losses["vb"])


def test_vb_trains_only_the_variance_channels():
    diff = Diffusion.from_flags(100, "linear")
    net = _Net()
    x0 = torch.rand(2, 3, 8, 8) * 2 - 1
    t = torch.tensor([5, 50])
    losses = diff.training_losses(net, x0, t, torch.zeros(2), noise=torch.randn_like(x0))
    grad_vb = torch.autograd.grad(losses["vb"].sum(), net.conv.weight)[0]
    # vb reaches the weights only through the variance outputs (channels 3..5)
    assert grad_vb[:3].abs().max() == 0 and grad_vb[3:].abs().max() > 0


def test_model_sees_original_timesteps_when_respaced():
    diff = Diffusion.from_flags(1000, "linear", "ddim25")
    net = _Net()
    x0 = torch.zeros(2, 3, 8, 8)
    diff.training_losses(net, x0, torch.tensor([1, 24]), torch.zeros(2))
    assert net.seen_t.tolist() == [40, 960]


def test_uniform_timestep_sampling_is_seeded_and_covers_range():
    diff = Diffusion.from_flags(1000, "linear", "10")
    a = diff.sample_timesteps(2000, torch.Generator().manual_seed(3))
    b = diff.sample_timesteps(2000, torch.Generator().manual_seed(3))
    assert torch.equal(a, b) and set(a.tolist()) == set(range(10))


def test_rescale_learned_sigmas_multiplies_vb_by_T_over_1000():
    diff = Diffusion.from_flags(250, "linear")
    net = _Net()
    x0, noise, t = torch.rand(2, 3, 8, 8) * 2 - 1, torch.randn(2, 3, 8, 8), torch.tensor([3, 100])
    plain = diff.training_losses(net, x0, t, torch.zeros(2), noise=noise)
    scaled = diff.training_losses(net, x0, t, torch.zeros(2), noise=noise, rescale_learned_sigmas=True)
    assert torch.allclose(scaled["vb"], plain["vb"] * 0.25) and torch.equal(scaled["mse"], plain["mse"])


def test_p2_weighting_scales_mse_by_one_minus_alphabar_for_gamma_1_k_1():
    # 1 / (1 + SNR) with SNR = abar / (1 - abar) is exactly 1 - abar; gamma 0.5 gives its square root.
    diff = Diffusion.from_flags(1000, "cosine")
    net = _Net()
    x0, noise, t = torch.rand(2, 3, 8, 8) * 2 - 1, torch.randn(2, 3, 8, 8), torch.tensor([10, 900])
    plain = diff.training_losses(net, x0, t, torch.zeros(2), noise=noise)
    abar = torch.tensor(diff.alphas_cumprod[[10, 900]], dtype=torch.float64)
    for gamma, want in ((1.0, 1 - abar), (0.5, (1 - abar).sqrt())):
        p2 = diff.training_losses(net, x0, t, torch.zeros(2), noise=noise, p2_gamma=gamma, p2_k=1.0)
        assert torch.allclose(p2["mse"].double(), plain["mse"].double() * want, rtol=1e-5)
        assert torch.equal(p2["vb"], plain["vb"])
    w = diff.p2_weights(t, 1.0)
    assert w[0] < 0.01 * w[1]  # the low-noise step is weighted ~100x less than the noisy one
    off = diff.training_losses(net, x0, t, torch.zeros(2), noise=noise, p2_gamma=0.0)
    assert torch.equal(off["loss"], plain["loss"])
