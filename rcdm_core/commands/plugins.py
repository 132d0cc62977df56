"""``rcdm plugins [--json]``: what is loaded, from which distribution, and what failed."""

from __future__ import annotations

import json

from ..plugins import get_manager
from ..records import CommandRecord


def _add(p) -> None:
    p.add_argument("--json", action="store_true", help="machine-readable listing")


def _run(args) -> int:
    rows = get_manager().listing()
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    for r in rows:
        names = "; ".join(f"{k}: {', '.join(v)}" for k, v in sorted(r["registered"].items())) or "-"
        dist = f"{r['distribution'] or '?'} {r['version'] or ''}".strip()
        line = f"{r['name']:<12} {r['status']:<8} {dist:<22} {names}"
        if r["reason"]:
            line += f"\n             reason: {r['reason']}"
        print(line)
    return 0


COMMAND = CommandRecord(
    name="plugins",
    help="list plugins: name, kind, registered names, version, distribution, status",
    add_arguments=_add,
    run=_run,
    example="rcdm plugins --json",
)
