"""The thinnest complete path through the real CLI and real plugins: photos -> encoder -> ADM -> DDPM -> grid."""

from __future__ import annotations

import json

import torch
from PIL import Image

import rcdm_core as rc

from .conftest import run_cli


def test_rcdm_run_on_builtin_photos_writes_a_sample_grid(tmp_path, manager):
    rep = rc.load_encoder("ssl-small", layer="backbone")
    torch.manual_seed(0)
    model = rc.build_denoiser(
        "adm",
        image_size=32,
        num_channels=32,
        channel_mult="1,2",
        num_res_blocks=1,
        attention_resolutions="16",
        cond_dim=rep.dim,
    )
    ckpt = rc.save_denoiser(model, tmp_path / "ema_0.9999_000000.pt")
    loaded = rc.load_denoiser(ckpt)
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), loaded.state_dict().values()))
    out = tmp_path / "run"
    res = run_cli(
        "run",
        "--encoder",
        "ssl-small",
        "--layer",
        "backbone",
        "--checkpoint",
        str(ckpt),
        "--probe",
        "samples",
        "--data",
        "builtin:photos?split=heldout&size=32",
        "--sampler",
        "ddpm:4",
        "--n-images",
        "2",
        "--n-samples",
        "3",
        "--out",
        str(out),
        "--device",
        "cpu",
    )
    assert res.returncode == 0, res.stderr
    assert "RANDOM weights" in res.stderr  # said loudly
    grid = Image.open(out / "probes" / "samples" / "backbone.png")
    # 2 rows (original, 3 samples, variance map) of 32 px tiles with 2 px padding, upscaled x4 for viewing
    assert grid.size == ((5 * 34 + 2) * 4, (2 * 34 + 2) * 4)
    doc = json.loads((out / "metrics.json").read_text())
    assert doc["schema_version"] == 1 and doc["arms"]["backbone"]["random_weights"] is True
    assert 0 < doc["probes"]["samples"]["metrics"]["backbone"]["mean_pixel_std"] < 1
    assert (out / "report.html").exists() and (out / "config.toml").exists()


def test_bad_input_gives_one_line(tmp_path, manager):
    res = run_cli(
        "run",
        "--encoder",
        "no-such-encoder",
        "--checkpoint",
        str(tmp_path / "x.pt"),
        "--data",
        "builtin:digits",
    )
    assert res.returncode == 2
    lines = res.stderr.strip().splitlines()
    assert (
        len(lines) == 1
        and "unknown encoder 'no-such-encoder'; available:" in lines[0]
        and "ssl-small" in lines[0]
    )
    res = run_cli(
        "run",
        "--encoder",
        "ssl-small",
        "--checkpoint",
        str(tmp_path / "x.pt"),
        "--data",
        "folder:/nonexistent",
    )
    assert res.returncode == 2 and len(res.stderr.strip().splitlines()) >= 1
