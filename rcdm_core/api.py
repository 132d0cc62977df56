"""The Python API: what research code calls (exported as ``rcdm_core.load_encoder`` and friends)."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import torch

from .errors import CheckpointError, ConfigError
from .interfaces import ConditionalDenoiser, Representation, Sampler
from .io import check_finite, float_state, read_sidecar, safe_load
from .plugins import get_manager


def load_encoder(
    name: str,
    weights: str | None = None,
    layer: str = "backbone",
    input_norm: str = "own",
    trust_checkpoint: bool = False,
    device: str | torch.device = "cpu",
) -> Representation:
    """Build a registered encoder, load ``weights`` (layout detected from the file), bind it to ``layer``."""
    m = get_manager()
    rec, arg = m.get("encoder", name)
    if weights is not None and not Path(weights).exists():
        raise CheckpointError(f"--weights {weights}: no such file")
    encoder = rec.factory(arg, weights, trust_checkpoint)
    encoder.module.eval()
    try:
        selector = get_selector(layer)
    except ConfigError:
        raise ConfigError(
            f"unknown layer {layer!r} for encoder {name}; layers: {', '.join(available_layers(encoder))}"
        ) from None
    rep = Representation(encoder, selector, layer, input_norm)
    return rep.to(device)


def available_layers(encoder) -> list[str]:
    """Every layer spec the registered selectors offer for this encoder (for error messages and ``rcdm layers``)."""
    m = get_manager()
    names: list[str] = []
    for rec_name in m.names("layer"):
        names += [n for n in m.registry["layer"][rec_name].factory().names(encoder) if n not in names]
    return names


def get_selector(layer: str):
    head = layer.split(":", 1)[0]
    rec, _ = get_manager().get("layer", head)
    return rec.factory()


def build_denoiser(name: str = "adm", **flags: Any) -> ConditionalDenoiser:
    """Build a registered denoiser from official-style flags (``image_size``, ``num_channels``, ``cond_dim``...)."""
    rec, _ = get_manager().get("denoiser", name)
    return rec.factory(**flags)


def save_denoiser(model: ConditionalDenoiser, path: str | Path, name: str = "adm", **extra: Any) -> Path:
    """Write a plain state dict (the official form) plus its JSON sidecar (denoiser name, flags, ``extra``).

    What research code uses to hand a freshly built or fine-tuned denoiser to ``rcdm sample`` / ``rcdm-run``.
    """
    from .io import atomic_torch_save, atomic_write_json, sidecar_path

    path = Path(path)
    atomic_torch_save({k: v.detach().cpu() for k, v in model.state_dict().items()}, path)
    atomic_write_json(sidecar_path(path), {"denoiser": name, "flags": dict(model.flags), **extra})
    return path


def load_denoiser(
    path: str | Path, trust_checkpoint: bool = False, device: str | torch.device = "cpu", **flags: Any
) -> ConditionalDenoiser:
    """Load a denoiser checkpoint (official plain state dict or ours, with or without sidecar), strictly.

    Settings come from the sidecar when there is one, then from ``flags``; a plain released file takes the
    release defaults (the denoiser plugin says what it assumed).
    """
    path = Path(path)
    state = safe_load(path, trust_checkpoint=trust_checkpoint)
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise CheckpointError(f"{path}: expected a plain state dict of tensors (a denoiser checkpoint)")
    check_finite(state, path)
    state = float_state(state)
    sidecar = read_sidecar(path) or {}
    m = get_manager()
    name = sidecar.get("denoiser")
    if name is None:
        for cand in m.names("denoiser"):
            rec = m.registry["denoiser"][cand]
            if rec.detect is not None and rec.detect(state):
                name = cand
                break
    if name is None:
        keys = ", ".join(list(state)[:5])
        raise CheckpointError(f"{path}: no registered denoiser recognises this layout (first keys: {keys})")
    rec, _ = m.get("denoiser", name)
    merged = {**sidecar.get("flags", {}), **flags}
    model = rec.factory.load(state, merged, path) if hasattr(rec.factory, "load") else None
    if model is None:
        model = rec.factory(**merged)
        try:
            model.load_state_dict(state, strict=True)
        except RuntimeError as exc:
            raise CheckpointError(
                f"{path}: does not match the denoiser built from its flags: {exc}"
            ) from None
    model.sidecar = sidecar
    model.source = str(path)
    return model.to(device).eval()


_OFFICIAL_RESPACING = re.compile(r"^(ddim)?\d+(,\d+)*$")


def parse_sampler_spec(spec: str) -> tuple[str, str | None, dict[str, str]]:
    """``ddim:25,eta=0.5`` -> ("ddim", "25", {"eta": "0.5"}); official ``100``/``ddim25``/``10,15,20`` -> ddpm."""
    spec = spec.strip()
    if _OFFICIAL_RESPACING.match(spec):
        if spec.startswith("ddim"):
            return "ddpm", spec[4:], {"spacing": "ddim"}
        return "ddpm", spec, {}
    name, _, rest = spec.partition(":")
    steps: list[str] = []
    keys: dict[str, str] = {}
    for part in [p for p in rest.split(",") if p.strip()] if rest else []:
        if "=" in part:
            k, _, v = part.partition("=")
            keys[k.strip()] = v.strip()
        else:
            steps.append(part.strip())
    return name, ",".join(steps) or None, keys


def get_sampler(spec: str) -> Sampler:
    """``ddpm:100``, ``ddim:25,eta=0``, ``dpm-solver++:20,order=2``, or an official respacing string."""
    name, steps, keys = parse_sampler_spec(spec)
    rec, _ = get_manager().get("sampler", name)
    unknown = sorted(set(keys) - set(rec.options))
    if unknown:
        accepted = ", ".join(sorted(rec.options)) or "none"
        raise ConfigError(f"sampler {spec!r}: unknown key {unknown[0]!r}; {name} accepts: {accepted}")
    return rec.factory(steps, **keys)


def run_probe(name: str, ctx: Any, **options: Any):
    """Run one registered probe on a context (see ``rcdm_core.context.ProbeContext``)."""
    rec, _ = get_manager().get("probe", name)
    from .config import resolve_options

    probe = rec.factory(**resolve_options(f"probe {name}", rec.options, options))
    return probe.run(ctx)
