"""The attribution probe (issue 7): Captum attributions vs RCDM maps, on tiny hand-built models."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from rcdm_captum.agreement import spearman, top_iou, top_mask
from rcdm_captum.probe import AttributionProbe
from torch import nn

import rcdm_core as rc
from rcdm_core.noise import sample_noise

from .toys import ToySampler

SIZE = 32
REGION = (slice(8, 20), slice(12, 24))  # 12 x 12 pixels on the 4-pixel grid: 144 / 1024 = 14.0625 %
REGION_PERCENT = 100.0 * 144 / (SIZE * SIZE)


def region_mask() -> torch.Tensor:
    m = torch.zeros(SIZE, SIZE, dtype=torch.bool)
    m[REGION] = True
    return m


class Mask(nn.Module):
    def __init__(self):
        super().__init__()
        self.register_buffer("mask", region_mask().float()[None, None])

    def forward(self, x):
        return x * self.mask


class RegionNet(nn.Module):
    """r(x) depends on the pixels of REGION only: mask -> conv -> tanh -> mask ("cam") -> pool -> linear."""

    def __init__(self, dim: int = 16):
        super().__init__()
        self.inmask = Mask()
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.cam = Mask()
        self.drop = nn.Dropout(0.5)
        self.fc = nn.Linear(8 * 4, dim)

    def forward(self, x):
        h = self.cam(torch.tanh(self.conv(self.inmask(x))))
        h = nn.functional.adaptive_avg_pool2d(h[..., REGION[0], REGION[1]], 2).flatten(1)
        return torch.tanh(self.fc(self.drop(h)))


class SmoothNet(nn.Module):
    """Smooth everywhere (tanh, average pooling): IG's Riemann/Gauss-Legendre sum converges fast."""

    def __init__(self, dim: int = 16):
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1, stride=2)
        self.fc = nn.Linear(8 * 16, dim)

    def forward(self, x):
        h = nn.functional.adaptive_avg_pool2d(torch.tanh(self.conv(x)), 4).flatten(1)
        return torch.tanh(self.fc(h))


class ModuleEncoder(rc.Encoder):
    """A minimal rc.Encoder around any module mapping (N, 3, S, S) in [0, 1] to (N, D)."""

    def __init__(self, module: nn.Module, dim: int, name: str = "test", input_size: int = SIZE):
        self.module = module
        self.name = name
        self.dim = dim
        self.input_size = input_size
        self.mean = None
        self.std = None
        self.meta = {}

    def features(self, x, layers):
        return {"backbone": self.module(x)}

    def layers(self):
        return {"backbone": self.dim}


class BackboneSelector(rc.LayerSelector):
    def feature_name(self, spec, encoder):
        return "backbone"

    def reduce(self, spec, feature):
        return feature

    def dim(self, spec, encoder):
        return encoder.layers()["backbone"]


class TinyDenoiser(rc.ConditionalDenoiser):
    """Output depends on x_t and (strongly) on cond, so a changed condition moves the samples."""

    def __init__(self, cond_dim: int, image_size: int = SIZE):
        super().__init__()
        self.image_size, self.cond_dim, self.learn_sigma = image_size, cond_dim, False
        self.flags = {"diffusion_steps": 1000, "noise_schedule": "linear", "image_size": image_size}
        g = torch.Generator().manual_seed(0)
        self.conv = nn.Conv2d(3, 3, 3, padding=1)
        self.cond = nn.Linear(cond_dim, 3 * 8 * 8)
        with torch.no_grad():
            self.cond.weight.copy_(torch.randn(self.cond.weight.shape, generator=g))

    def forward(self, x_t, t, cond):
        bias = nn.functional.interpolate(
            self.cond(cond).view(-1, 3, 8, 8), size=x_t.shape[-2:], mode="nearest"
        )
        return self.conv(x_t) + bias


