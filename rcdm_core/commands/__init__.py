"""The kernel's own subcommands; plugins add theirs through the ``rcdm_commands`` hook."""

from __future__ import annotations

import importlib

from ..records import CommandRecord

_MODULES = ["plugins", "run", "layers", "encode", "sample", "train"]


def core_commands() -> list[CommandRecord]:
    out = []
    for name in _MODULES:
        try:
            module = importlib.import_module(f"{__name__}.{name}")
        except ModuleNotFoundError as exc:
            if exc.name == f"{__name__}.{name}":
                continue
            raise
        out.append(module.COMMAND)
    return out
