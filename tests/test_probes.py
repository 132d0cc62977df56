"""Probe behaviour on tiny hand-built models where the answer is known by construction."""

from __future__ import annotations

import sys

import numpy as np
import pytest
import rcdm_probes as probes_plugin
import scipy.linalg
import torch
from rcdm_probes._common import source_ranks, standard_samples
from rcdm_probes.fidelity import frechet_distance, frechet_from_stats, precision_recall
from rcdm_probes.interpolation import InterpolationProbe, pair_ids, slerp
from rcdm_probes.manipulation import column_quantile, common_dimensions

import rcdm_core as rc
from rcdm_core.errors import ConfigError
from tests.test_probes_models import (
    VectorSelector,
    arm,
    context,
    conv_encoder,
    flip_invariant_encoder,
    linear_decoder,
    luma_encoder,
    pixel_encoder,
    random_images,
    tinted_luma_decoder,
)


@pytest.fixture(autouse=True)
def probes(fresh_manager):
    """Only this plugin (no entry-point scan: importing every first-party plugin is slow)."""
    fresh_manager.register_module(probes_plugin, name="probes")
    return fresh_manager


ALL = ["adversarial", "faithfulness", "fidelity", "interpolation", "invariance", "manipulation", "samples"]


def test_plugin_registers_every_probe_on_a_fresh_manager(probes):
    assert probes.names("probe") == ALL
    rec, _ = probes.get("probe", "manipulation")
    assert rec.needs_reference and rec.options["k"].default == 20 and rec.options["n"].default == 14


# ---- samples ----------------------------------------------------------------------------------------------------


def test_samples_std_is_zero_for_a_deterministic_decoder_and_grows_with_noise(tmp_path):
    images = random_images(3)
    ctx = context([arm("exact", pixel_encoder()), arm("noisy", pixel_encoder(), noise=0.2)], images, tmp_path)
    res = rc.run_probe("samples", ctx)
    assert res.metrics["exact"]["mean_pixel_std"] == 0.0
    assert res.metrics["noisy"]["mean_pixel_std"] > 0.02
    assert (tmp_path / res.figures[0]).is_file() and res.figures[0].startswith("probes/samples/")
    assert "exact pins the image down most" in " ".join(res.notes)


def test_samples_do_not_depend_on_batch_layout(tmp_path):
    images = random_images(5)
    a = rc.run_probe(
        "samples", context([arm("a", pixel_encoder(), noise=0.3)], images, tmp_path, batch_size=2)
    )
    b = rc.run_probe(
        "samples", context([arm("a", pixel_encoder(), noise=0.3)], images, tmp_path, batch_size=7)
    )
    assert a.metrics == b.metrics


# ---- faithfulness -----------------------------------------------------------------------------------------------


def test_a_denoiser_returning_the_source_ranks_it_first_and_shuffled_is_worse(tmp_path):
    ctx = context([arm("a", pixel_encoder())], random_images(6), tmp_path)
    m = rc.run_probe("faithfulness", ctx).metrics["a"]
    assert m["mean_rank"] == 1.0 and m["top1"] == 1.0 and m["cosine"] == pytest.approx(1.0, abs=1e-6)
    assert m["n_candidates"] == 6
    # a derangement: every sample comes from another image's condition, which is itself a candidate
    assert m["shuffled"]["top1"] == 0.0 and m["shuffled"]["mean_rank"] >= 2.0


def test_faithfulness_ranks_among_the_reference_plus_sources(tmp_path):
    ref = random_images(10, seed=5)
    ctx = context([arm("a", pixel_encoder())], random_images(3), tmp_path, reference=ref)
    m = rc.run_probe("faithfulness", ctx).metrics["a"]
    assert m["n_candidates"] == 13 and m["top1"] == 1.0


def test_source_rank_counts_strictly_more_similar_candidates():
    cands = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0], [1.0, 0.0]])
    samples = torch.tensor([[1.0, 0.1], [1.0, 0.1]])
    # sample 0's source is candidate 0 (a duplicate at index 3 does not count); sample 1's source is candidate 1
    assert source_ranks(samples, torch.tensor([0, 1]), cands).tolist() == [1, 4]