class FakeSampler(ToySampler):
    """Deterministic given (seed, sample id): x_T and each step's noise come from rcdm_core.noise."""

    name = "fake"

    def draw(self, denoiser, cond, x_T, seed, ids):
        x = x_T
        for step in range(3):
            t = torch.full((len(x),), 9 - 3 * step)
            x = 0.7 * x - 0.3 * denoiser(x, t, cond) + 0.1 * sample_noise(x.shape[1:], seed, ids, step)
        return torch.tanh(x)


def make_ctx(
    module: nn.Module,
    dim: int,
    out_dir: Path,
    images: torch.Tensor,
    sampler=None,
    n_samples: int = 3,
    seed: int = 0,
    input_size: int = SIZE,
) -> rc.ProbeContext:
    enc = ModuleEncoder(module, dim, input_size=input_size)
    rep = rc.Representation(enc, BackboneSelector(), "backbone")
    arm = rc.ArmRuntime(spec=rc.Arm(name="a", encoder="test"), rep=rep, denoiser=TinyDenoiser(dim).eval())
    return rc.ProbeContext(
        arms=[arm],
        ids=[f"img{i}" for i in range(len(images))],
        images=images,
        sampler=sampler or FakeSampler(),
        sampler_spec="fake",
        seed=seed,
        out_dir=out_dir,
        n_samples=n_samples,
        progress=False,
    )


def smooth_images(n: int = 2, seed: int = 0) -> torch.Tensor:
    """Smooth random images: a random 8x8 colour field upsampled bicubically, in [0, 1]."""
    g = torch.Generator().manual_seed(seed)
    low = torch.rand(n, 3, 8, 8, generator=g)
    return nn.functional.interpolate(low, size=SIZE, mode="bicubic", align_corners=False).clamp(0, 1)


# --- tests -------------------------------------------------------------------------------------------------------

ALL = ["integrated_gradients", "gradient_shap", "saliency", "occlusion", "gradcam"]
CHEAP = {
    "ig_steps": 16,
    "gradient_shap_samples": 8,
    "nt_samples": 4,
    "infidelity_samples": 4,
    "sensitivity_samples": 0,
    "max_figures": 1,
}


def run_probe(ctx, **options):
    res = AttributionProbe(**{**CHEAP, **options}).run(ctx)
    maps = torch.load(ctx.out_dir / "probes" / "attribution" / "a_maps.pt")
    return res, maps


@pytest.fixture(scope="module")
def region_run(tmp_path_factory):
    torch.manual_seed(0)
    out = tmp_path_factory.mktemp("region")
    ctx = make_ctx(RegionNet(), 16, out, smooth_images(2))
    return ctx, *run_probe(ctx, methods=ALL, top_k=REGION_PERCENT, rcdm_patch=4)


@pytest.mark.parametrize("method", ALL)
def test_every_attribution_method_puts_its_mass_on_the_encoded_region(region_run, method):
    _, _, maps = region_run
    for m in maps["attributions"][method]:
        # Bound: at least 80% of the top-14% pixels coincide with the region (perfect = 1; chance ~ 0.08).
        assert iou(top_mask(m, REGION_PERCENT), region_mask()) >= 0.8, method


def iou(a, b):
    return float((a & b).sum() / (a | b).sum())


def test_occlusion_through_rcdm_moves_samples_only_for_patches_in_the_region(region_run):
    _, _, maps = region_run
    for name in ("occlusion_pixel", "occlusion_rep"):
        for m in maps["rcdm"][name]:
            # Same x_T and same condition outside the region: the samples do not move (up to float rounding
            # between batch sizes); inside, occluding a patch changes r(x) and moves them.
            outside, inside = float(m[~region_mask()].max()), float(m[region_mask()].min())
            assert outside < 1e-6 and inside > 10 * outside, name
            assert iou(top_mask(m, REGION_PERCENT), region_mask()) == 1.0


