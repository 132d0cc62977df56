"""Progress lines while ``rcdm demo`` runs (the samplers' own bars show progress inside each probe)."""

from __future__ import annotations

import contextlib
import contextvars
import sys
import time
from collections.abc import Iterator

_ACTIVE: contextvars.ContextVar[dict | None] = contextvars.ContextVar("rcdm_demo_active", default=None)


def demo_active() -> bool:
    return _ACTIVE.get() is not None


@contextlib.contextmanager
def demo_session(n_probes: int) -> Iterator[dict]:
    """Mark the current ``execute`` call as the demo's, so the hooks in ``rcdm_demo`` act on it only."""
    state = {"n": n_probes, "done": 0, "t0": time.perf_counter()}
    token = _ACTIVE.set(state)
    try:
        yield state
    finally:
        _ACTIVE.reset(token)


def say(msg: str) -> None:
    state = _ACTIVE.get()
    stamp = f"[demo {time.perf_counter() - state['t0']:5.0f}s] " if state else "[demo] "
    print(stamp + msg, file=sys.stderr, flush=True)


def around_probe(name: str):
    """Body of the ``rcdm_probe_call`` wrapper: announce, run the probe (``yield``), report its time."""
    state = _ACTIVE.get()
    if state is None:
        return (yield)
    state["done"] += 1
    say(f"probe {state['done']}/{state['n']}: {name} ...")
    t0 = time.perf_counter()
    result = yield
    say(f"probe {name} done in {time.perf_counter() - t0:.0f} s")
    return result