# ---- invariance -------------------------------------------------------------------------------------------------


def test_flip_invariant_encoder_gives_cosine_one_and_flip_not_carried(tmp_path):
    images = random_images(4)
    ctx = context([arm("sym", flip_invariant_encoder()), arm("pix", pixel_encoder())], images, tmp_path)
    res = rc.run_probe("invariance", ctx, augmentations=["flip"])
    sym, pix = res.metrics["sym"]["flip"], res.metrics["pix"]["flip"]
    assert sym["cosine"] == pytest.approx(1.0, abs=1e-6)
    assert sym["carried"] == 0.0  # symmetric samples are equally close to x and flip(x)
    assert pix["match_rate"] == 1.0 and pix["match_rate_clean"] == 0.0 and pix["carried"] == 1.0
    assert res.tables[0]["rows"][0][0] == "flip" and "not carried for sym" in res.notes[0]


def test_grayscale_preserving_arm_gives_lower_sample_saturation_than_a_colour_invariant_one(tmp_path):
    images = random_images(4)
    arms = [arm("keeps_gray", pixel_encoder()), arm("colour_inv", luma_encoder(), decode=tinted_luma_decoder)]
    res = rc.run_probe("invariance", context(arms, images, tmp_path), augmentations="grayscale")
    keep, inv = res.metrics["keeps_gray"]["grayscale"], res.metrics["colour_inv"]["grayscale"]
    assert keep["saturation_samples_aug"] < 1e-6 < inv["saturation_samples_aug"]
    assert inv["saturation_samples_aug"] == pytest.approx(inv["saturation_samples_clean"], abs=1e-6)
    assert keep["carried"] == pytest.approx(1.0) and inv["carried"] == pytest.approx(0.0, abs=1e-6)
    assert inv["cosine"] == pytest.approx(1.0, abs=1e-6)


def test_invariance_reads_jitter_crop_blur_solarize_for_a_pixel_copying_arm(tmp_path):
    images = random_images(6, seed=3)
    res = rc.run_probe("invariance", context([arm("pix", pixel_encoder())], images, tmp_path, n_samples=2))
    m = res.metrics["pix"]
    assert set(m) == {"crop", "flip", "color_jitter", "grayscale", "blur", "solarize"}
    assert m["color_jitter"]["brightness_carried"] == pytest.approx(1.0, abs=1e-5)
    assert m["color_jitter"]["hue_carried"] == pytest.approx(1.0, abs=1e-4)
    assert m["blur"]["carried"] == pytest.approx(1.0, abs=1e-5)
    assert m["crop"]["zoom_samples_aug"] >= 0.75 and m["crop"]["zoom_samples_clean"] == 0.0
    assert m["solarize"]["carried"] == 1.0
    assert len(res.figures) == 6 and res.figures[0] == "probes/invariance/crop_pix.png"


def test_invariance_rejects_an_unknown_augmentation_listing_the_known_ones(tmp_path):
    ctx = context([arm("a", pixel_encoder())], random_images(2), tmp_path)
    with pytest.raises(ConfigError, match="unknown augmentation 'rotate'; known: crop, flip, color_jitter"):
        rc.run_probe("invariance", ctx, augmentations=["rotate"])


# ---- adversarial ------------------------------------------------------------------------------------------------


def test_pgd_with_epsilon_zero_changes_nothing():
    enc = conv_encoder()
    rep = rc.Representation(enc, arm("a", enc).rep.selector, "backbone")
    x = random_images(3)
    out = probes_plugin.pgd_linf(rep, x, epsilon=0.0, steps=5, step_size=0.1, random_start=True)
    assert torch.equal(out, x)


