"""Shared fixtures: a fresh plugin manager, the first-party plugins, and one torchrun launcher."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import rcdm_core as rc
from rcdm_core.plugins import Manager, set_manager

ROOT = Path(__file__).resolve().parent.parent
torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))


@pytest.fixture
def fresh_manager():
    """A manager with no plugins, installed as the process-wide one for the test."""
    m = Manager()
    set_manager(m)
    yield m
    set_manager(None)


@pytest.fixture
def manager():
    """The real manager built from the `rcdm` entry points (first-party plugins), reset after the test."""
    set_manager(None)
    m = rc.get_manager()
    yield m
    set_manager(None)


def run_cli(*args: str, env: dict | None = None, timeout: int = 600) -> subprocess.CompletedProcess:
    """Run ``python -m rcdm_core ARGS`` in a subprocess (the real CLI, real entry points)."""
    full_env = {**os.environ, "RCDM_NO_PROGRESS": "1", **(env or {})}
    return subprocess.run(
        [sys.executable, "-m", "rcdm_core", *args],
        capture_output=True,
        text=True,
        env=full_env,
        timeout=timeout,
        cwd=str(ROOT),
    )


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def torchrun(*args: str, nproc: int = 2, timeout: int = 600) -> subprocess.CompletedProcess:
    """Run ``torchrun --nproc_per_node N -m rcdm_core ARGS`` on CPU with gloo (the one distributed launcher)."""
    env = {**os.environ, "RCDM_NO_PROGRESS": "1", "OMP_NUM_THREADS": "1", "MASTER_ADDR": "127.0.0.1"}
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc_per_node",
        str(nproc),
        "--master_port",
        str(_free_port()),  # port 0 is not resolved by torchrun's static rendezvous: workers would hang
        "-m",
        "rcdm_core",
        *args,
    ]
    return subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=timeout, cwd=str(ROOT))
