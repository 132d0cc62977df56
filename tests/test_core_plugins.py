"""The plugin manager: registration, discovery, failure isolation, duplicates, env filters, listing."""

from __future__ import annotations

import json
import sys
import textwrap
import types
from pathlib import Path

import pytest

import rcdm_core as rc
from rcdm_core.plugins import Manager

from .conftest import ROOT, run_cli


def _module(name: str, **hooks) -> types.ModuleType:
    mod = types.ModuleType(name)
    for hook, fn in hooks.items():
        setattr(mod, hook, rc.hookimpl(fn))
    return mod


class _Enc(rc.Encoder):
    name = "throwaway"

    def __init__(self):
        import torch

        self.module = torch.nn.Identity()
        self.meta = {}

    def features(self, x, layers):
        return {"backbone": x.mean(dim=(2, 3))}

    def layers(self):
        return {"backbone": 3}


def test_throwaway_plugin_registers_on_fresh_manager(fresh_manager):
    mod = _module("throwaway", rcdm_encoders=lambda: [rc.EncoderRecord("throwaway", lambda a, w, t: _Enc())])
    fresh_manager.register_module(mod, distribution="research")
    assert fresh_manager.names("encoder") == ["throwaway"]
    rec, arg = fresh_manager.get("encoder", "throwaway")
    assert arg is None and isinstance(rec.factory(None, None, False), _Enc)
    assert fresh_manager.listing()[0]["registered"] == {"encoder": ["throwaway"]}


def test_prefix_records_receive_the_rest_of_the_name(fresh_manager):
    seen = []
    mod = _module("p", rcdm_encoders=lambda: [rc.EncoderRecord("timm:", lambda a, w, t: seen.append(a))])
    fresh_manager.register_module(mod)
    rec, arg = fresh_manager.get("encoder", "timm:resnet18")
    assert arg == "resnet18"


def test_unknown_name_lists_available_names(fresh_manager):
    mod = _module(
        "p",
        rcdm_samplers=lambda: [
            rc.SamplerRecord("ddim", lambda s: None),
            rc.SamplerRecord("ddpm", lambda s: None),
        ],
    )
    fresh_manager.register_module(mod)
    with pytest.raises(rc.ConfigError, match=r"unknown sampler 'dpm'; available: ddim, ddpm"):
        fresh_manager.get("sampler", "dpm")


def test_broken_registration_is_reported_and_the_rest_load(fresh_manager):
    def boom():
        raise RuntimeError("cannot build")

    fresh_manager.register_module(_module("good", rcdm_probes=lambda: [rc.ProbeRecord("p1", lambda: None)]))
    fresh_manager.register_module(_module("bad", rcdm_probes=boom))
    fresh_manager.register_module(_module("wrongtype", rcdm_probes=lambda: ["not a record"]))
    status = {p["name"]: (p["status"], p["reason"]) for p in fresh_manager.listing()}
    assert status["good"] == ("loaded", "")
    assert status["bad"][0] == "failed" and "cannot build" in status["bad"][1]
    assert status["wrongtype"][0] == "failed" and "expected ProbeRecord" in status["wrongtype"][1]
    assert fresh_manager.names("probe") == ["p1"]


def test_duplicate_name_rejected_naming_both_distributions(fresh_manager):
    fresh_manager.register_module(
        _module("first", rcdm_probes=lambda: [rc.ProbeRecord("same", lambda: 1)]), distribution="dist-a"
    )
    fresh_manager.register_module(
        _module("second", rcdm_probes=lambda: [rc.ProbeRecord("same", lambda: 2)]), distribution="dist-b"
    )
    listing = {p["name"]: p for p in fresh_manager.listing()}
    assert listing["second"]["status"] == "failed"
    assert "dist-a" in listing["second"]["reason"] and "dist-b" in listing["second"]["reason"]
    assert fresh_manager.get("probe", "same")[0].factory() == 1


class _EP:
    """A stand-in entry point (name, value, dist, load) for failure-isolation tests."""

    def __init__(self, name, loader, dist_name="third-party"):
        self.name, self.value, self._loader = name, f"{name}_module", loader
        self.dist = types.SimpleNamespace(metadata={"Name": dist_name}, version="9.9")

    def load(self):
        return self._loader()


