"""The example run configs for the released models (examples/configs/*.toml) run end to end.

Each config is loaded as a user would, then only what cannot exist here is swapped: every ``/path/to/...``
encoder file becomes a random ResNet-50 written in the official layout of the encoder the config names, every
released RCDM becomes a small random ADM at 32 px with the same cond_dim, the images come from
``builtin:photos``, and the counts shrink (1-2 images, 1 sample each, ddim:2). Everything else (arms, layers, input_norm,
probes and their options) is the config's own, so a renamed option, probe or encoder breaks this test.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import torchvision

import rcdm_core as rc
from rcdm_core.config import build_config, tomllib
from rcdm_core.run import execute

ROOT = Path(__file__).resolve().parent.parent
CONFIGS = sorted((ROOT / "examples" / "configs").glob("*.toml"))
RELEASED_RCDMS = {
    f"rcdm_ema_{m}_{p}.pt" for m in ("simclr", "barlow", "vicreg", "dino") for p in ("trunk", "head")
}
RELEASED_RCDMS.add("rcdm_ema_supervised.pt")
SMALL_ADM = dict(
    image_size=32,
    num_channels=32,
    channel_mult="1,2",
    num_res_blocks=1,
    attention_resolutions="16",
    num_head_channels=32,
    learn_sigma=True,
)
# What the tests may shrink per probe (counts only; the configs' other options stay as written).
SHRINK = {
    "samples": {"figure_images": 1},
    "invariance": {"figure_images": 1},
    "adversarial": {"steps": 1, "figure_images": 1},
    "manipulation": {"k": 3, "n": 1, "figure_images": 1},
    "interpolation": {"steps": 3, "max_pairs": 1},
}


def _randomise(state: dict[str, torch.Tensor], seed: int) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {
        k: torch.randn(v.shape, generator=g) * 0.05 if v.is_floating_point() else v for k, v in state.items()
    }


def _resnet50() -> dict[str, torch.Tensor]:
    torch.manual_seed(0)
    return torchvision.models.resnet50().state_dict()


def write_official_layout(encoder: str, path: Path) -> dict[str, int]:
    """A random ResNet-50 file in the layout the released RCDMs' encoder of that name came in -> layer dims."""
    sd = _resnet50()
    g = torch.Generator().manual_seed(1)
    if encoder == "simclr-resnet50":  # VISSL SimCLR: trunk + 2048-2048-128 head
        heads = {
            "0.clf.0.weight": torch.randn(2048, 2048, generator=g) * 0.02,
            "0.clf.0.bias": torch.zeros(2048),
            "1.clf.0.weight": torch.randn(128, 2048, generator=g) * 0.02,
            "1.clf.0.bias": torch.zeros(128),
        }
        trunk = {f"_feature_blocks.{k}": v for k, v in sd.items() if not k.startswith("fc.")}
        obj = {
            "phase_idx": 799,
            "classy_state_dict": {"base_model": {"model": {"trunk": trunk, "heads": heads}}},
        }
    elif encoder == "supervised-resnet50":  # torchvision, with its fc
        obj = sd
    elif encoder == "dino-resnet50":  # dino_resnet50_pretrain.pth: torchvision names, no fc
        obj = {k: v for k, v in sd.items() if not k.startswith("fc.")}
    else:
        raise AssertionError(f"no official-layout writer for {encoder}: add one to this test")
    torch.save(obj, path)
    return {"backbone": 2048, "projector": 128} if encoder == "simclr-resnet50" else {"backbone": 2048}


def write_small_adm(cond_dim: int, path: Path, seed: int) -> Path:
    model = rc.build_denoiser("adm", cond_dim=cond_dim, **SMALL_ADM)
    torch.save(_randomise(model.state_dict(), seed), path)
    path.with_suffix(".json").write_text(
        json.dumps({"denoiser": "adm", "flags": {**SMALL_ADM, "cond_dim": cond_dim}})
    )
    return path


def _placeholders(config: Path) -> dict:
    raw = tomllib.loads(config.read_text())
    for arm in raw["arm"]:
        assert arm["weights"].startswith("/path/to/") and arm["checkpoint"].startswith("/path/to/"), arm
        assert Path(arm["checkpoint"]).name in RELEASED_RCDMS, arm["checkpoint"]
        assert arm.get("input_norm") == "rcdm", f"{config.name}: the released RCDMs need input_norm = 'rcdm'"
    return raw


@pytest.mark.parametrize("config", CONFIGS, ids=[c.stem for c in CONFIGS])
def test_config_runs_end_to_end_with_random_official_layouts(config, manager, tmp_path):
    raw = _placeholders(config)
    assert "CC-BY-NC" in config.read_text(), "say the released weights' licence in the config"
    files: dict[tuple[str, str], tuple[Path, dict[str, int]]] = {}
    for i, arm in enumerate(raw["arm"]):
        key = (arm["encoder"], arm["weights"])
        if key not in files:
            path = tmp_path / f"enc{len(files)}.pth"
            files[key] = (path, write_official_layout(arm["encoder"], path))
        path, dims = files[key]
        arm["weights"] = str(path)
        arm["checkpoint"] = str(write_small_adm(dims[arm["layer"]], tmp_path / f"rcdm{i}.pt", seed=i))
    needs_pairs = any(p in raw["probes"] for p in ("manipulation", "interpolation"))
    raw.update(
        data="builtin:photos?split=heldout&size=32",
        n_images=2 if needs_pairs else 1,
        n_samples=1,
        sampler="ddim:2",
        device="cpu",
        batch_size=8,
        progress=False,
        out=str(tmp_path / "run"),
    )
    if "reference" in raw:
        raw["reference"] = "builtin:photos?split=train&size=32&limit=4"
    for probe, opts in SHRINK.items():
        if probe in raw["probes"]:
            raw.setdefault("probe", {}).setdefault(probe, {}).update(opts)
    out = execute(build_config(raw, source=config.name))

    doc = json.loads((out / "metrics.json").read_text())
    arms = [a["name"] for a in raw["arm"]]
    assert list(doc["probes"]) == raw["probes"]
    report = (out / "report.html").read_text()
    for name, p in doc["probes"].items():
        assert set(arms) <= set(p["metrics"]), f"{name} reports no metrics for some arm"
        for fig in p["figures"]:
            assert (out / fig).exists() and f'data-file="{fig}"' in report
    assert doc["arms"][arms[0]]["input_norm"] == "rcdm"