def test_pgd_stays_in_the_bound_and_in_range_and_restores_the_encoder():
    a = arm("a", conv_encoder())
    module = a.rep.encoder.module
    module.train()
    module.conv.weight.requires_grad_(False)
    running = module.bn.running_mean.clone()
    x = random_images(4).clamp(0.02, 0.98)
    x[0, :, :4] = 0.0  # pixels at the range edges must stay in [0, 1]
    x[1, :, :4] = 1.0
    eps = 4 / 255
    out = probes_plugin.pgd_linf(
        a.rep,
        x,
        epsilon=eps,
        steps=6,
        step_size=3 * eps,
        random_start=True,
        generator=torch.Generator().manual_seed(0),
    )
    assert (out - x).abs().max() <= eps + 1e-6 and out.min() >= 0 and out.max() <= 1
    assert (out - x).abs().max() > eps / 2  # it did move
    assert module.training and not module.conv.weight.requires_grad and module.head.weight.requires_grad
    assert torch.equal(module.bn.running_mean, running)  # eval mode inside: no BatchNorm update
    module.eval()
    with torch.no_grad():
        before = rc.Representation(a.rep.encoder, a.rep.selector, "backbone").encode(x)
        after = a.rep.encode(out)
    assert float(torch.nn.functional.cosine_similarity(before, after).mean()) < 0.9999


def test_pgd_rejects_epsilon_out_of_range(tmp_path):
    ctx = context([arm("a", pixel_encoder())], random_images(2), tmp_path)
    with pytest.raises(ConfigError, match=r"epsilon must be in \[0, 1\]"):
        rc.run_probe("adversarial", ctx, epsilon=1.5)


def test_adversarial_probe_reports_cosines_and_faithfulness(tmp_path):
    images = random_images(4)
    ctx = context([arm("conv", conv_encoder(), decode=linear_decoder(16))], images, tmp_path, n_samples=2)
    zero = rc.run_probe("adversarial", ctx, epsilon=0.0).metrics["conv"]
    assert zero["linf"] == 0.0 and zero["rep_cosine_clean_adv"] == pytest.approx(1.0, abs=1e-6)
    assert zero["adv_samples"] == zero["clean_samples"]  # eps 0 and a noiseless decoder: same samples
    toward = rc.run_probe("adversarial", ctx, epsilon=8 / 255, steps=5, objective="toward").metrics["conv"]
    assert toward["rep_cosine_to_target_after"] > toward["rep_cosine_to_target_before"]
    assert toward["linf"] <= 8 / 255 + 1e-6


# ---- manipulation -----------------------------------------------------------------------------------------------


def test_common_dimensions_counted_by_hand():
    bank = torch.tensor(
        [
            [1.0, 0.0, 2.0, 0.0],  # distance to q: 1.0
            [1.0, 1.0, 0.0, 0.0],  # 1.73
            [0.0, 0.0, 2.0, 3.0],  # 3.16
            [9.0, 9.0, 9.0, 9.0],  # far
        ]
    )
    q = torch.tensor([[1.0, 0.0, 1.0, 0.0]])
    common, counts, nb = common_dimensions(q, bank, k=3, n=1, mode="nonzero")
    assert nb[0].tolist() == [0, 1, 2]
    assert counts[0].tolist() == [2, 1, 2, 1]
    assert common[0].tolist() == [True, False, True, False]


def test_quantile_activity_for_signed_features():
    bank = torch.tensor([[-1.0, 4.0], [0.0, -2.0], [1.0, 0.0], [3.0, 2.0]])
    assert column_quantile(bank, 0.5).tolist() == [0.5, 1.0]
    _, counts, _ = common_dimensions(
        torch.tensor([[0.0, 0.0]]), bank, k=4, n=1, mode="quantile", quantile=0.5
    )
    assert counts[0].tolist() == [2, 2]


def test_manipulation_needs_a_reference_and_enough_of_it(tmp_path):
    ctx = context([arm("a", pixel_encoder())], random_images(2), tmp_path)
    with pytest.raises(ConfigError, match="--reference"):
        rc.run_probe("manipulation", ctx)
    ctx = context([arm("a", pixel_encoder())], random_images(2), tmp_path, reference=random_images(5, seed=1))
    with pytest.raises(ConfigError, match="at least 20 reference images; --reference has 5"):
        rc.run_probe("manipulation", ctx)


