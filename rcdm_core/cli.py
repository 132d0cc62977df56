"""One entry function behind ``rcdm``, ``python -m rcdm_core`` and ``rcdm-run`` (= ``rcdm run``)."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence

from .errors import ConfigError, RcdmError

# Options of the official RCDM / guided-diffusion scripts that have no meaning here, and what to use instead.
RETIRED_FLAGS = {
    "--type-model": "choose the encoder with --encoder NAME (e.g. --encoder simclr-resnet50)",
    "--use-head": "choose the representation with --layer projector (or --layer backbone)",
    "--feat-cond": "the condition is always the representation; choose it with --encoder and --layer",
    "--use-fp16": "use --precision fp16 (or bf16)",
    "--out-dir": "use --out DIR",
}


def normalise_argv(argv: Sequence[str]) -> list[str]:
    """Accept official underscore spellings: ``--num_channels 64`` == ``--num-channels 64``."""
    out = []
    after_double_dash = False
    for tok in argv:
        if after_double_dash or not tok.startswith("--") or tok == "--":
            after_double_dash = after_double_dash or tok == "--"
            out.append(tok)
            continue
        name, eq, value = tok.partition("=")
        out.append(name.replace("_", "-") + eq + value)
    return out


def _check_retired(argv: Sequence[str]) -> None:
    for tok in argv:
        name = tok.partition("=")[0]
        if name in RETIRED_FLAGS:
            raise ConfigError(
                f"option {name} (from the official scripts) has no meaning here: {RETIRED_FLAGS[name]}"
            )


def common_parent() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(add_help=False)
    g = p.add_argument_group("common")
    g.add_argument(
        "--device", default="auto", choices=["auto", "cpu", "cuda"], help="where to run (default auto)"
    )
    g.add_argument("--seed", type=int, default=0, help="seed for every random draw (default 0)")
    g.add_argument(
        "--plugin",
        action="append",
        default=[],
        metavar="MODULE",
        help="import a research-code module holding @rc.hookimpl functions (repeatable)",
    )
    g.add_argument(
        "--trust-checkpoint",
        action="store_true",
        help="allow checkpoints that need arbitrary code to unpickle (only for files you trust)",
    )
    g.add_argument("--no-progress", action="store_true", help="hide progress bars")
    return p


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):  # one line, exit 2 (argparse's own convention)
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def build_parser(manager=None) -> argparse.ArgumentParser:
    from .commands import core_commands

    parent = common_parent()
    parser = _Parser(
        prog="rcdm",
        description="Representation-Conditional Diffusion Models: see what an SSL encoder keeps.",
        epilog="example: rcdm demo    |    rcdm-run --config examples/configs/finding1_invariance.toml",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    records = list(core_commands())
    if manager is not None:
        manager.collect()
        records += [
            r
            for name, r in sorted(manager.registry["command"].items())
            if name not in {c.name for c in records}
        ]
    for rec in records:
        epilog = f"example:\n  {rec.example}" if rec.example else None
        sp = sub.add_parser(
            rec.name,
            help=rec.help,
            description=rec.description or rec.help,
            parents=[parent],
            epilog=epilog,
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )
        rec.add_arguments(sp)
        sp.set_defaults(_run=rec.run)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    argv = normalise_argv(list(sys.argv[1:] if argv is None else argv))
    try:
        _check_retired(argv)
        from .plugins import ensure_importable_plugins, get_manager

        ensure_importable_plugins()
        extra = [argv[i + 1] for i, t in enumerate(argv[:-1]) if t == "--plugin"]
        manager = get_manager(extra)
        parser = build_parser(manager)
        args = parser.parse_args(argv)
        if not getattr(args, "command", None):
            parser.print_help()
            return 2
        if args.no_progress:
            os.environ["RCDM_NO_PROGRESS"] = "1"
        return int(args._run(args) or 0)
    except RcdmError as exc:
        print(f"rcdm: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("rcdm: interrupted", file=sys.stderr)
        return 130


def run_main(argv: Sequence[str] | None = None) -> int:
    """``rcdm-run ...`` is ``rcdm run ...``."""
    return main(["run", *(sys.argv[1:] if argv is None else argv)])


def entry() -> None:  # pragma: no cover
    sys.exit(main())
