"""``rcdm demo --retrain``: rebuild the three shipped weight files with their recorded commands, evaluate them
as the model cards were, and print the new numbers beside the cards'.

The commands come from the shipped model cards (``model_card.command_template``; the recipe in
:mod:`rcdm_demo.recipe` when a card is missing), each run as ``python -m rcdm_core ...`` in a subprocess so
its own sidecar records it exactly. A model whose final file already exists in the folder is not trained
again (delete the folder to start over). The files that ship are collected, with their model cards, in
``<out>/weights/``; ``rcdm demo --weights-dir <out>/weights`` runs the demo on them.
"""

from __future__ import annotations

import csv
import datetime
import hashlib
import json
import os
import shlex
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import torch

from rcdm_core.errors import RcdmError
from rcdm_core.io import atomic_write_json, read_sidecar

from . import recipe as R
from . import settings as S
from .progress import say

# How the model cards' faithfulness numbers are measured (the faithfulness probe, both arms).
EVAL = {
    "sampler": "ddpm:20,spacing=leading",
    "n_images": 32,
    "n_samples": 2,
    "reference_limit": 256,
    "seed": 0,
}
EVAL_FAST = {
    "sampler": "ddim:2,spacing=leading",
    "n_images": 4,
    "n_samples": 1,
    "reference_limit": 16,
    "seed": 0,
}
FAST_STEPS = "2"


def read_cards(weights_dir: Path) -> dict[str, dict[str, Any] | None]:
    """{shipped file name: its sidecar (the model card) or None}."""
    return {name: read_sidecar(weights_dir / name) for name in R.recipe()}


def templates(cards: dict[str, dict[str, Any] | None]) -> dict[str, list[str]]:
    """The command template of each file: the one its card records, else the recipe's."""
    out = {}
    for name, default in R.recipe().items():
        card = (cards.get(name) or {}).get("model_card") or {}
        out[name] = list(card.get("command_template") or default)
    return out


def concrete(template: list[str], out: Path, fast: bool) -> list[str]:
    argv = [tok.replace(R.OUT, str(out)) for tok in template]
    if fast:
        argv = R.with_option(argv, FAST_STEPS, "--steps")
        argv = R.with_option(argv, FAST_STEPS, "--save-interval", "--save_interval")
        argv = R.with_option(argv, "16", "--batch-size", "--batch_size")
    return argv


def run_commands(commands: list[list[str]], device: str) -> None:
    """``rcdm ARGS`` for each command, side by side as subprocesses (``python -m rcdm_core ARGS --device D``);
    stops on the first failure. On CPU each gets one thread unless OMP_NUM_THREADS is set: on a 2-core machine
    the two RCDMs then train at once, and a busy machine does not slow small tensor operations to a crawl."""
    env = {**os.environ, "OMP_NUM_THREADS": train_threads(device)} if device != "cuda" else dict(os.environ)
    procs = []
    for argv in commands:
        say("running: " + shlex.join(argv))
        cmd = [sys.executable, "-m", "rcdm_core", *argv[1:], "--device", device]
        procs.append((argv, subprocess.Popen(cmd, env=env)))
    for argv, proc in procs:
        if proc.wait() != 0:
            for _, other in procs:
                if other.poll() is None:
                    other.terminate()
            raise RcdmError(
                f"the recorded command failed with exit code {proc.returncode}: {shlex.join(argv)}"
            )


def train_threads(device: str) -> str:
    """The OMP_NUM_THREADS the training subprocesses get on CPU: the caller's, else 1."""
    return os.environ.get("OMP_NUM_THREADS", "1") if device != "cuda" else str(torch.get_num_threads())


def final_loss(produced: Path) -> float | None:
    """The last logged loss of the run that wrote ``produced`` (losses.csv beside it)."""
    path = produced.parent / "losses.csv"
    if not path.exists():
        return None
    rows = list(csv.DictReader(path.open()))
    return float(rows[-1]["loss"]) if rows else None


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def collect(name: str, argv: list[str], template: list[str], out: Path, device: str) -> dict[str, Any]:
    """Copy the produced file into ``out/weights/name`` and start its card from the training sidecar."""
    produced = Path(R.produced_file(argv))
    dest = out / "weights" / name
    dest.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(produced, dest)
    card = dict(read_sidecar(produced) or {})
    if "weights" in card and card.get("encoder") == "ssl-small":
        card["weights"] = S.ENCODER_FILE  # the encoder ships beside the RCDM
    card["model_card"] = {
        "file": name,
        "sha256": sha256(dest),
        "bytes": dest.stat().st_size,
        "command": shlex.join(argv),
        "command_template": template,
        "retrain": "rcdm demo --retrain  (reruns command_template with {out} = the retrain folder)",
        "data": R.option(argv, "--data"),
        "steps": int(R.option(argv, "--steps")),
        "seed": int(R.option(argv, "--seed") or 0),
        "final_loss": final_loss(produced),
        "threads": train_threads(device),
        "device": device,
        "torch": torch.__version__,
        "git_commit": _git_commit(),
        "created": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%MZ"),
    }
    return card


