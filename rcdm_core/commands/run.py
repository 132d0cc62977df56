"""``rcdm run`` / ``rcdm-run``: run probes on one or more arms and write a run folder with a report."""

from __future__ import annotations

import sys

from ..config import build_config, load_toml, parse_opt_assignments
from ..records import CommandRecord

_ARM_FLAGS = ("encoder", "weights", "layer", "input_norm", "checkpoint")


def _add(p) -> None:
    p.add_argument("--config", help="a run.toml (flags below override its values)")
    a = p.add_argument_group("a single arm (instead of [[arm]] tables)")
    a.add_argument("--arm-name", default=None, help="name of the arm (default: the layer)")
    a.add_argument("--encoder", help="registered encoder name, e.g. ssl-small, dino-resnet50, timm:resnet18")
    a.add_argument("--weights", help="encoder weights file (layout detected from the file)")
    a.add_argument("--layer", help="backbone, projector, block:NAME[:avg|:cls]")
    a.add_argument("--input-norm", choices=["own", "rcdm"], help="encoder input convention (default own)")
    a.add_argument("--checkpoint", help="denoiser checkpoint (model/ema .pt or .safetensors)")
    p.add_argument("--probe", action="append", help="probe to run (repeatable); default: samples")
    p.add_argument("--data", help="image source: builtin:photos, builtin:digits, folder:PATH, idx:PATH")
    p.add_argument("--reference", help="reference image source (faithfulness, manipulation, fidelity)")
    p.add_argument("--sampler", help="ddpm:N, ddim:N[,eta=..], dpm-solver++:N[,order=2|3], or 100 / ddim25")
    p.add_argument("--n-images", type=int, help="how many images to take from --data")
    p.add_argument("--n-samples", type=int, help="samples per image")
    p.add_argument("--batch-size", type=int, help="sampling batch size")
    p.add_argument("--repeats", type=int, help="rerun each probe with R seeds; metrics get mean and spread")
    p.add_argument("--precision", choices=["fp32", "bf16", "fp16"])
    p.add_argument("--out", help="run folder (default runs/run)")
    p.add_argument("--opt", action="append", default=[], metavar="PROBE.KEY=VALUE", help="probe option")


def config_from_args(args):
    raw = load_toml(args.config) if args.config else {}
    source = args.config or "flags"
    for key in (
        "data",
        "reference",
        "sampler",
        "n_images",
        "n_samples",
        "batch_size",
        "repeats",
        "precision",
        "out",
    ):
        v = getattr(args, key)
        if v is not None:
            raw[key] = v
    raw["seed"] = args.seed if args.seed != 0 or "seed" not in raw else raw["seed"]
    if args.device != "auto" or "device" not in raw:
        raw["device"] = args.device
    if args.probe:
        raw["probes"] = args.probe
    if args.plugin:
        raw["plugins"] = list(raw.get("plugins", [])) + args.plugin
    if args.trust_checkpoint:
        raw["trust_checkpoint"] = True
    if args.no_progress:
        raw["progress"] = False
    flags = {k: getattr(args, k) for k in _ARM_FLAGS if getattr(args, k) is not None}
    if flags:
        arm = {"name": args.arm_name or flags.get("layer", "backbone").replace(":", "_"), **flags}
        raw["arm"] = [arm]
    for probe, opts in parse_opt_assignments(args.opt).items():
        raw.setdefault("probe", {}).setdefault(probe, {}).update(opts)
    return build_config(raw, source)


def _run(args) -> int:
    from ..run import execute

    out = execute(config_from_args(args))
    print(f"report: {out / 'report.html'}")
    print(f"metrics: {out / 'metrics.json'}", file=sys.stderr)
    return 0


COMMAND = CommandRecord(
    name="run",
    help="run probes on one or more arms; writes config.toml, metrics.json, figures, report.html",
    add_arguments=_add,
    run=_run,
    example="rcdm-run --encoder ssl-small --weights enc.pt --layer backbone --checkpoint ema.pt "
    "--probe samples --data builtin:photos --out runs/x",
)
