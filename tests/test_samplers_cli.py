"""``rcdm sample``: images or saved vectors in, grids and tensors out; batching and ranks do not change samples."""

from __future__ import annotations

import json

import pytest
import torch

import rcdm_core as rc
from rcdm_core.cli import main
from rcdm_core.records import Features

from .conftest import torchrun

FLAGS = dict(
    image_size=16, num_channels=32, channel_mult="1,2", num_res_blocks=1, attention_resolutions="8", num_heads=1,
    cond_dim=32, learn_sigma=True, diffusion_steps=1000, noise_schedule="linear",
)  # fmt: skip


@pytest.fixture
def checkpoint(tmp_path, manager):
    model = rc.build_denoiser("adm", **FLAGS)  # first-party: always registered
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.05)
    path = tmp_path / "ema_0.9999_000001.pt"
    torch.save(model.state_dict(), path)
    path.with_suffix(".json").write_text(json.dumps({"denoiser": "adm", "flags": model.flags}))
    return path


@pytest.fixture
def cond_file(tmp_path):
    feats = torch.randn(3, 32, generator=torch.Generator().manual_seed(1))
    path = tmp_path / "reps.pt"
    Features(ids=["a", "b/c", "../d"], features=feats, meta={"layer": "backbone"}).save(path)
    return path, feats


def _sample(checkpoint, cond, out, *extra):
    argv = ["sample", "--checkpoint", str(checkpoint), "--cond", str(cond), "--sampler", "ddpm:4", "--n", "2"]
    return main([*argv, "--out", str(out), "--no-progress", "--device", "cpu", *extra])


def test_sample_from_vectors_writes_grids_and_tensors_independent_of_batch_size(
    tmp_path, checkpoint, cond_file
):
    path, feats = cond_file
    assert _sample(checkpoint, path, tmp_path / "b1", "--batch-size", "1") == 0
    assert _sample(checkpoint, path, tmp_path / "b4", "--batch-size", "4") == 0
    one = torch.load(tmp_path / "b1" / "samples.pt")
    four = torch.load(tmp_path / "b4" / "samples.pt")
    assert one["samples"].shape == (3, 2, 3, 16, 16) and one["ids"] == ["a", "b/c", "../d"]
    assert torch.equal(one["cond"], feats)
    assert (one["samples"] - four["samples"]).abs().max() <= 1e-5
    assert one["samples"].min() >= 0 and one["samples"].max() <= 1
    assert (
        one["samples"][:, 0] - one["samples"][:, 1]
    ).abs().max() > 0.01  # two different samples per condition
    grids = sorted(
        p.relative_to(tmp_path / "b1").as_posix() for p in (tmp_path / "b1" / "grids").rglob("*.png")
    )
    assert grids == ["grids/__/d.png", "grids/a.png", "grids/b/c.png"]  # ids stay inside the folder
    assert (tmp_path / "b1" / "grid.png").exists()
    # sample ids are global row positions: condition 1's samples are rows 2 and 3 of the run
    sampler = rc.get_sampler("ddpm:4")
    model = rc.load_denoiser(checkpoint)
    direct = sampler.sample(model, feats[1:2].repeat(2, 1), seed=0, sample_ids=[2, 3], progress=False)
    assert (rc.images.to_pixels(direct) - one["samples"][1]).abs().max() <= 1e-5


def test_sample_from_images_puts_the_original_first(tmp_path, checkpoint, capsys):
    base = ["sample", "--checkpoint", str(checkpoint), "--encoder", "ssl-small", "--data", "builtin:photos"]
    rest = ["--n-images", "2", "--sampler", "ddim:3", "--n", "2", "--no-progress", "--device", "cpu"]
    assert main([*base, "--layer", "block:layer1", *rest, "--out", str(tmp_path / "o")]) == 0
    saved = torch.load(tmp_path / "o" / "samples.pt")
    assert saved["samples"].shape == (2, 2, 3, 16, 16) and saved["cond"].shape == (2, 32)
    assert len(list((tmp_path / "o" / "grids").rglob("*.png"))) == 2
    # the projector of ssl-small is 128-d but the checkpoint wants 32: refused, naming both and the layer
    assert main([*base, "--layer", "projector", *rest, "--out", str(tmp_path / "p")]) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert "cond_dim 32" in err and "'projector'" in err and "128" in err


def test_cond_dimension_mismatch_and_nan_are_refused(tmp_path, checkpoint, capsys):
    bad = tmp_path / "bad.pt"
    Features(ids=["x"], features=torch.zeros(1, 9), meta={}).save(bad)
    assert _sample(checkpoint, bad, tmp_path / "o") == 2
    err = capsys.readouterr().err
    assert "dimension 9" in err and "cond_dim 32" in err and err.count("\n") == 1, err
    nan = tmp_path / "nan.pt"
    Features(ids=["x", "y"], features=torch.tensor([[0.0] * 32, [float("nan")] * 32]), meta={}).save(nan)
    assert _sample(checkpoint, nan, tmp_path / "o") == 2
    assert "rows [1] hold NaN" in capsys.readouterr().err


def test_bad_sampler_string_exits_with_one_line(tmp_path, checkpoint, cond_file, capsys):
    assert _sample(checkpoint, cond_file[0], tmp_path / "o", "--sampler", "ddpm:0") == 2
    err = capsys.readouterr().err
    assert "accepted: ddpm:N" in err and err.count("\n") == 1
    assert _sample(checkpoint, cond_file[0], tmp_path / "o", "--n", "0") == 2
    assert "--n, --batch-size and --n-images must be at least 1" in capsys.readouterr().err


def test_two_ranks_give_the_same_samples_as_one(tmp_path, checkpoint, cond_file):
    path, _ = cond_file
    assert _sample(checkpoint, path, tmp_path / "single", "--batch-size", "2") == 0
    res = torchrun(
        "sample", "--checkpoint", str(checkpoint), "--cond", str(path), "--sampler", "ddpm:4", "--n-samples", "2",
        "--out", str(tmp_path / "multi"), "--device", "cpu", "--batch-size", "2",
    )  # fmt: skip
    assert res.returncode == 0, res.stderr[-2000:]
    single = torch.load(tmp_path / "single" / "samples.pt")["samples"]
    multi = torch.load(tmp_path / "multi" / "samples.pt")["samples"]
    assert (single - multi).abs().max() <= 1e-5