def test_metrics_tables_and_figures_are_reported(region_run):
    ctx, res, maps = region_run
    metrics = res.metrics["a"]
    key = f"iou_top{REGION_PERCENT:g}pct"
    occ = metrics["agreement"]["occlusion"]["vs_occlusion_pixel"]
    assert occ["spearman"] > 0.5 and occ[key] >= 0.8
    assert set(metrics["infidelity"]) == set(ALL) and all(
        v is not None for v in metrics["infidelity"].values()
    )
    assert metrics["gradcam_layer"] == "cam"
    assert len(res.tables[0]["rows"]) == len(ALL) * 3
    assert res.figures and (ctx.out_dir / res.figures[0]).read_bytes()[:4] == b"\x89PNG"
    per_image = json.loads((ctx.out_dir / "probes" / "attribution" / "a_per_image.json").read_text())
    assert per_image["ids"] == ["img0", "img1"]
    assert maps["rcdm"]["sample_std"].shape == (2, SIZE, SIZE)


def test_spearman_of_a_map_with_itself_is_one_and_with_its_negative_minus_one():
    g = torch.Generator().manual_seed(1)
    m = torch.rand(SIZE, SIZE, generator=g)
    tied = (m * 4).floor()  # ties get average ranks
    for x in (m, tied):
        assert spearman(x, x) == pytest.approx(1.0, abs=1e-12)
        assert spearman(x, -x) == pytest.approx(-1.0, abs=1e-12)
    from scipy.stats import spearmanr

    other = torch.rand(SIZE, SIZE, generator=g)
    assert spearman(tied, other) == pytest.approx(spearmanr(tied.flatten(), other.flatten())[0], abs=1e-12)
    assert spearman(torch.zeros(4, 4), m[:4, :4]) is None
    assert top_iou(m, m, 10) == 1.0 and top_iou(m, -m, 10) == 0.0


def test_ig_convergence_delta_is_small_with_a_blurred_baseline_on_a_smooth_encoder(tmp_path):
    torch.manual_seed(0)
    ctx = make_ctx(SmoothNet(), 16, tmp_path, smooth_images(2))
    res, _ = run_probe(
        ctx,
        methods=["integrated_gradients"],
        ig_steps=64,
        baseline="blurred",
        rcdm_occlusion=False,
        infidelity_samples=0,
    )
    conv = res.metrics["a"]["ig_convergence"]
    assert conv["max_rel_delta"] < 1e-3
    assert not any("delta" in n for n in res.notes)


def test_a_large_ig_delta_is_warned_in_notes_and_stderr(tmp_path, capsys):
    torch.manual_seed(0)
    ctx = make_ctx(SmoothNet(), 16, tmp_path, smooth_images(1))
    res, _ = run_probe(
        ctx, methods=["integrated_gradients"], ig_steps=2, delta_warn=1e-9, rcdm_occlusion=False
    )
    assert any("IG convergence delta" in n for n in res.notes)
    assert "IG convergence delta" in capsys.readouterr().err


def vit_encoder_module():
    timm = pytest.importorskip("timm")
    torch.manual_seed(0)
    return timm.create_model(
        "vit_tiny_patch16_224", pretrained=False, img_size=SIZE, patch_size=8, depth=3, num_classes=0
    )


def test_vit_gradcam_map_has_the_image_spatial_shape(tmp_path):
    vit = vit_encoder_module().eval()
    blocks = list(vit.blocks)
    ctx = make_ctx(vit, vit.num_features, tmp_path, smooth_images(1), n_samples=2)
    res, maps = run_probe(ctx, methods=["gradcam"], rcdm_occlusion=False, infidelity_samples=2)
    cam = maps["attributions"]["gradcam"]
    assert cam.shape == (1, SIZE, SIZE)
    assert float(cam.std()) > 0  # a map over the image, not one value
    # The block before the last: the last block's patch tokens never reach a class-token readout.
    assert res.metrics["a"]["gradcam_layer"] == "blocks.1"
    assert list(vit.blocks) == blocks  # the token-grid wrapper was removed again


