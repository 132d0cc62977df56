"""First-party rcdm plugin ``rcdm_demo``: the ``rcdm demo`` command and its small shipped weights.

``rcdm demo [--out runs/demo] [--fast] [--retrain]`` runs the whole pipeline on the embedded default: real
photos (``builtin:photos``), a real SSL objective (an ``ssl-small`` encoder trained with SimCLR) and real
diffusion models (two 32 px ADM RCDMs, one conditioned on the backbone, one on the projector: the two arms),
then prints the path of ``report.html``. Settings and their reasons are in :mod:`rcdm_demo.settings`; the
recipe that produced the shipped weights (and that ``--retrain`` reruns) in :mod:`rcdm_demo.recipe`.
"""

from __future__ import annotations

import rcdm_core as rc


@rc.hookimpl
def rcdm_commands():
    from .command import COMMAND

    return [COMMAND]


@rc.hookimpl(wrapper=True)
def rcdm_probe_call(probe_name, probe, ctx):
    """While ``rcdm demo`` runs: a line before and after each probe (which one, how far, how long)."""
    from .progress import around_probe

    return (yield from around_probe(probe_name))


@rc.hookimpl
def rcdm_run_end(ctx, metrics):
    """While ``rcdm demo`` runs: add the demo's reading of findings 1 and 2 to the report's top notes."""
    from .progress import demo_active

    if demo_active():
        from .reading import findings_reading

        metrics.setdefault("notes", []).extend(findings_reading(metrics))
