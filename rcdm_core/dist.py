"""Process-group helpers for torchrun: rank, world size, sharding; gloo on CPU, nccl on CUDA."""

from __future__ import annotations

import os

import torch
import torch.distributed as tdist


def is_distributed() -> bool:
    return tdist.is_available() and tdist.is_initialized()


def rank() -> int:
    return tdist.get_rank() if is_distributed() else 0


def world_size() -> int:
    return tdist.get_world_size() if is_distributed() else 1


def is_main() -> bool:
    return rank() == 0


def init_from_env(device: torch.device) -> bool:
    """Initialise the process group when started by torchrun (WORLD_SIZE > 1). Returns True if distributed."""
    if is_distributed():
        return True
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return False
    backend = "nccl" if device.type == "cuda" else "gloo"
    if device.type == "cuda":
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    tdist.init_process_group(backend=backend)
    return True


def shard(n: int) -> range:
    """Indices 0..n-1 this rank handles (contiguous blocks, so the gathered order is the global order)."""
    r, w = rank(), world_size()
    per = (n + w - 1) // w
    return range(min(n, r * per), min(n, (r + 1) * per))


def gather_cat(t: torch.Tensor, n_total: int) -> torch.Tensor:
    """Concatenate each rank's shard (from :func:`shard`) on every rank, in global order."""
    if not is_distributed():
        return t
    w = world_size()
    per = (n_total + w - 1) // w
    padded = torch.zeros((per, *t.shape[1:]), dtype=t.dtype, device=t.device)
    padded[: len(t)] = t
    out = [torch.zeros_like(padded) for _ in range(w)]
    tdist.all_gather(out, padded)
    return torch.cat(out)[:n_total]


def barrier() -> None:
    if is_distributed():
        tdist.barrier()


def resolve_device(name: str = "auto") -> torch.device:
    from .errors import ConfigError

    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
        return torch.device("cpu")
    if name == "cuda":
        if not torch.cuda.is_available():
            raise ConfigError("--device cuda was asked for but no CUDA device is available; use --device cpu")
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
    if name == "cpu":
        return torch.device("cpu")
    raise ConfigError(f"--device must be auto, cpu or cuda, got {name!r}")