def _git_commit() -> str | None:
    from rcdm_core.run import git_commit

    return git_commit()


def evaluate(weights_dir: Path, out: Path, fast: bool, device: str) -> dict[str, dict[str, Any]]:
    """Faithfulness of both RCDMs (mean rank, top-1, top-5, cosine, shuffled baseline) -> {arm: metrics}."""
    from rcdm_core.config import build_config
    from rcdm_core.run import execute

    ev = EVAL_FAST if fast else EVAL
    settings = S.DemoSettings(
        sampler=ev["sampler"],
        n_images=ev["n_images"],
        n_samples=ev["n_samples"],
        reference_limit=ev["reference_limit"],
        augmentations=(),
        interpolation_steps=2,
        interpolation_pairs=1,
        attribution={},
    )
    raw = S.demo_raw(out / "eval", weights_dir=weights_dir, settings=settings, device=device, seed=ev["seed"])
    raw["probes"], raw["probe"] = ["faithfulness"], {}
    doc = json.loads((execute(build_config(raw, "rcdm demo --retrain")) / "metrics.json").read_text())
    return doc["probes"]["faithfulness"]["metrics"]


def eval_record(fast: bool) -> dict[str, Any]:
    ev = EVAL_FAST if fast else EVAL
    return {
        **ev,
        "probe": "faithfulness",
        "data": S.HELDOUT_DATA,
        "reference": f"{S.TRAIN_DATA}&limit={ev['reference_limit']}",
        "candidates": "the source images plus the reference images; rank 1 = best",
    }


def retrain(out: Path, fast: bool = False, device: str = "auto", weights_dir: Path = S.WEIGHTS_DIR) -> int:
    """Rebuild, evaluate, write the cards into ``out/weights`` and print the comparison; returns 0."""
    from .progress import demo_session

    t0 = time.perf_counter()
    shipped = read_cards(weights_dir)
    cards: dict[str, dict[str, Any]] = {}
    with demo_session(1):
        recorded = templates(shipped)
        todo = {name: concrete(t, out, fast) for name, t in recorded.items()}
        missing = {}
        for name, argv in todo.items():
            if Path(R.produced_file(argv)).exists():
                say(f"{name}: {R.produced_file(argv)} exists, not trained again (delete {out} to start over)")
            else:
                missing[name] = argv
        # the encoder first (the RCDMs read it), then both RCDMs side by side
        run_commands([a for n, a in missing.items() if n == S.ENCODER_FILE], device)
        run_commands([a for n, a in missing.items() if n != S.ENCODER_FILE], device)
        for name, argv in todo.items():
            cards[name] = collect(name, argv, recorded[name], out, device)
            atomic_write_json((out / "weights" / name).with_suffix(".json"), cards[name])
        say("evaluating faithfulness of both RCDMs (as the model cards were)")
        metrics = evaluate(out / "weights", out, fast, device)
    for arm, name in S.ARM_FILES.items():
        cards[name]["model_card"]["faithfulness"] = metrics[arm]
        cards[name]["model_card"]["faithfulness_eval"] = eval_record(fast)
    for name, card in cards.items():
        atomic_write_json((out / "weights" / name).with_suffix(".json"), card)
    print(comparison(shipped, cards))
    print(
        f"rcdm demo --retrain: done in {(time.perf_counter() - t0) / 60:.1f} min; files and cards in {out / 'weights'}"
    )
    print(f"run the demo on them: rcdm demo --weights-dir {out / 'weights'}")
    return 0


def _numbers(card: dict[str, Any] | None) -> dict[str, Any]:
    mc = (card or {}).get("model_card") or {}
    f = mc.get("faithfulness") or {}
    s = f.get("shuffled") or {}
    return {
        "final loss": mc.get("final_loss"),
        "mean rank": f.get("mean_rank"),
        "mean rank, shuffled": s.get("mean_rank"),
        "top-1": f.get("top1"),
        "top-5": f.get("top5"),
        "faithfulness cosine": f.get("cosine"),
    }


def comparison(shipped: dict[str, dict[str, Any] | None], new: dict[str, dict[str, Any]]) -> str:
    """A plain-text table: file, number, the shipped card's value, the retrained value."""
    lines = [f"{'file':<20} {'number':<22} {'model card':>12} {'retrained':>12}"]
    for name in new:
        old_n, new_n = _numbers(shipped.get(name)), _numbers(new[name])
        for key in old_n:
            if old_n[key] is None and new_n[key] is None:
                continue
            lines.append(f"{name:<20} {key:<22} {_fmt(old_n[key]):>12} {_fmt(new_n[key]):>12}")
    return "\n".join(lines)


def _fmt(v: Any) -> str:
    return "-" if v is None else f"{v:.4g}" if isinstance(v, float) else str(v)
