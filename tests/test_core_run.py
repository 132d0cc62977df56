"""The run pipeline on a fresh manager with throwaway components: folder, config, metrics, report, repeats."""

from __future__ import annotations

import json
import types

import pytest
import torch

import rcdm_core as rc
from rcdm_core.config import build_config, tomllib
from rcdm_core.noise import sample_noise
from rcdm_core.run import execute

from .toys import ToySampler


class MeanColour(rc.Encoder):
    name = "mean-colour"
    input_size = 8
    mean = None
    std = None
    random_weights = False

    def __init__(self):
        self.module = torch.nn.Identity()
        self.meta = {"weights": None}

    def features(self, x, layers):
        return {"backbone": x.mean(dim=(2, 3))}

    def layers(self):
        return {"backbone": 3}


class Backbone(rc.LayerSelector):
    def feature_name(self, spec, encoder):
        return "backbone"

    def reduce(self, spec, feature):
        return feature

    def dim(self, spec, encoder):
        return 3


class Flat(rc.ConditionalDenoiser):
    """Predicts zero noise; the fake sampler below paints the condition's colour."""

    def __init__(self, image_size=8, cond_dim=3):
        super().__init__()
        self.image_size, self.cond_dim, self.learn_sigma = image_size, cond_dim, False
        self.flags = {"image_size": image_size, "cond_dim": cond_dim}
        self.w = torch.nn.Parameter(torch.ones(1))

    def forward(self, x, t, cond):
        return torch.zeros_like(x)


class Paint(ToySampler):
    def __init__(self, steps):
        self.steps = steps

    def draw(self, denoiser, cond, x_T, seed, ids):
        noise = sample_noise(x_T.shape[1:], seed, ids, 0)
        return (cond[:, :, None, None] * 2 - 1 + 0.1 * noise).clamp(-1, 1)


class ColourProbe(rc.Probe):
    def __init__(self, scale=1.0):
        self.scale = scale

    def run(self, ctx):
        metrics, figures = {}, []
        for arm in ctx.arms:
            imgs = ctx.images_for(arm)
            cond = ctx.encode(arm, imgs)
            samples = ctx.sample(arm, cond)
            err = (samples.mean(dim=(2, 3)) - cond).abs().mean() * self.scale
            metrics[arm.name] = {"colour_error": float(err), "seed_seen": ctx.seed}
            from rcdm_core.images import save_rows

            path = save_rows([imgs, samples], ctx.probe_dir("colour") / f"{arm.name}.png")
            figures.append(str(path.relative_to(ctx.out_dir)))
        return rc.ProbeResult(
            metrics=metrics, figures=figures, summary="ok", notes=["a reading from the numbers"]
        )


class Solid(rc.DataSource):
    def __init__(self, arg):
        self.skipped = []

    def __iter__(self):
        for i in range(5):
            yield f"img{i}", torch.full((12, 12, 3), 40 * i, dtype=torch.uint8).numpy()


@pytest.fixture
def toy(fresh_manager, tmp_path):
    plugin = types.SimpleNamespace(
        rcdm_encoders=rc.hookimpl(lambda: [rc.EncoderRecord("mean-colour", lambda a, w, t: MeanColour())]),
        rcdm_layer_selectors=rc.hookimpl(lambda: [rc.LayerSelectorRecord("backbone", Backbone)]),
        rcdm_denoisers=rc.hookimpl(lambda: [rc.DenoiserRecord("flat", Flat, detect=lambda sd: "w" in sd)]),
        rcdm_samplers=rc.hookimpl(lambda: [rc.SamplerRecord("paint", Paint)]),
        rcdm_probes=rc.hookimpl(
            lambda: [
                rc.ProbeRecord(
                    "colour", lambda **o: ColourProbe(**o), options={"scale": rc.Option(1.0, type=float)}
                )
            ]
        ),
        rcdm_data_sources=rc.hookimpl(lambda: [rc.DataSourceRecord("solid:", lambda arg: Solid(arg))]),
    )
    fresh_manager.register_module(plugin, name="toy")
    ckpt = tmp_path / "flat.pt"
    torch.save(Flat().state_dict(), ckpt)
    return ckpt


