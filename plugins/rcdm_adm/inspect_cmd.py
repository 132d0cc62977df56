"""``rcdm inspect FILE [--to-safetensors OUT]``: what a checkpoint is and what it expects."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

import rcdm_core as rc
from rcdm_core.io import atomic_write_bytes, read_sidecar, safe_load

from .loading import RELEASE_NUM_TENSORS, detect, resolve_flags


def _add(p) -> None:
    p.add_argument(
        "file", help="a checkpoint: model/ema .pt (ours or a released RCDM), .safetensors, or any .pt"
    )
    p.add_argument("--to-safetensors", metavar="OUT", help="also write the tensors to OUT (.safetensors)")
    p.add_argument("--json", action="store_true", help="machine-readable output")


def describe(path: str | Path, trust_checkpoint: bool = False) -> dict[str, Any]:
    """What ``rcdm inspect`` reports, as a dict (layout, cond_dim, parameters, flags found or assumed, sidecar)."""
    path = Path(path)
    state = safe_load(path, trust_checkpoint=trust_checkpoint)
    info: dict[str, Any] = {"file": str(path)}
    if isinstance(state, dict) and "state" in state and "param_groups" in state:
        step = state.get("rcdm", {}).get("step") if isinstance(state.get("rcdm"), dict) else None
        return {**info, "layout": "optimizer state (AdamW)", "step": step, "tensors": len(state["state"])}
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        return {**info, "layout": f"not a plain state dict ({type(state).__name__})"}
    info["tensors"] = len(state)
    info["parameters"] = sum(v.numel() for v in state.values() if v.is_floating_point())
    info["dtypes"] = sorted({str(v.dtype).removeprefix("torch.") for v in state.values()})
    sidecar = read_sidecar(path) or {}
    if not detect(state):
        return {
            **info,
            "layout": "unknown to the adm denoiser (not an RCDM/ADM state dict)",
            "first_keys": list(state)[:5],
        }
    flags, assumed = resolve_flags(state, dict(sidecar.get("flags", {})), path)
    release = len(state) == RELEASE_NUM_TENSORS and not sidecar
    info["layout"] = "ADM UNet (released RCDM layout)" if release else "ADM UNet (rcdm adm)"
    info["cond_dim"] = int(state["ssl_emb.weight"].shape[1])
    info["flags"] = {k: v for k, v in flags.items() if k not in assumed}
    info["assumed"] = assumed
    for key in (
        "encoder",
        "weights",
        "weights_sha256",
        "layer",
        "input_norm",
        "data",
        "step",
        "kind",
        "ema_rate",
    ):
        if key in sidecar:
            info[key] = sidecar[key]
    info["sidecar"] = bool(sidecar)
    return info


def _print(info: dict[str, Any]) -> None:
    for key, value in info.items():
        if key in ("flags", "assumed"):
            if value:
                word = "flags found" if key == "flags" else "flags assumed (not in the file or a sidecar)"
                print(f"{word}: " + ", ".join(f"{k}={v}" for k, v in value.items()))
        elif key == "parameters":
            print(f"parameters: {value:,}")
        else:
            print(f"{key}: {value}")


def _run(args) -> int:
    info = describe(args.file, args.trust_checkpoint)
    if args.to_safetensors:
        from safetensors.torch import save

        state = safe_load(args.file, trust_checkpoint=args.trust_checkpoint)
        if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
            raise rc.CheckpointError(
                f"{args.file}: only a plain state dict of tensors converts to safetensors"
            )
        meta = {"source": Path(args.file).name}
        atomic_write_bytes(
            args.to_safetensors, save({k: v.contiguous() for k, v in state.items()}, metadata=meta)
        )
        info["written"] = str(args.to_safetensors)
    print(json.dumps(info, indent=2, default=str)) if args.json else _print(info)
    return 0


COMMAND = rc.CommandRecord(
    name="inspect",
    help="what a checkpoint is: layout, cond_dim, parameter count, flags found or assumed, encoder/layer",
    add_arguments=_add,
    run=_run,
    example="rcdm inspect rcdm_ema_dino_head.pt --to-safetensors rcdm_ema_dino_head.safetensors",
)
