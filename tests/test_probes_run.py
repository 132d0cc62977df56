"""All probes through the run pipeline (``rcdm_core.run.execute``): two arms side by side, repeats, report."""

from __future__ import annotations

import json
import types

import pytest
import rcdm_probes as probes_plugin
import torch

import rcdm_core as rc
from rcdm_core.config import build_config
from rcdm_core.run import execute
from tests.test_probes_models import (
    SIDE,
    OneStepSampler,
    VectorSelector,
    luma_encoder,
    pixel_encoder,
    pixels_decoder,
    random_images,
    tinted_luma_decoder,
)

DECODERS = {"pixels": (pixels_decoder, 3 * SIDE * SIDE), "luma": (tinted_luma_decoder, SIDE * SIDE)}


class Decoder(rc.ConditionalDenoiser):
    """Decodes the condition back to an image (see tests/test_probes_models.py), plus a little noise."""

    def __init__(self, kind: str = "pixels", **_):
        super().__init__()
        self.decode, self.cond_dim = DECODERS[kind]
        self.image_size, self.learn_sigma, self.flags = SIDE, False, {"kind": kind}
        self.noise = torch.nn.Parameter(torch.tensor(0.05))

    def forward(self, x_t, t, cond):
        return self.decode(cond) * 2 - 1 + self.noise * x_t


class Smooth(rc.DataSource):
    def __init__(self, arg):
        self.skipped, self.seed = [], int(arg)

    def __iter__(self):
        imgs = (random_images(24, seed=self.seed) * 255).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()
        for i, a in enumerate(imgs):
            yield f"s{self.seed}_{i}", a


@pytest.fixture
def toy(fresh_manager, tmp_path):
    plugin = types.SimpleNamespace(
        rcdm_encoders=rc.hookimpl(
            lambda: [
                rc.EncoderRecord("pix", lambda a, w, t: pixel_encoder()),
                rc.EncoderRecord("luma", lambda a, w, t: luma_encoder()),
            ]
        ),
        rcdm_layer_selectors=rc.hookimpl(lambda: [rc.LayerSelectorRecord("backbone", VectorSelector)]),
        rcdm_denoisers=rc.hookimpl(
            lambda: [rc.DenoiserRecord("decoder", Decoder, detect=lambda sd: "noise" in sd)]
        ),
        rcdm_samplers=rc.hookimpl(lambda: [rc.SamplerRecord("onestep", lambda steps: OneStepSampler())]),
        rcdm_data_sources=rc.hookimpl(lambda: [rc.DataSourceRecord("smooth:", lambda arg: Smooth(arg))]),
    )
    fresh_manager.register_module(plugin, name="toy")
    fresh_manager.register_module(probes_plugin, name="probes")
    ckpts = {}
    for kind in DECODERS:
        path = tmp_path / f"{kind}.pt"
        torch.save(Decoder(kind).state_dict(), path)
        path.with_suffix(".json").write_text(json.dumps({"denoiser": "decoder", "flags": {"kind": kind}}))
        ckpts[kind] = str(path)
    return ckpts


def test_every_probe_runs_side_by_side_with_repeats_and_lands_in_metrics_and_report(toy, tmp_path):
    cfg = build_config(
        {
            "data": "smooth:0",
            "reference": "smooth:1",
            "sampler": "onestep:1",
            "probes": [
                "samples",
                "invariance",
                "adversarial",
                "manipulation",
                "interpolation",
                "faithfulness",
                "fidelity",
            ],
            "out": str(tmp_path / "run"),
            "n_images": 4,
            "n_samples": 2,
            "repeats": 2,
            "device": "cpu",
            "progress": False,
            "arm": [
                {"name": "keeps_colour", "encoder": "pix", "checkpoint": toy["pixels"]},
                {"name": "colour_invariant", "encoder": "luma", "checkpoint": toy["luma"]},
            ],
            "probe": {"invariance": {"augmentations": ["grayscale", "flip"]}, "adversarial": {"steps": 2}},
        }
    )
    out = execute(cfg)
    doc = json.loads((out / "metrics.json").read_text())
    assert sorted(doc["probes"]) == sorted(cfg.probes)
    for name, probe in doc["probes"].items():
        assert set(probe["metrics"]) == {"keeps_colour", "colour_invariant"}, name
        assert probe["notes"], name
        for fig in probe["figures"]:
            assert (out / fig).is_file(), fig
    inv = doc["probes"]["invariance"]["metrics"]
    keep, inv_ = inv["keeps_colour"]["grayscale"]["carried"], inv["colour_invariant"]["grayscale"]["carried"]
    assert keep["mean"] > 0.7 and abs(inv_["mean"]) < 0.05 and len(keep["values"]) == 2
    faith = doc["probes"]["faithfulness"]["metrics"]["keeps_colour"]
    assert faith["top1"]["mean"] == 1.0 and faith["n_candidates"]["mean"] == 4 + 24
    report = (out / "report.html").read_text()
    assert "not carried for colour_invariant" in report and "keeps_colour" in report
