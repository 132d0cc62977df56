"""``rcdm demo``: the main job on the embedded default (or ``--retrain`` to rebuild the shipped weights)."""

from __future__ import annotations

import sys
import time
from pathlib import Path

from rcdm_core.errors import CheckpointError
from rcdm_core.records import CommandRecord

from . import settings as S


def _add(p) -> None:
    p.add_argument(
        "--out", default=None, help="run folder (default runs/demo; with --retrain runs/demo-retrain)"
    )
    p.add_argument(
        "--fast",
        action="store_true",
        help="a seconds-long smoke run: every probe and figure, tiny counts (ddim:2, 3 images, 2 samples); with --retrain, "
        "a few steps per model instead of the recorded counts",
    )
    p.add_argument(
        "--retrain",
        action="store_true",
        help="reproduce the three shipped weight files from scratch with the commands recorded in their model "
        "cards (CPU: under 60 minutes) and print the new numbers beside the cards'",
    )
    p.add_argument(
        "--weights-dir",
        default=None,
        help="folder holding ssl_small_simclr.pt, rcdm_backbone.pt, rcdm_projector.pt (default: the shipped "
        "ones; e.g. runs/demo-retrain/weights after --retrain)",
    )


def check_weights(weights_dir: Path) -> None:
    encoder, arms = S.weight_paths(weights_dir)
    missing = [p for p in [encoder, *arms.values()] if not p.exists()]
    if missing:
        raise CheckpointError(
            f"demo weights missing: {missing[0]}; reinstall rcdm (the weights ship as package data) or rebuild "
            "them with `rcdm demo --retrain` and pass --weights-dir runs/demo-retrain/weights"
        )


def _run(args) -> int:
    if args.retrain:
        from .retrain import retrain

        return retrain(
            out=Path(args.out or "runs/demo-retrain"),
            fast=args.fast,
            device=args.device,
            weights_dir=Path(args.weights_dir) if args.weights_dir else S.WEIGHTS_DIR,
        )
    from rcdm_core.run import execute

    from .progress import demo_session, say

    weights_dir = Path(args.weights_dir) if args.weights_dir else S.WEIGHTS_DIR
    check_weights(weights_dir)
    settings = S.FAST if args.fast else S.FULL
    cfg = S.demo_config(
        args.out or "runs/demo",
        weights_dir=weights_dir,
        settings=settings,
        device=args.device,
        seed=args.seed,
        progress=not args.no_progress,
    )
    if args.plugin:
        cfg.plugins = list(args.plugin)
    t0 = time.perf_counter()
    with demo_session(len(cfg.probes)):
        say(
            f"arms backbone and projector of the shipped ssl-small (SimCLR) encoder, each with its 32 px RCDM; "
            f"{settings.n_images} held-out images x {settings.n_samples} samples, sampler {settings.sampler}, "
            f"seed {cfg.seed}"
        )
        out = execute(cfg)
    print(f"rcdm demo: done in {time.perf_counter() - t0:.0f} s", file=sys.stderr)
    print(f"report: {out / 'report.html'}")
    return 0


COMMAND = CommandRecord(
    name="demo",
    help="the main job: probe the shipped small SSL encoder with its two RCDMs and write a report",
    description=(
        "Runs samples, invariance, faithfulness, interpolation, manipulation, fidelity and attribution on two "
        "arms (backbone and projector of the shipped ssl-small SimCLR encoder, each with its 32 px RCDM) over "
        "held-out photo patches, and writes runs/demo/report.html (a few minutes on 2 CPU cores)."
    ),
    add_arguments=_add,
    run=_run,
    example="rcdm demo            # -> runs/demo/report.html\n  rcdm demo --retrain  # rebuild the weights",
)
