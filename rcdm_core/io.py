"""Safe checkpoint reading and atomic writes: the only places files are read from or written to disk."""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import io
import json
import os
import pickle
import re
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from .errors import CheckpointError, RcdmError

# The only non-tensor types official files need: DINO's full checkpoints carry ``args`` (an argparse.Namespace).
SAFE_GLOBALS: tuple = (argparse.Namespace,)

# Test hook: called with the temporary path after the bytes are written and before the rename.
_before_replace_hook: Callable[[Path], None] | None = None


def _fsync_dir(path: Path) -> None:
    with contextlib.suppress(OSError):
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write(path: str | Path, write: Callable[[Any], None], mode: str = "wb") -> Path:
    """Write through a temporary file in the same folder, fsync, then rename over ``path``.

    A crash or error at any point leaves the previous file (if any) intact and no partial file in place.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    tmp_path = Path(tmp)
    try:
        with os.fdopen(fd, mode) as fh:
            write(fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp_path, 0o666 & ~_umask())  # mkstemp makes 0600; give the file the usual permissions
        if _before_replace_hook is not None:
            _before_replace_hook(tmp_path)
        os.replace(tmp_path, path)
    except BaseException as exc:
        with contextlib.suppress(OSError):
            tmp_path.unlink()
        if isinstance(exc, OSError):
            state = "the previous file is intact" if path.exists() else "nothing was written"
            raise RcdmError(f"could not write {path}: {exc.strerror or exc}; {state}") from exc
        raise
    _fsync_dir(path.parent)
    return path


def atomic_write_bytes(path: str | Path, data: bytes) -> Path:
    return atomic_write(path, lambda fh: fh.write(data))


def atomic_write_text(path: str | Path, text: str) -> Path:
    return atomic_write(path, lambda fh: fh.write(text.encode("utf-8")))


def atomic_write_json(path: str | Path, obj: Any) -> Path:
    return atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=False, default=_json_default) + "\n")


def _json_default(obj: Any) -> Any:
    if isinstance(obj, torch.Tensor):
        return obj.tolist()
    if isinstance(obj, Path):
        return str(obj)
    if hasattr(obj, "item"):
        return obj.item()
    if hasattr(obj, "tolist"):
        return obj.tolist()
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")


def atomic_torch_save(obj: Any, path: str | Path) -> Path:
    buf = io.BytesIO()
    torch.save(obj, buf)
    return atomic_write_bytes(path, buf.getvalue())


def sha256_file(path: str | Path, limit: int | None = None) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


_GLOBAL_RE = re.compile(r"GLOBAL ([\w.]+)|global '([\w.]+)'|Unsupported global: GLOBAL ([\w.]+)")


def safe_load(
    path: str | Path, trust_checkpoint: bool = False, map_location: str | torch.device = "cpu"
) -> Any:
    """Load a checkpoint without running code from it.

    ``torch.load(weights_only=True)`` with only :data:`SAFE_GLOBALS` allowed; safetensors files are read with
    safetensors. A file that needs any other global is refused with a line naming it and ``--trust-checkpoint``.
    With ``trust_checkpoint=True`` the file is unpickled in full (it may run code: only for files you trust).
    """
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"{path}: no such file")
    if path.is_dir():
        raise CheckpointError(f"{path} is a folder; give a checkpoint file")
    if path.stat().st_size == 0:
        raise CheckpointError(f"{path} is empty (0 bytes); the file is truncated or was never written")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        try:
            return load_file(str(path), device=str(map_location))
        except Exception as exc:
            raise CheckpointError(f"{path}: not a readable safetensors file ({exc})") from exc
    if trust_checkpoint:
        try:
            return torch.load(
                path, map_location=map_location, weights_only=False
            )  # user passed --trust-checkpoint
        except Exception as exc:
            raise CheckpointError(f"{path}: could not be read even with --trust-checkpoint ({exc})") from exc
    try:
        with torch.serialization.safe_globals(list(SAFE_GLOBALS)):
            return torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as exc:
        msg = str(exc)
        m = _GLOBAL_RE.search(msg)
        name = next((g for g in m.groups() if g), None) if m else None
        if name or "weights_only" in msg.lower() or "global" in msg.lower():
            what = f"the global {name}" if name else "a type that is not allowed"
            raise CheckpointError(
                f"{path} needs {what} to load, which could run code; refused. If you trust this file, pass "
                f"--trust-checkpoint"
            ) from None
        raise CheckpointError(f"{path}: not a readable checkpoint ({_first_line(msg)})") from None
    except (RuntimeError, EOFError, OSError, ValueError, KeyError) as exc:
        raise CheckpointError(
            f"{path}: not a readable checkpoint, it may be truncated or not a torch file ({_first_line(str(exc))})"
        ) from None


def _first_line(msg: str) -> str:
    return msg.strip().splitlines()[0][:200] if msg.strip() else "unknown error"


def check_finite(state: dict[str, Any], path: str | Path) -> None:
    """Refuse NaN/inf weights, naming the first bad key."""
    for key, value in state.items():
        if not (isinstance(value, torch.Tensor) and value.is_floating_point()):
            continue
        # a finite sum proves every element finite (NaN/inf propagate); only then is the element test needed
        if not torch.isfinite(value.sum()) and not torch.isfinite(value).all():
            raise CheckpointError(
                f"{path}: tensor {key!r} holds NaN or inf values; the checkpoint is corrupt"
            )


def float_state(state: dict[str, Any], dtype: torch.dtype = torch.float32) -> dict[str, Any]:
    """Cast fp16/bf16 tensors of a state dict to ``dtype`` (integer buffers stay as they are)."""
    return {
        k: (v.to(dtype) if isinstance(v, torch.Tensor) and v.is_floating_point() and v.dtype != dtype else v)
        for k, v in state.items()
    }


def sidecar_path(path: str | Path) -> Path:
    path = Path(path)
    return path.with_suffix(".json")


def read_sidecar(path: str | Path) -> dict[str, Any] | None:
    side = sidecar_path(path)
    if not side.exists():
        return None
    try:
        obj = json.loads(side.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise CheckpointError(f"{side}: sidecar is not valid JSON ({exc}); fix or delete it") from None
    # every reader does sidecar.get(...) and reads these keys as tables: check the shape once, here
    if not isinstance(obj, dict):
        raise CheckpointError(
            f"{side}: sidecar must be a JSON object, got {type(obj).__name__}; fix or delete it"
        )
    for key, want in _SIDECAR_TYPES.items():
        if obj.get(key) is not None and not isinstance(obj[key], want):
            raise CheckpointError(
                f"{side}: sidecar key {key!r} must be a JSON {_JSON_NAMES[want]}, got {obj[key]!r}; fix or "
                f"delete it"
            )
    return obj


_SIDECAR_TYPES: dict[str, type] = {"denoiser": str, "flags": dict, "diffusion": dict, "architecture": dict}
_JSON_NAMES = {str: "string", dict: "object"}
