"""Safe loading, atomic writes, seeded noise, config validation, CLI flag handling."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch

import rcdm_core as rc
from rcdm_core import io as rio
from rcdm_core.cli import normalise_argv
from rcdm_core.config import build_config, parse_opt_assignments, resolve_options, to_toml, tomllib
from rcdm_core.noise import sample_noise

from .conftest import run_cli


class _RunsCode:
    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_safe_load_refuses_code_running_pickle_and_code_does_not_run(tmp_path):
    marker = tmp_path / "pwned"
    evil = _RunsCode()
    evil.marker = marker
    path = tmp_path / "evil.pt"
    torch.save({"w": torch.zeros(2), "x": evil}, path)
    with pytest.raises(rc.CheckpointError, match="--trust-checkpoint") as info:
        rio.safe_load(path)
    assert "system" in str(info.value)  # names the offending global (posix.system / os.system)
    assert not marker.exists()


def test_safe_load_allows_namespace_and_reads_tensors_exactly(tmp_path):
    import argparse

    state = {"teacher": {"a": torch.randn(3, 4)}, "args": argparse.Namespace(arch="vit_small")}
    torch.save(state, tmp_path / "dino.pth")
    got = rio.safe_load(tmp_path / "dino.pth")
    assert torch.equal(got["teacher"]["a"], state["teacher"]["a"]) and got["args"].arch == "vit_small"


def test_safe_load_truncated_and_empty_files(tmp_path):
    torch.save({"a": torch.randn(100)}, tmp_path / "ok.pt")
    data = (tmp_path / "ok.pt").read_bytes()
    (tmp_path / "cut.pt").write_bytes(data[: len(data) // 2])
    (tmp_path / "empty.pt").write_bytes(b"")
    with pytest.raises(rc.CheckpointError, match="cut.pt"):
        rio.safe_load(tmp_path / "cut.pt")
    with pytest.raises(rc.CheckpointError, match="empty"):
        rio.safe_load(tmp_path / "empty.pt")


def test_atomic_write_interrupted_leaves_old_file_intact(tmp_path, monkeypatch):
    target = tmp_path / "model.pt"
    rio.atomic_write_bytes(target, b"old contents")

    def die(tmp):
        raise KeyboardInterrupt  # a kill between writing and renaming

    monkeypatch.setattr(rio, "_before_replace_hook", die)
    with pytest.raises(KeyboardInterrupt):
        rio.atomic_write_bytes(target, b"new contents that never land")
    assert target.read_bytes() == b"old contents"
    assert [p.name for p in tmp_path.iterdir()] == ["model.pt"]  # no temporary left behind


def test_atomic_write_failure_says_previous_file_is_intact(tmp_path):
    target = tmp_path / "x.json"
    rio.atomic_write_text(target, "{}")

    def enospc(fh):
        raise OSError(28, "No space left on device")

    with pytest.raises(rc.RcdmError, match="No space left on device; the previous file is intact"):
        rio.atomic_write(target, enospc)
    assert target.read_text() == "{}"


def test_atomic_write_killed_process_leaves_old_file(tmp_path):
    target = tmp_path / "f.bin"
    target.write_bytes(b"A" * 10)
    code = (
        "import os, rcdm_core.io as rio\n"
        "rio._before_replace_hook = lambda tmp: os.kill(os.getpid(), 9)\n"
        f"rio.atomic_write_bytes({str(target)!r}, b'B' * 10**6)\n"
    )
    res = subprocess.run([sys.executable, "-c", code], capture_output=True)
    assert res.returncode == -9
    assert target.read_bytes() == b"A" * 10


def test_noise_is_keyed_on_seed_sample_and_step():
    a = sample_noise((3, 4, 4), seed=1, sample_ids=[0, 1, 2], step=5)
    b = sample_noise((3, 4, 4), seed=1, sample_ids=[2], step=5)
    assert torch.equal(a[2], b[0])  # independent of batch composition
    assert not torch.equal(a[0], a[1])
    assert not torch.equal(a, sample_noise((3, 4, 4), seed=1, sample_ids=[0, 1, 2], step=6))
    assert not torch.equal(a, sample_noise((3, 4, 4), seed=2, sample_ids=[0, 1, 2], step=5))
    assert abs(float(sample_noise((1000,), 0, range(20), 0).std()) - 1.0) < 0.02


def test_config_rejects_unknown_keys_and_bad_types():
    with pytest.raises(rc.ConfigError, match="unknown key 'sampel'"):
        build_config({"sampel": "ddim:10"})
    with pytest.raises(rc.ConfigError, match="n_samples must be int"):
        build_config({"n_samples": "many"})
    with pytest.raises(rc.ConfigError, match="repeats must be a positive integer"):
        build_config({"repeats": -1})
    with pytest.raises(rc.ConfigError, match="unknown key 'wieghts'"):
        build_config({"arm": [{"name": "a", "encoder": "x", "wieghts": "f"}]})
    with pytest.raises(rc.ConfigError, match="input_norm"):
        build_config({"arm": [{"name": "a", "encoder": "x", "input_norm": "imagenet"}]})
    cfg = build_config({"arm": [{"name": "b", "encoder": "e", "layer": "projector"}], "seed": 3})
    assert cfg.arms[0].layer == "projector" and cfg.seed == 3


def test_options_resolved_typed_and_checked():
    declared = {
        "epsilon": rc.Option(0.03, type=float, check=lambda v: None if 0 <= v <= 1 else "must be in [0, 1]"),
        "mode": rc.Option("zero", choices=("zero", "swap")),
    }
    assert resolve_options("probe adv", declared, {"epsilon": "0.5"}) == {"epsilon": 0.5, "mode": "zero"}
    with pytest.raises(rc.ConfigError, match="epsilon: must be in"):
        resolve_options("probe adv", declared, {"epsilon": 2.0})
    with pytest.raises(rc.ConfigError, match="unknown option 'eps'"):
        resolve_options("probe adv", declared, {"eps": 0.1})
    assert parse_opt_assignments(["adv.epsilon=0.1", "inv.augs=['flip']"]) == {
        "adv": {"epsilon": 0.1},
        "inv": {"augs": ["flip"]},
    }


def test_resolved_config_round_trips_through_toml():
    cfg = build_config(
        {"arm": [{"name": "a", "encoder": "e", "checkpoint": "c.pt"}], "probe": {"x": {"k": [1, 2]}}}
    )
    d = cfg.as_dict()
    back = tomllib.loads(to_toml(d))
    assert back["arm"][0] == {
        "name": "a",
        "encoder": "e",
        "layer": "backbone",
        "input_norm": "own",
        "checkpoint": "c.pt",
    }
    assert back["probe"] == {"x": {"k": [1, 2]}} and back["sampler"] == d["sampler"]


def test_official_underscore_flags_are_accepted_and_retired_ones_refused():
    assert normalise_argv(["train", "--num_channels", "64", "--batch_size=8", "--", "--x_y"]) == [
        "train",
        "--num-channels",
        "64",
        "--batch-size=8",
        "--",
        "--x_y",
    ]
    res = run_cli("run", "--type_model", "simclr")
    assert res.returncode == 2 and "--encoder" in res.stderr and len(res.stderr.strip().splitlines()) == 1


def test_sampler_spec_parsing():
    assert rc.parse_sampler_spec("ddim:25,eta=0.5") == ("ddim", "25", {"eta": "0.5"})
    assert rc.parse_sampler_spec("100") == ("ddpm", "100", {})
    assert rc.parse_sampler_spec("ddim25") == ("ddpm", "25", {"spacing": "ddim"})
    assert rc.parse_sampler_spec("10,15,20") == ("ddpm", "10,15,20", {})
    assert rc.parse_sampler_spec("dpm-solver++:20,order=3") == ("dpm-solver++", "20", {"order": "3"})