def test_runs_in_inference_mode_and_restores_mode_and_grad_flags(tmp_path):
    torch.manual_seed(0)
    net = RegionNet()
    net.train()
    net.conv.eval()
    net.fc.weight.requires_grad_(False)
    before = (
        {n: m.training for n, m in net.named_modules()},
        {n: p.requires_grad for n, p in net.named_parameters()},
    )
    with torch.inference_mode():
        ctx = make_ctx(net, 16, tmp_path, smooth_images(1))
        res, maps = run_probe(ctx, methods=ALL, rcdm_patch=8, sensitivity_samples=1)
    after = (
        {n: m.training for n, m in net.named_modules()},
        {n: p.requires_grad for n, p in net.named_parameters()},
    )
    assert after == before
    assert float(maps["attributions"]["integrated_gradients"].sum()) > 0
    assert res.metrics["a"]["sensitivity_max"]["saliency"] is not None


def test_same_seed_gives_the_same_maps(tmp_path):
    runs = []
    for sub in ("x", "y"):
        torch.manual_seed(0)
        ctx = make_ctx(RegionNet(), 16, tmp_path / sub, smooth_images(1))
        runs.append(run_probe(ctx, methods=["gradient_shap", "saliency"], rcdm_patch=8)[1])
    for m in ("gradient_shap", "saliency"):
        assert torch.equal(runs[0]["attributions"][m], runs[1]["attributions"][m])
    assert torch.equal(runs[0]["rcdm"]["occlusion_pixel"], runs[1]["rcdm"]["occlusion_pixel"])


def test_dimension_and_other_image_targets(tmp_path):
    torch.manual_seed(0)
    ctx = make_ctx(RegionNet(), 16, tmp_path, smooth_images(2))
    _, maps = run_probe(ctx, methods=["saliency"], target="dim:3", rcdm_occlusion=False, n_images=1)
    sal = maps["attributions"]["saliency"][0]
    assert iou(top_mask(sal, REGION_PERCENT), region_mask()) >= 0.8
    _, maps = run_probe(
        ctx, methods=["integrated_gradients"], target="image:1", rcdm_occlusion=False, n_images=1
    )
    assert float(maps["attributions"]["integrated_gradients"][0][~region_mask()].abs().max()) == 0.0
    with pytest.raises(rc.ConfigError, match="dim:99"):
        run_probe(ctx, methods=["saliency"], target="dim:99", rcdm_occlusion=False)


def test_registered_with_declared_options(manager):
    from rcdm_core.config import resolve_options

    rec, _ = manager.get("probe", "attribution")
    opts = resolve_options("probe attribution", rec.options, {"methods": "ig,occlusion", "ig_steps": 8})
    assert opts["methods"] == ["integrated_gradients", "occlusion"] and opts["ig_steps"] == 8
    with pytest.raises(rc.ConfigError, match="unknown method 'lime'"):
        resolve_options("probe attribution", rec.options, {"methods": ["lime"]})
    with pytest.raises(rc.ConfigError, match="target"):
        resolve_options("probe attribution", rec.options, {"target": "class:3"})


def test_real_ddim_sampler_gives_the_same_occlusion_map(tmp_path, manager):
    sampler = rc.get_sampler("ddim:5")  # first-party: always registered
    torch.manual_seed(0)
    ctx = make_ctx(RegionNet(), 16, tmp_path, smooth_images(1), sampler=sampler, n_samples=2)
    _, maps = run_probe(ctx, methods=["occlusion"], rcdm_patch=4, infidelity_samples=0)
    m = maps["rcdm"]["occlusion_pixel"][0]
    assert float(m[~region_mask()].max()) < 1e-6 and iou(top_mask(m, REGION_PERCENT), region_mask()) == 1.0
