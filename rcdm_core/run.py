"""The run pipeline behind ``rcdm-run``: build arms, load images, run probes (with repeats), write the folder."""

from __future__ import annotations

import math
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import torch

from .api import get_sampler, load_denoiser, load_encoder
from .config import RunConfig, resolve_options, to_toml
from .context import ArmRuntime, ProbeContext
from .data import load_images
from .dist import resolve_device
from .errors import ConfigError
from .io import atomic_write_json, atomic_write_text
from .noise import seed_everything
from .plugins import get_manager
from .records import ProbeResult

SCHEMA_VERSION = 1


def build_arm(arm, device: torch.device, trust_checkpoint: bool = False) -> ArmRuntime:
    if not arm.checkpoint:
        raise ConfigError(f"arm {arm.name}: needs a denoiser checkpoint (checkpoint = PATH, or --checkpoint)")
    rep = load_encoder(arm.encoder, arm.weights, arm.layer, arm.input_norm, trust_checkpoint, device)
    if rep.encoder.random_weights:
        print(
            f"rcdm: WARNING: arm {arm.name}: encoder {arm.encoder} has RANDOM weights (no --weights given)",
            file=sys.stderr,
        )
    den = load_denoiser(arm.checkpoint, trust_checkpoint=trust_checkpoint, device=device)
    if den.cond_dim != rep.dim:
        raise ConfigError(
            f"arm {arm.name}: checkpoint {arm.checkpoint} expects cond_dim {den.cond_dim} but layer "
            f"{arm.layer!r} of {arm.encoder} gives {rep.dim}"
        )
    return ArmRuntime(spec=arm, rep=rep, denoiser=den)


def git_commit() -> str | None:
    try:
        here = Path(__file__).resolve().parent.parent
        out = subprocess.run(
            ["git", "-C", str(here), "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5
        )
        return out.stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None


def _aggregate(runs: list[Any]) -> Any:
    """Numbers across repeats -> {mean, std, values}; dicts recurse; anything else from the first repeat."""
    first = runs[0]
    if isinstance(first, dict):
        return {k: _aggregate([r[k] for r in runs if isinstance(r, dict) and k in r]) for k in first}
    if isinstance(first, (int, float)) and not isinstance(first, bool):
        vals = [float(r) for r in runs]
        mean = sum(vals) / len(vals)
        std = math.sqrt(sum((v - mean) ** 2 for v in vals) / max(1, len(vals) - 1)) if len(vals) > 1 else 0.0
        return {"mean": mean, "std": std, "values": vals}
    return first


def execute(cfg: RunConfig) -> Path:
    """Run a whole config; returns the run folder (with config.toml, metrics.json, probes/, report.html)."""
    from .report import write_report

    manager = get_manager(cfg.plugins)
    if not cfg.arms:
        raise ConfigError(
            "no arm given: add [[arm]] tables to the config or --encoder/--layer/--checkpoint flags"
        )
    probe_recs = {}
    for p in cfg.probes:
        rec, _ = manager.get("probe", p)
        probe_recs[p] = rec
    unknown = sorted(set(cfg.probe_options) - set(cfg.probes))
    if unknown:
        raise ConfigError(
            f"options given for probe {unknown[0]!r}, which is not in probes ({', '.join(cfg.probes)})"
        )
    probe_opts = {
        p: resolve_options(f"probe {p}", probe_recs[p].options, cfg.probe_options.get(p, {}))
        for p in cfg.probes
    }
    get_sampler(cfg.sampler)  # validate early
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    device = resolve_device(cfg.device)
    seed_everything(cfg.seed)
    manager.hook().rcdm_configure(config=cfg.as_dict())
    arms = [build_arm(a, device, cfg.trust_checkpoint) for a in cfg.arms]
    size = max(a.image_size for a in arms)
    notes = []
    if len({a.image_size for a in arms}) > 1:
        notes.append(
            "Arms expect different resolutions ("
            + ", ".join(f"{a.name}: {a.image_size}px" for a in arms)
            + f"); images were loaded at {size}px and resized for each arm."
        )
    ids, images = load_images(cfg.data, limit=cfg.n_images, size=size)
    ref_ids, reference = (None, None)
    if cfg.reference:
        ref_ids, reference = load_images(cfg.reference, size=size)
    versions = {i["name"]: i["version"] for i in manager.listing()}
    resolved = cfg.as_dict()
    resolved["versions"] = {
        "rcdm_plugins": versions,
        "torch": torch.__version__,
        "python": sys.version.split()[0],
    }
    resolved["git_commit"] = git_commit()
    resolved["random_weights"] = {a.name: a.rep.encoder.random_weights for a in arms}
    atomic_write_text(out / "config.toml", to_toml(resolved))

    ctx = ProbeContext(
        arms=arms,
        ids=ids,
        images=images,
        sampler=get_sampler(cfg.sampler),
        sampler_spec=cfg.sampler,
        seed=cfg.seed,
        out_dir=out,
        n_samples=cfg.n_samples,
        batch_size=cfg.batch_size,
        device=device,
        reference_ids=ref_ids,
        reference=reference,
        progress=cfg.progress,
        precision=cfg.precision,
        hook=manager.hook(),
        notes=notes,
    )
    manager.hook().rcdm_run_start(ctx=ctx)
    doc: dict[str, Any] = {
        "schema_version": SCHEMA_VERSION,
        "seed": cfg.seed,
        "repeats": cfg.repeats,
        "sampler": cfg.sampler,
        "arms": {
            a.name: a.rep.meta() | {"checkpoint": a.spec.checkpoint, "image_size": a.image_size} for a in arms
        },
        "n_images": len(ids),
        "notes": notes,
        "probes": {},
    }
    for name, rec in probe_recs.items():
        results: list[ProbeResult] = []
        t0 = time.perf_counter()
        for r in range(cfg.repeats):
            ctx.seed = cfg.seed + r
            ctx.options = probe_opts[name]
            probe = rec.factory(**probe_opts[name])
            results.append(manager.hook().rcdm_probe_call(probe_name=name, probe=probe, ctx=ctx))
        ctx.seed = cfg.seed
        first = results[0]
        metrics = first.metrics if cfg.repeats == 1 else _aggregate([r.metrics for r in results])
        doc["probes"][name] = {
            "summary": first.summary,
            "metrics": metrics,
            "figures": first.figures,
            "tables": first.tables,
            "notes": first.notes,
            "seconds": round(time.perf_counter() - t0, 3),
        }
        print(f"[{name}] {first.summary}", file=sys.stderr)
    manager.hook().rcdm_run_end(ctx=ctx, metrics=doc)
    atomic_write_json(out / "metrics.json", doc)
    write_report(out, resolved, doc)
    return out