def test_manipulation_swapping_every_dimension_reproduces_the_target(tmp_path):
    # nonnegative pixel features: every dimension is non-zero in all neighbours, so all are common
    images = random_images(3).clamp_min(0.01)
    ctx = context(
        [arm("a", pixel_encoder())], images, tmp_path, reference=random_images(6, seed=2).clamp_min(0.01)
    )
    m = rc.run_probe("manipulation", ctx, k=4, n=2).metrics["a"]
    assert m["mode"] == "nonzero" and m["common_fraction"] == 1.0
    assert m["samples_cosine_to_target"]["swapped"] == pytest.approx(1.0, abs=1e-6)


# ---- interpolation ----------------------------------------------------------------------------------------------


def test_interpolation_endpoints_reproduce_the_two_conditions_samples(tmp_path):
    a_ = arm("a", pixel_encoder(), noise=0.3)
    ctx = context([a_], random_images(3), tmp_path)
    cond = ctx.encode(a_, ctx.images)
    a, b = cond[[0, 1]], cond[[1, 2]]
    probe = InterpolationProbe(steps=5, samples_per_step=2)
    for mode in ("linear", "slerp"):
        sweep = probe.sweep(ctx, a_, a, b, mode)
        ids = pair_ids(2, 2)
        assert torch.equal(
            sweep[:, 0].flatten(0, 1), ctx.sample(a_, a.repeat_interleave(2, 0), sample_ids=ids)
        )
        assert torch.equal(
            sweep[:, -1].flatten(0, 1), ctx.sample(a_, b.repeat_interleave(2, 0), sample_ids=ids)
        )
    res = rc.run_probe("interpolation", ctx, steps=3)
    assert (
        res.metrics["a"]["linear"]["cosine_to_a"]["0.00"] > res.metrics["a"]["linear"]["cosine_to_a"]["1.00"]
    )
    assert len(res.figures) == 2


def test_slerp_keeps_the_norm_on_the_arc():
    a, b = torch.tensor([[2.0, 0.0]]), torch.tensor([[0.0, 2.0]])
    mid = slerp(a, b, 0.5)
    assert torch.allclose(mid, torch.tensor([[2**0.5, 2**0.5]]), atol=1e-6)


# ---- fidelity ---------------------------------------------------------------------------------------------------


def test_frechet_distance_of_a_set_to_itself_is_zero_and_matches_scipy():
    g = torch.Generator().manual_seed(0)
    a = torch.randn(40, 6, generator=g, dtype=torch.float64)
    b = torch.randn(50, 6, generator=g, dtype=torch.float64) * 1.5 + 0.3
    assert abs(frechet_distance(a, a)) < 1e-9
    small = torch.randn(5, 32, generator=g, dtype=torch.float64)  # rank-deficient covariance
    assert abs(frechet_distance(small, small)) < 1e-9
    x, y = a.numpy(), b.numpy()
    s1, s2 = np.cov(x, rowvar=False), np.cov(y, rowvar=False)
    diff = x.mean(0) - y.mean(0)
    expect = diff @ diff + np.trace(s1) + np.trace(s2) - 2 * np.trace(scipy.linalg.sqrtm(s1 @ s2).real)
    assert frechet_distance(a, b) == pytest.approx(expect, rel=1e-9)


def test_frechet_distance_in_the_span_of_few_points_equals_the_covariance_formula():
    g = torch.Generator().manual_seed(1)
    a, b = (
        torch.randn(10, 32, generator=g, dtype=torch.float64),
        torch.randn(12, 32, generator=g, dtype=torch.float64) + 0.5,
    )
    stats = [(x.mean(0), torch.cov(x.T)) for x in (a, b)]
    assert frechet_distance(a, b) == pytest.approx(frechet_from_stats(*stats[0], *stats[1]), rel=1e-9)


