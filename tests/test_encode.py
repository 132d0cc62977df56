"""``rcdm encode`` and ``rcdm layers`` through the real CLI, single process and under torchrun."""

from __future__ import annotations

import json

import torch
from rcdm_encoders import factories as F
from rcdm_encoders import small

import rcdm_core as rc
from rcdm_core.data import load_images
from tests.conftest import run_cli, torchrun

DATA = "builtin:photos?size=32"


def _weights(tmp_path):
    torch.manual_seed(0)
    trunk = small.SmallResNet((4, 8, 8, 16), (1, 1, 1, 1))
    proj = F.small_projector(16, "simclr", hidden=12, out=6)
    path = tmp_path / "ssl_small.pt"
    torch.save(
        {
            **{"backbone." + k: v for k, v in trunk.state_dict().items()},
            **{"projector." + k: v for k, v in proj.state_dict().items()},
        },
        path,
    )
    path.with_suffix(".json").write_text(json.dumps({"method": "simclr", "architecture": {"input_size": 32}}))
    return path


def test_encode_writes_ids_features_meta_in_source_order_and_torchrun_agrees(tmp_path, manager):
    weights = _weights(tmp_path)
    one, two = tmp_path / "one.pt", tmp_path / "two.pt"
    args = [
        "encode",
        "--encoder",
        "ssl-small",
        "--weights",
        str(weights),
        "--layer",
        "projector",
        "--data",
        DATA,
        "--limit",
        "7",
        "--batch-size",
        "3",
        "--device",
        "cpu",
    ]
    res = run_cli(*args, "--out", str(one))
    assert res.returncode == 0, res.stderr
    got = torch.load(one)
    ids, pixels = load_images(DATA, limit=7)
    rep = rc.load_encoder("ssl-small", weights=str(weights), layer="projector")
    assert got["ids"] == ids
    assert got["features"].shape == (7, 6)
    assert torch.allclose(got["features"], rep.encode(pixels), atol=1e-5)
    meta = got["meta"]
    assert meta["layer"] == "projector" and meta["layout"] == "rcdm-ssl" and meta["random_weights"] is False
    assert meta["weights_sha256"] == rep.encoder.meta["sha256"] and meta["n"] == 7

    res = torchrun(*args, "--out", str(two))
    assert res.returncode == 0, res.stderr
    dist = torch.load(two)
    assert dist["ids"] == got["ids"]
    assert torch.allclose(dist["features"], got["features"], atol=1e-6)


def test_layers_lists_dims_and_a_missing_head_is_one_line(tmp_path):
    weights = _weights(tmp_path)
    res = run_cli("layers", "--encoder", "ssl-small", "--weights", str(weights), "--json")
    assert res.returncode == 0, res.stderr
    listing = json.loads(res.stdout)
    assert listing["layers"]["projector"] == 6 and listing["layers"]["block:layer2:avg"] == 8
    trunk_only = tmp_path / "trunk.pt"
    state = torch.load(weights)
    torch.save({k: v for k, v in state.items() if k.startswith("backbone.")}, trunk_only)
    res = run_cli(
        "encode",
        "--encoder",
        "ssl-small",
        "--weights",
        str(trunk_only),
        "--layer",
        "projector",
        "--data",
        DATA,
        "--out",
        str(tmp_path / "x.pt"),
    )
    assert res.returncode == 2
    err = res.stderr.strip().splitlines()[-1]
    assert err.startswith("rcdm: error:") and "holds no projector head" in err
