"""``rcdm train`` end to end on tiny models: overfitting one batch, exact resume, 2-process DDP equals 1 process,
the cond_dim error, the sidecar and ``rcdm inspect``."""

from __future__ import annotations

import json

import pytest
import torch

import rcdm_core as rc
from rcdm_core.cli import main
from rcdm_core.diffusion import Diffusion
from rcdm_core.io import safe_load
from rcdm_core.training import TrainConfig, train

from .conftest import torchrun

TINY = ["--image_size", "16", "--num_channels", "32", "--channel_mult", "1,2", "--num_res_blocks", "1",
        "--attention_resolutions", "8", "--num_heads", "2"]  # fmt: skip
DATA = [
    "--encoder",
    "ssl-small",
    "--layer",
    "backbone",
    "--data",
    "builtin:photos?size=32",
    "--n-images",
    "6",
]


def _train(out, *extra):
    argv = ["train", *DATA, "--out", str(out), *TINY, "--batch_size", "4", "--save_interval", "2",
            "--log-interval", "1", "--cache-cond", "--no-progress", "--device", "cpu", *extra]  # fmt: skip
    return main(argv)


def test_a_tiny_denoiser_overfits_one_batch():
    """Same x0, t and noise every step: the hybrid loss falls from ~1.2 to below 0.05 in 20 AdamW steps."""
    torch.manual_seed(0)
    model = rc.build_denoiser("adm", image_size=8, num_channels=32, channel_mult="1,2", num_res_blocks=1,
                              attention_resolutions="4", num_heads=1, cond_dim=4)  # fmt: skip
    diffusion = Diffusion.from_flags(1000, "linear")
    gen = torch.Generator().manual_seed(0)
    x0 = torch.rand(2, 3, 8, 8, generator=gen) * 2 - 1
    batch = (
        x0,
        torch.randn(2, 4, generator=gen),
        torch.tensor([10, 400]),
        torch.randn(2, 3, 8, 8, generator=gen),
    )

    def loss_fn(m, b, step):
        terms = diffusion.training_losses(m, b[0], b[2], b[1], b[3], learn_sigma=True)
        return terms["loss"].mean(), {}

    import tempfile

    with tempfile.TemporaryDirectory() as d:
        cfg = TrainConfig(out_dir=d, steps=20, global_batch=2, lr=5e-3, save_interval=20, progress=False)
        rows = train(model, loss_fn, lambda step: batch, cfg).rows
    assert rows[0]["loss"] > 0.9
    assert rows[-1]["loss"] < 0.05


def test_resume_gives_the_same_weights_as_an_uninterrupted_run(tmp_path):
    assert _train(tmp_path / "full", "--steps", "4") == 0
    assert _train(tmp_path / "part", "--steps", "2") == 0
    assert _train(tmp_path / "part", "--steps", "4", "--resume") == 0
    for name in ("model000004.pt", "ema_0.9999_000004.pt"):
        a, b = safe_load(tmp_path / "full" / name), safe_load(tmp_path / "part" / name)
        assert list(a) == list(b) and all(torch.equal(a[k], b[k]) for k in a), name
    side = json.loads((tmp_path / "part" / "model000004.json").read_text())
    assert side["encoder"] == "ssl-small" and side["layer"] == "backbone" and side["cond_dim"] == 256
    assert side["flags"]["image_size"] == 16 and side["step"] == 4 and side["denoiser"] == "adm"
    # the cache is the rc.Features format: both flips of every image
    cache = safe_load(tmp_path / "full" / "cond_cache.pt")
    assert cache["features"].shape == (12, 256) and cache["ids"][6].endswith("|flip")
    # the checkpoint loads back through rc.load_denoiser with its sidecar, strictly and unchanged
    model = rc.load_denoiser(tmp_path / "full" / "ema_0.9999_000004.pt")
    assert model.cond_dim == 256 and model.image_size == 16
    assert all(
        torch.equal(v, a_v)
        for v, a_v in zip(
            model.state_dict().values(), safe_load(tmp_path / "full" / "ema_0.9999_000004.pt").values()
        )
    )

    # rcdm inspect reads the same file: layout, cond_dim, parameter count, encoder and layer from the sidecar
    out = tmp_path / "m.safetensors"
    assert main(["inspect", str(tmp_path / "full" / "model000004.pt"), "--to-safetensors", str(out)]) == 0
    converted, original = safe_load(out), safe_load(tmp_path / "full" / "model000004.pt")
    assert set(converted) == set(original) and all(torch.equal(converted[k], original[k]) for k in original)


def test_inspect_reports_layout_and_what_it_assumed(tmp_path, capsys):
    model = rc.build_denoiser("adm", image_size=16, num_channels=32, channel_mult="1,2", num_res_blocks=1,
                              attention_resolutions="8", cond_dim=7)  # fmt: skip
    torch.save(model.state_dict(), tmp_path / "ema.pt")
    assert main(["inspect", str(tmp_path / "ema.pt")]) == 2  # no sidecar, no default for "1,2": a clear error
    assert "pass image_size" in capsys.readouterr().err
    (tmp_path / "ema.json").write_text(
        json.dumps({"flags": {"image_size": 16}, "encoder": "e", "layer": "projector"})
    )
    assert main(["inspect", str(tmp_path / "ema.pt")]) == 0
    text = capsys.readouterr().out
    assert "cond_dim: 7" in text and f"parameters: {sum(p.numel() for p in model.parameters()):,}" in text
    assert "layer: projector" in text and "flags assumed" in text and "num_heads=4" in text


def test_init_with_a_different_cond_dim_names_both_numbers_and_the_layer(tmp_path, capsys):
    model = rc.build_denoiser("adm", image_size=16, num_channels=32, channel_mult="1,2", num_res_blocks=1,
                              attention_resolutions="8", num_heads=2, cond_dim=128)  # fmt: skip
    torch.save(model.state_dict(), tmp_path / "init.pt")
    (tmp_path / "init.json").write_text(json.dumps({"denoiser": "adm", "flags": model.flags}))
    assert _train(tmp_path / "run", "--steps", "1", "--init", str(tmp_path / "init.pt")) == 2
    err = capsys.readouterr().err
    assert "cond_dim 128" in err and "layer 'backbone'" in err and "256-d" in err


@pytest.mark.slow
def test_two_process_ddp_equals_one_process_with_the_same_global_batch(tmp_path):
    assert _train(tmp_path / "one", "--steps", "3", "--save_interval", "3") == 0
    args = ["train", *DATA, "--out", str(tmp_path / "two"), *TINY, "--batch_size", "4", "--save_interval", "3",
            "--steps", "3", "--cache-cond", "--device", "cpu"]  # fmt: skip
    proc = torchrun(*args, nproc=2)
    assert proc.returncode == 0, proc.stderr[-2000:]
    a, b = safe_load(tmp_path / "one" / "model000003.pt"), safe_load(tmp_path / "two" / "model000003.pt")
    assert list(a) == list(b)
    for k in a:
        torch.testing.assert_close(b[k], a[k], rtol=1e-4, atol=1e-6, msg=k)
    assert a["out.2.weight"].abs().sum() > 0  # zero-initialised, so it moved: the comparison is not vacuous
