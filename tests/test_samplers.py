"""Samplers against diffusers (fixed small random denoiser), edge cases, batch invariance and bad input."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

import rcdm_core as rc
from rcdm_core.diffusion import Diffusion, space_timesteps
from rcdm_core.errors import ConfigError
from rcdm_core.interfaces import ConditionalDenoiser

diffusers = pytest.importorskip("diffusers")

COND_DIM = 5


class TinyDenoiser(ConditionalDenoiser):
    """A fixed random conv net: eps and a tanh variance channel that depend on x, t and cond."""

    def __init__(self, learn_sigma: bool = True, T: int = 1000, schedule: str = "linear", size: int = 8):
        super().__init__()
        self.image_size, self.cond_dim, self.learn_sigma = size, COND_DIM, learn_sigma
        self.flags = {"diffusion_steps": T, "noise_schedule": schedule}
        g = torch.Generator().manual_seed(1234)
        self.conv1 = nn.Conv2d(3, 16, 3, padding=1)
        self.conv2 = nn.Conv2d(16, 6 if learn_sigma else 3, 3, padding=1)
        self.cond_proj = nn.Linear(COND_DIM, 16)
        self.time_proj = nn.Linear(8, 16)
        self.T = T
        with torch.no_grad():
            for p in self.parameters():
                p.copy_(torch.randn(p.shape, generator=g) * 0.15)

    def forward(self, x, t, cond):
        freqs = torch.arange(1, 5, dtype=torch.float32, device=x.device)
        phase = t.float()[:, None] / self.T * freqs * math.pi
        temb = self.time_proj(torch.cat([phase.sin(), phase.cos()], 1))
        h = self.conv1(x) + (self.cond_proj(cond) + temb)[:, :, None, None]
        out = self.conv2(torch.nn.functional.silu(h))
        if not self.learn_sigma:
            return out
        return torch.cat([out[:, :3], torch.tanh(out[:, 3:])], 1)


@pytest.fixture(scope="module")
def model():
    return TinyDenoiser().eval()


@pytest.fixture(scope="module")
def cond():
    return torch.randn(3, COND_DIM, generator=torch.Generator().manual_seed(5))


# -- against diffusers -------------------------------------------------------------------------------------------


@pytest.mark.parametrize("n", [10, 25, 100])
def test_ddpm_posterior_matches_diffusers_learned_range(manager, model, cond, n):
    sched = diffusers.DDPMScheduler(
        num_train_timesteps=1000, beta_schedule="linear", variance_type="learned_range",
        timestep_spacing="linspace", clip_sample=True,
    )  # fmt: skip
    sched.set_timesteps(n)
    sampler = rc.get_sampler(f"ddpm:{n}")
    diffusion = sampler.diffusion_for(model)
    assert sched.timesteps.tolist() == diffusion.timestep_map.flip(0).tolist()
    g = torch.Generator().manual_seed(n)
    checked = 0
    for k, t in enumerate(sched.timesteps.tolist()):
        if t == 0 or k % max(1, n // 10):
            continue
        x = torch.randn(3, 3, 8, 8, generator=g) * 1.5
        with torch.no_grad():
            out = model(x, torch.full((3,), t), cond)
        i = n - 1 - k
        assert int(diffusion.timestep_map[i]) == t
        p = diffusion.p_mean_variance(out, x, torch.full((3,), i), clip_denoised=True)
        prevs = []
        for seed in (1, 2):
            noise = torch.randn(3, 3, 8, 8, generator=torch.Generator().manual_seed(seed))
            theirs = sched.step(out, t, x, generator=torch.Generator().manual_seed(seed)).prev_sample
            ours = sampler.step(
                diffusion,
                k,
                i,
                x,
                out,
                {"seed": 0, "ids": [0, 1, 2], "generator": torch.Generator().manual_seed(seed)},
            )
            assert torch.allclose(ours, theirs, atol=1e-4), (t, (ours - theirs).abs().max())
            prevs.append((theirs, noise))
        (p1, n1), (p2, n2) = prevs
        mask = (n1 - n2).abs() > 0.5
        their_std = ((p1 - p2) / (n1 - n2))[mask]
        assert torch.allclose(torch.exp(0.5 * p["log_variance"])[mask], their_std, rtol=1e-3, atol=1e-5)
        assert torch.allclose(p1 - torch.exp(0.5 * p["log_variance"]) * n1, p["mean"], atol=1e-4)
        checked += 1
    assert checked >= 5


@pytest.mark.parametrize("n", [10, 25, 100])
def test_ddpm_full_trajectory_matches_diffusers(manager, model, cond, n):
    sched = diffusers.DDPMScheduler(
        num_train_timesteps=1000, beta_schedule="linear", variance_type="learned_range",
        timestep_spacing="linspace", clip_sample=True,
    )  # fmt: skip
    sched.set_timesteps(n)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(3, 3, 8, 8, generator=g)
    with torch.no_grad():
        for t in sched.timesteps:
            out = model(x, torch.full((3,), int(t)), cond)
            x = sched.step(out, t, x, generator=g).prev_sample
    ours = rc.get_sampler(f"ddpm:{n}").sample(
        model, cond, generator=torch.Generator().manual_seed(0), progress=False
    )
    assert torch.allclose(ours, x.clamp(-1, 1), atol=1e-4), (ours - x).abs().max()


def _diffusers_ddim(model, cond, x_T, n, T=1000):
    sched = diffusers.DDIMScheduler(
        num_train_timesteps=T, beta_schedule="linear", beta_start=0.0001 * 1000 / T, beta_end=0.02 * 1000 / T,
        clip_sample=True, set_alpha_to_one=True, steps_offset=0, timestep_spacing="leading",
    )  # fmt: skip
    sched.set_timesteps(n)
    x = x_T.clone()
    with torch.no_grad():
        for t in sched.timesteps:
            out = model(x, torch.full((len(x),), int(t)), cond)[:, :3]
            x = sched.step(out, t, x, eta=0.0, use_clipped_model_output=True).prev_sample
    return x, sched.timesteps.tolist()


@pytest.mark.parametrize("n", [10, 25, 100])
def test_ddim_eta0_trajectory_matches_diffusers_leading(manager, model, cond, n):
    x_T = torch.randn(3, 3, 8, 8, generator=torch.Generator().manual_seed(7))
    theirs, their_ts = _diffusers_ddim(model, cond, x_T, n)
    seen = []
    sampler = rc.get_sampler(f"ddim:{n},spacing=ddim")
    ours = sampler.sample(model, cond, x_T=x_T, progress=False, callback=lambda k, t, x: seen.append(t))
    assert seen == their_ts  # leading == the official ddimN stride at 10, 25, 100
    assert torch.allclose(ours, theirs, atol=1e-4), (ours - theirs).abs().max()
    assert sampler.num_calls == n


@pytest.mark.parametrize("n", [3, 27, 53])
def test_ddim_leading_spacing_matches_diffusers_when_n_does_not_divide_T(manager, model, cond, n):
    x_T = torch.randn(2, 3, 8, 8, generator=torch.Generator().manual_seed(n))
    theirs, their_ts = _diffusers_ddim(model, cond[:2], x_T, n)
    seen = []
    ours = rc.get_sampler(f"ddim:{n},spacing=leading").sample(
        model, cond[:2], x_T=x_T, progress=False, callback=lambda k, t, x: seen.append(t)
    )
    assert seen == their_ts and seen[-1] == 0
    assert torch.allclose(ours, theirs, atol=1e-4)


def test_ddim_n_equals_T_matches_diffusers_on_a_short_schedule(manager, cond):
    small = TinyDenoiser(T=40).eval()
    x_T = torch.randn(2, 3, 8, 8, generator=torch.Generator().manual_seed(9))
    theirs, _ = _diffusers_ddim(small, cond[:2], x_T, 40, T=40)
    ours = rc.get_sampler("ddim:40").sample(small, cond[:2], x_T=x_T, progress=False)
    assert torch.allclose(ours, theirs, atol=1e-4)
    # N = T keeps the original schedule unchanged
    sampler = rc.get_sampler("ddpm:40")
    assert (sampler.diffusion_for(small).betas == Diffusion.from_flags(40).betas).all()


def test_dpm_solver_pp_2m_matches_diffusers(manager, model, cond):
    n = 10
    sched = diffusers.DPMSolverMultistepScheduler(
        num_train_timesteps=1000, beta_schedule="linear", algorithm_type="dpmsolver++", solver_order=2,
        final_sigmas_type="zero", lower_order_final=True, variance_type="learned_range", thresholding=False,
    )  # fmt: skip
    sched.set_timesteps(n)
    x_T = torch.randn(3, 3, 8, 8, generator=torch.Generator().manual_seed(11))
    x = x_T.clone()
    with torch.no_grad():
        for t in sched.timesteps:
            x = sched.step(model(x, torch.full((3,), int(t)), cond), t, x).prev_sample
    sampler = rc.get_sampler(f"dpm-solver++:{n},clip_denoised=false")
    # Same time points as diffusers (its linspace drops t = 0), to check the solver itself.
    sampler._cache[(1000, "linear")] = Diffusion.from_flags().respaced(sched.timesteps.tolist())
    ours = sampler.sample(model, cond, x_T=x_T, progress=False)
    assert torch.allclose(ours, x.clamp(-1, 1), atol=1e-4), (ours - x).abs().max()


def test_dpm_solver_pp_3m_matches_diffusers(manager, model, cond):
    n = 12
    sched = diffusers.DPMSolverMultistepScheduler(
        num_train_timesteps=1000, beta_schedule="linear", algorithm_type="dpmsolver++", solver_order=3,
        final_sigmas_type="zero", lower_order_final=True, variance_type="learned_range", thresholding=False,
    )  # fmt: skip
    sched.set_timesteps(n)
    x_T = torch.randn(2, 3, 8, 8, generator=torch.Generator().manual_seed(12))
    x = x_T.clone()
    with torch.no_grad():
        for t in sched.timesteps:
            x = sched.step(model(x, torch.full((2,), int(t)), cond[:2]), t, x).prev_sample
    sampler = rc.get_sampler(f"dpm-solver++:{n},order=3,clip_denoised=false")
    sampler._cache[(1000, "linear")] = Diffusion.from_flags().respaced(sched.timesteps.tolist())
    ours = sampler.sample(model, cond[:2], x_T=x_T, progress=False)
    assert torch.allclose(ours, x.clamp(-1, 1), atol=1e-4), (ours - x).abs().max()


# -- edge cases --------------------------------------------------------------------------------------------------


def test_one_step_is_the_clipped_x0_prediction_at_t0(manager, model, cond):
    x_T = torch.randn(3, 3, 8, 8, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        eps = model(x_T, torch.zeros(3, dtype=torch.long), cond)[:, :3]
    ab0 = 1 - 1e-4  # the official "1" keeps t = 0 only
    x0 = (x_T / math.sqrt(ab0) - math.sqrt(1 / ab0 - 1) * eps).clamp(-1, 1)
    for spec in ("ddpm:1", "ddim:1", "dpm-solver++:1", "1"):
        sampler = rc.get_sampler(spec)
        out = sampler.sample(model, cond, x_T=x_T, progress=False)
        assert torch.allclose(out, x0, atol=1e-5), spec
        assert sampler.num_calls == 1


@pytest.mark.parametrize("n", [3, 27, 53])
def test_odd_counts_visit_the_official_steps_and_end_at_t0(manager, model, cond, n):
    for name in ("ddpm", "ddim", "dpm-solver++"):
        seen = []
        rc.get_sampler(f"{name}:{n}").sample(
            model, cond[:1], progress=False, callback=lambda k, t, x, seen=seen: seen.append((k, t))
        )
        assert [t for _, t in seen] == space_timesteps(1000, str(n))[::-1]
        assert [k for k, _ in seen] == list(range(n)) and seen[-1][1] == 0


def test_last_ddpm_step_adds_no_noise_and_is_the_posterior_mean(manager, model, cond):
    captured = {}

    def keep(k, t, x):
        captured[t] = x.clone()

    sampler = rc.get_sampler("ddpm:5")
    out = sampler.sample(model, cond, seed=4, progress=False, callback=keep)
    diffusion = sampler.diffusion_for(model)
    x1 = captured[int(diffusion.timestep_map[1])]
    with torch.no_grad():
        raw = model(x1, torch.zeros(3, dtype=torch.long), cond)
    p = diffusion.p_mean_variance(raw, x1, torch.zeros(3, dtype=torch.long))
    # alphabar_prev at index 0 is 1, so the mean is exactly the clipped x0 (no wrap-around to the last index)
    assert torch.allclose(out, p["pred_xstart"], atol=1e-6)
    assert torch.equal(captured[0], out)


def test_official_respacing_strings_mean_ddpm(manager):
    s = rc.get_sampler("ddim25")
    assert type(s).__name__ == "DDPMSampler" and s.spacing == "ddim"
    assert rc.get_sampler("10,15,20").diffusion_for(TinyDenoiser()).timestep_map.tolist() == space_timesteps(
        1000, "10,15,20"
    )


def test_trailing_spacing_matches_diffusers(manager):
    sched = diffusers.DDIMScheduler(num_train_timesteps=1000, timestep_spacing="trailing")
    for n in (7, 10, 33):
        sched.set_timesteps(n)
        kept = rc.get_sampler(f"ddim:{n},spacing=trailing").diffusion_for(TinyDenoiser()).timestep_map
        assert kept.flip(0).tolist() == sched.timesteps.tolist()


# -- randomness --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("spec", ["ddpm:8", "ddim:8,eta=1", "dpm-solver++:8"])
def test_batch_invariance_and_seed_determinism(manager, model, spec):
    cond4 = torch.randn(4, COND_DIM, generator=torch.Generator().manual_seed(8))
    sampler = rc.get_sampler(spec)
    whole = sampler.sample(model, cond4, seed=3, progress=False)
    again = sampler.sample(model, cond4, seed=3, progress=False)
    assert torch.equal(whole, again)  # same layout: bitwise
    parts = torch.cat(
        [
            sampler.sample(model, cond4[:1], seed=3, sample_ids=[0], progress=False),
            sampler.sample(model, cond4[1:], seed=3, sample_ids=[1, 2, 3], progress=False),
        ]
    )
    assert (parts - whole).abs().max() <= 1e-5
    other = sampler.sample(model, cond4, seed=4, progress=False)
    assert (other - whole).abs().max() > 0.1
    # a sample keyed on id 2 is the same wherever it sits in the batch
    alone = sampler.sample(model, cond4[2:3], seed=3, sample_ids=[2], progress=False)
    assert (alone - whole[2:3]).abs().max() <= 1e-5


def test_generator_is_used_in_order_instead_of_keys(manager, model, cond):
    s = rc.get_sampler("ddpm:4")
    a = s.sample(model, cond, generator=torch.Generator().manual_seed(0), progress=False)
    b = s.sample(model, cond, generator=torch.Generator().manual_seed(0), progress=False)
    c = s.sample(model, cond, seed=0, progress=False)
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_channels_last_and_bf16_autocast(manager, cond):
    m = TinyDenoiser().eval()
    x_T = torch.randn(3, 3, 8, 8, generator=torch.Generator().manual_seed(1))
    ref = rc.get_sampler("ddim:6").sample(m, cond, x_T=x_T, progress=False)
    cl = rc.get_sampler("ddim:6,channels_last=true").sample(m, cond, x_T=x_T, progress=False)
    assert torch.allclose(cl, ref, atol=1e-5)
    bf = rc.get_sampler("ddim:6,precision=bf16").sample(TinyDenoiser().eval(), cond, x_T=x_T, progress=False)
    assert bf.dtype == torch.float32 and torch.isfinite(bf).all() and (bf - ref).abs().mean() < 0.1


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_matches_cpu_and_compile_runs(manager, cond):
    m = TinyDenoiser().eval()
    x_T = torch.randn(3, 3, 8, 8, generator=torch.Generator().manual_seed(1))
    ref = rc.get_sampler("ddpm:10").sample(m, cond, seed=2, progress=False)
    gpu = rc.get_sampler("ddpm:10").sample(m.cuda(), cond.cuda(), seed=2, progress=False)
    assert gpu.device.type == "cuda" and torch.allclose(gpu.cpu(), ref, atol=1e-4)
    comp = rc.get_sampler("ddim:5,compile=true").sample(m, cond.cuda(), x_T=x_T.cuda(), progress=False)
    plain = rc.get_sampler("ddim:5").sample(m, cond.cuda(), x_T=x_T.cuda(), progress=False)
    assert torch.allclose(comp, plain, atol=1e-4)


# -- bad input ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "spec, match",
    [
        ("ddpm:0", "at least 1.*accepted: ddpm:N"),
        ("ddim:-2", "at least 1.*accepted"),
        ("0", "at least 1"),
        ("ddim:x", "whole numbers.*accepted"),
        ("euler:10", "unknown sampler 'euler'.*ddim, ddpm, dpm-solver\\+\\+"),
        ("ddim:10,foo=1", "unknown key 'foo'.*eta"),
        ("ddim:10,spacing=weird", "spacing"),
        ("dpm-solver++:10,order=4", "order"),
        ("ddim:10,eta=-1", "eta"),
    ],
)
def test_bad_sampler_strings_give_one_clear_line(manager, spec, match):
    with pytest.raises(ConfigError, match=match) as info:
        rc.get_sampler(spec)
    assert "\n" not in str(info.value)


def test_more_steps_than_T_and_missing_stride_are_refused(manager, model, cond):
    with pytest.raises(ConfigError, match="1001 steps.*T = 1000"):
        rc.get_sampler("ddpm:1001").sample(model, cond, progress=False)
    with pytest.raises(ConfigError, match="no integer stride"):
        rc.get_sampler("ddim:1,spacing=ddim").sample(model, cond, progress=False)


def test_ddpm_needs_learned_sigma_others_do_not(manager, cond):
    plain = TinyDenoiser(learn_sigma=False).eval()
    with pytest.raises(ConfigError, match="learn_sigma False.*ddim"):
        rc.get_sampler("ddpm:5").sample(plain, cond, progress=False)
    for spec in ("ddim:5", "dpm-solver++:5"):
        assert rc.get_sampler(spec).sample(plain, cond, progress=False).shape == (3, 3, 8, 8)


def test_bad_condition_is_refused(manager, model):
    with pytest.raises(ConfigError, match="expects \\(N, 5\\)"):
        rc.get_sampler("ddim:2").sample(model, torch.zeros(2, 7), progress=False)
    with pytest.raises(ConfigError, match="NaN"):
        rc.get_sampler("ddim:2").sample(model, torch.full((2, COND_DIM), float("nan")), progress=False)