def test_import_failure_listed_and_env_filters(monkeypatch):
    good = _module("ok", rcdm_probes=lambda: [rc.ProbeRecord("okprobe", lambda: None)])

    def fail():
        raise ImportError("no module named missing_dep")

    other = _module("other", rcdm_probes=lambda: [rc.ProbeRecord("otherprobe", lambda: None)])
    first = _module("fp", rcdm_probes=lambda: [rc.ProbeRecord("fpprobe", lambda: None)])
    eps = [
        _EP("ok", lambda: good),
        _EP("broken", fail),
        _EP("blocked", lambda: other),
        _EP("fp", lambda: first, "rcdm"),
    ]
    monkeypatch.setenv("RCDM_DISABLE_PLUGINS", "blocked")
    m = Manager()
    m.load_entry_points(eps)
    status = {p["name"]: p for p in m.listing()}
    assert status["broken"]["status"] == "failed" and "missing_dep" in status["broken"]["reason"]
    assert status["blocked"]["status"] == "disabled"
    assert status["ok"]["status"] == "loaded" and status["ok"]["version"] == "9.9"
    monkeypatch.delenv("RCDM_DISABLE_PLUGINS")
    monkeypatch.setenv("RCDM_LOAD_PLUGINS", "ok")
    m2 = Manager()
    m2.load_entry_points(eps[:1] + eps[2:])
    status2 = {p["name"]: p["status"] for p in m2.listing()}
    assert status2["blocked"] == "disabled"  # third-party, not named in RCDM_LOAD_PLUGINS
    assert status2["fp"] == "loaded"  # first-party always loads


def _dist_info(tmp_path: Path) -> Path:
    """A dist-info on sys.path that declares the example plugin's entry point (no installation needed)."""
    site = tmp_path / "site"
    info = site / "rcdm_example_plugin-0.1.0.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: rcdm-example-plugin\nVersion: 0.1.0\n")
    (info / "entry_points.txt").write_text("[rcdm]\nexample = rcdm_example\n")
    return site


def test_entry_point_discovery_of_the_example_package(tmp_path):
    site = _dist_info(tmp_path)
    pythonpath = f"{site}:{ROOT / 'examples' / 'rcdm-example-plugin'}"
    res = run_cli("plugins", "--json", env={"PYTHONPATH": pythonpath})
    assert res.returncode == 0, res.stderr
    rows = {r["name"]: r for r in json.loads(res.stdout)}
    assert rows["example"]["status"] == "loaded"
    assert rows["example"]["distribution"] == "rcdm-example-plugin"
    assert rows["example"]["registered"] == {"encoder": ["pixel-grid"], "probe": ["colour-shift"]}
    # first-party plugins come through the same group, from distribution rcdm
    assert rows["data"]["distribution"] == "rcdm" and rows["data"]["status"] == "loaded"
    res = run_cli("plugins", "--json", env={"PYTHONPATH": pythonpath, "RCDM_LOAD_PLUGINS": "none"})
    rows = {r["name"]: r for r in json.loads(res.stdout)}
    assert rows["example"]["status"] == "disabled" and rows["data"]["status"] == "loaded"


def test_plugin_flag_loads_research_code(tmp_path):
    (tmp_path / "my_probe_mod.py").write_text(
        textwrap.dedent("""
        import rcdm_core as rc

        @rc.hookimpl
        def rcdm_probes():
            return [rc.ProbeRecord("my-probe", lambda: None, "research probe")]
    """)
    )
    res = run_cli("plugins", "--json", "--plugin", "my_probe_mod", env={"PYTHONPATH": str(tmp_path)})
    assert res.returncode == 0, res.stderr
    rows = {r["name"]: r for r in json.loads(res.stdout)}
    assert rows["my_probe_mod"]["registered"] == {"probe": ["my-probe"]}
    bad = run_cli("plugins", "--plugin", "no_such_module_xyz")
    assert bad.returncode == 2
    assert bad.stderr.strip().splitlines() == [bad.stderr.strip()]  # one line
    assert "--plugin no_such_module_xyz" in bad.stderr


def test_probe_call_wrapper_hook_wraps_probe_runs(fresh_manager):
    calls = []

    class Timing:
        @rc.hookimpl(wrapper=True)
        def rcdm_probe_call(self, probe_name, probe, ctx):
            calls.append(("before", probe_name))
            result = yield
            calls.append(("after", result))
            return result

    class P:
        def run(self, ctx):
            return "ran"

    fresh_manager.register_module(Timing(), name="timing")
    out = fresh_manager.hook().rcdm_probe_call(probe_name="x", probe=P(), ctx=None)
    assert out == "ran" and calls == [("before", "x"), ("after", "ran")]


def test_rcdm_core_never_imports_a_plugin():
    plugin_names = [p.name for p in (ROOT / "plugins").iterdir() if p.is_dir() and p.name.startswith("rcdm_")]
    for path in (ROOT / "rcdm_core").rglob("*.py"):
        text = path.read_text()
        for name in plugin_names:
            assert f"import {name}" not in text and f"from {name}" not in text, f"{path} imports {name}"
    assert "rcdm_core" in sys.modules