def test_precision_recall_by_hand():
    real = torch.tensor([[0.0], [1.0], [2.0], [3.0]])
    fake = torch.tensor([[0.5], [10.0]])
    p, r = precision_recall(real, fake, k=1)
    assert p == 0.5 and r == 1.0  # 10 is outside every real 1-NN ball (radius 1); fake balls have radius 9.5
    assert precision_recall(real, real, k=1) == (1.0, 1.0)


class LumaPlugin:
    """Registers a test encoder and the plain vector selector, as an encoder plugin would."""

    @rc.hookimpl
    def rcdm_encoders(self):
        return [rc.EncoderRecord(name="test_luma", factory=lambda arg, weights, trust: luma_encoder())]

    @rc.hookimpl
    def rcdm_layer_selectors(self):
        return [rc.LayerSelectorRecord(name="backbone", factory=VectorSelector)]


def test_fidelity_probe_in_the_arms_space_and_in_another_encoders(tmp_path, probes):
    probes.register_module(LumaPlugin(), name="luma")
    images = random_images(6)
    ctx = context([arm("a", pixel_encoder())], images, tmp_path, n_samples=1)
    m = rc.run_probe("fidelity", ctx).metrics["a"]
    assert m["fd"] == pytest.approx(0.0, abs=1e-9)  # exact decoder, one sample each: samples are the images
    assert m["precision"] == 1.0 and m["recall"] == 1.0 and m["n_fake"] == 6
    ctx = context([arm("a", pixel_encoder(), noise=0.2)], images, tmp_path, n_samples=2)
    own = rc.run_probe("fidelity", ctx).metrics["a"]
    luma = rc.run_probe("fidelity", ctx, feature_encoder="test_luma").metrics["a"]
    assert luma["feature_space"] == "test_luma:backbone" and own["feature_space"].startswith("test:backbone")
    g = lambda x: luma_encoder().fn(x)  # noqa: E731
    samples = standard_samples(ctx, ctx.arms[0])[1].flatten(0, 1)
    assert luma["fd"] == pytest.approx(frechet_distance(g(samples), g(images)), rel=1e-9)


# ---- determinism, repeats, research-code probes -------------------------------------------------------------------


def test_standard_samples_are_cached_per_context_and_seed(tmp_path):
    a_ = arm("a", pixel_encoder(), noise=0.3)
    ctx = context([a_], random_images(3), tmp_path)
    first = standard_samples(ctx, a_)[1]
    assert torch.equal(first, standard_samples(ctx, a_)[1])
    ctx.seed = 1
    assert not torch.equal(first, standard_samples(ctx, a_)[1])


def test_repeats_aggregate_probe_metrics_through_the_run_pipeline(tmp_path):
    from rcdm_core.run import _aggregate

    a_ = arm("a", pixel_encoder(), noise=0.3)
    ctx = context([a_], random_images(3), tmp_path)
    runs = []
    for seed in (0, 1, 2):
        ctx.seed = seed
        runs.append(rc.run_probe("samples", ctx).metrics)
    agg = _aggregate(runs)["a"]["mean_pixel_std"]
    vals = [r["a"]["mean_pixel_std"] for r in runs]
    assert agg["values"] == vals and agg["mean"] == pytest.approx(sum(vals) / 3) and agg["std"] > 0


class CountProbe(rc.Probe):
    name = "count_images"

    def run(self, ctx):
        return rc.ProbeResult(metrics={a.name: {"n": len(ctx.images)} for a in ctx.arms}, summary="counted")


@rc.hookimpl
def rcdm_probes():
    return [rc.ProbeRecord(name="count_images", factory=CountProbe, summary="research-code probe")]


def test_a_research_code_probe_registers_with_one_hookimpl_and_runs(probes, tmp_path):
    probes.register_module(sys.modules[__name__], name="research")
    assert probes.names("probe") == sorted(ALL + ["count_images"])
    ctx = context([arm("a", pixel_encoder())], random_images(2), tmp_path)
    assert rc.run_probe("count_images", ctx).metrics == {"a": {"n": 2}}