def _cfg(ckpt, out, **extra):
    raw = {
        "data": "solid:x",
        "sampler": "paint:1",
        "probes": ["colour"],
        "out": str(out),
        "n_images": 3,
        "device": "cpu",
        "progress": False,
        "arm": [{"name": "a", "encoder": "mean-colour", "checkpoint": str(ckpt)}],
    }
    raw.update(extra)
    return build_config(raw)


def test_run_writes_config_metrics_figures_and_report(toy, tmp_path):
    out = execute(_cfg(toy, tmp_path / "run"))
    doc = json.loads((out / "metrics.json").read_text())
    assert doc["schema_version"] == 1 and doc["n_images"] == 3
    assert doc["probes"]["colour"]["metrics"]["a"]["colour_error"] < 0.1
    cfg = tomllib.loads((out / "config.toml").read_text())
    assert cfg["arm"][0]["encoder"] == "mean-colour" and "versions" in cfg and "git_commit" in cfg
    report = (out / "report.html").read_text()
    for fig in doc["probes"]["colour"]["figures"]:
        assert (out / fig).exists() and f'data-file="{fig}"' in report
    assert "a reading from the numbers" in report and "colour_error" in report


def test_same_seed_same_metrics_and_repeats_aggregate(toy, tmp_path):
    a = json.loads((execute(_cfg(toy, tmp_path / "r1")) / "metrics.json").read_text())
    b = json.loads((execute(_cfg(toy, tmp_path / "r2")) / "metrics.json").read_text())
    assert a["probes"]["colour"]["metrics"] == b["probes"]["colour"]["metrics"]
    r = json.loads((execute(_cfg(toy, tmp_path / "r3", repeats=3)) / "metrics.json").read_text())
    seeds = r["probes"]["colour"]["metrics"]["a"]["seed_seen"]
    assert seeds["values"] == [0.0, 1.0, 2.0] and seeds["mean"] == 1.0 and seeds["std"] == 1.0


def test_undeclared_probe_option_and_unknown_probe_are_errors(toy, tmp_path):
    with pytest.raises(rc.ConfigError, match="unknown option 'scael'"):
        execute(_cfg(toy, tmp_path / "x", probe={"colour": {"scael": 2}}))
    with pytest.raises(rc.ConfigError, match="unknown probe 'nope'; available: colour"):
        execute(_cfg(toy, tmp_path / "x", probes=["nope"]))


def test_cond_dim_mismatch_names_both_numbers(toy, tmp_path):
    ckpt = tmp_path / "f5.pt"
    torch.save(Flat(cond_dim=5).state_dict(), ckpt)
    ckpt.with_suffix(".json").write_text(json.dumps({"denoiser": "flat", "flags": {"cond_dim": 5}}))
    with pytest.raises(
        rc.ConfigError, match=r"expects cond_dim 5 but layer 'backbone' of mean-colour gives 3"
    ):
        execute(_cfg(ckpt, tmp_path / "y"))


def test_nan_representation_is_refused_before_sampling(toy, tmp_path):
    from rcdm_core.context import ProbeContext
    from rcdm_core.run import build_arm

    arm = build_arm(rc.Arm("a", "mean-colour", checkpoint=str(toy)), torch.device("cpu"))
    ctx = ProbeContext(
        arms=[arm],
        ids=["x"],
        images=torch.zeros(1, 3, 8, 8),
        sampler=Paint(1),
        sampler_spec="paint:1",
        seed=0,
        out_dir=tmp_path,
        progress=False,
    )
    with pytest.raises(rc.RcdmError, match="NaN or inf"):
        ctx.sample(arm, torch.tensor([[0.1, float("nan"), 0.2]]))
