"""Building the ADM UNet from official flags, recognising its state dicts, and loading them strictly.

A state dict tells cond_dim, num_channels, channel_mult, num_res_blocks, learn_sigma, use_scale_shift_norm,
resblock_updown and which levels have attention; it does not tell image_size, num_heads, the attention order
or the diffusion settings. Those come from the sidecar or the flags; for the 494-key release layout they
default to the release flags, and the loader says on stderr what it assumed.
"""

from __future__ import annotations

import inspect
import re
import sys
from pathlib import Path
from typing import Any

import torch

import rcdm_core as rc
from rcdm_core.config import parse_bool
from rcdm_core.training import load_state_strict

from .unet import DEFAULT_CHANNEL_MULT, ADMUNet

RELEASE_FLAGS: dict[str, Any] = dict(
    image_size=128, num_channels=256, num_res_blocks=2, channel_mult="1,1,2,3,4", attention_resolutions="32,16,8",
    num_heads=4, num_head_channels=-1, num_heads_upsample=-1, use_new_attention_order=False, learn_sigma=True,
    use_scale_shift_norm=True, resblock_updown=True, dropout=0.0, use_fp16=False, use_checkpoint=False,
    cond_dim=2048, diffusion_steps=1000, noise_schedule="linear", norm_groups=32,
)  # fmt: skip
RELEASE_NUM_TENSORS = 494

# Flags a state dict cannot tell, with the release value assumed when neither a sidecar nor a flag gives one.
NOT_IN_STATE = ("image_size", "num_heads", "num_head_channels", "use_new_attention_order", "diffusion_steps",
                "noise_schedule", "norm_groups")  # fmt: skip

# Flags added after our sidecars were first written. A sidecar gives every other flag of NOT_IN_STATE; one that
# lacks these predates them, when the release value was the only one, so they take it without a warning.
ADDED_LATER = ("norm_groups",)

FLAG_NAMES = tuple(p for p in inspect.signature(ADMUNet.__init__).parameters if p != "self")


def _to_bool(name: str, value: Any) -> bool:
    return parse_bool(value, name)


def normalise_flags(flags: dict[str, Any]) -> dict[str, Any]:
    """Official flag names (dashes accepted) -> constructor kwargs; unknown names are a ConfigError."""
    out: dict[str, Any] = {}
    for key, value in flags.items():
        name = key.replace("-", "_")
        if name not in FLAG_NAMES:
            raise rc.ConfigError(f"denoiser adm: unknown flag {key!r}; it accepts: {', '.join(FLAG_NAMES)}")
        if value is None:
            continue
        out[name] = _convert(name, value)
    return out


def _convert(name: str, value: Any) -> Any:
    """Official flags arrive as strings from the command line and sidecars: convert by the release type."""
    kind = type(RELEASE_FLAGS.get(name, ""))
    if kind is bool:
        return _to_bool(name, value)
    if kind in (int, float) and not isinstance(value, bool):
        try:
            return kind(value)
        except (TypeError, ValueError):
            raise rc.ConfigError(f"{name} must be a number, got {value!r}") from None
    return value


def build(**flags: Any) -> ADMUNet:
    """``rc.build_denoiser("adm", **flags)``: official flag names; missing ones take the release values."""
    return ADMUNet(**normalise_flags(flags))


def detect(state: dict[str, torch.Tensor]) -> bool:
    """Whether a plain state dict is this UNet's layout."""
    return all(
        k in state
        for k in ("time_embed.0.weight", "ssl_emb.weight", "input_blocks.0.0.weight", "out.2.weight")
    )


def _block_ids(state: dict[str, torch.Tensor], prefix: str) -> list[int]:
    pat = re.compile(rf"^{prefix}\.(\d+)\.")
    return sorted({int(m.group(1)) for k in state if (m := pat.match(k))})


def infer_flags(state: dict[str, torch.Tensor]) -> dict[str, Any]:
    """What the shapes tell: cond_dim, num_channels, channel_mult, num_res_blocks, learn_sigma,
    use_scale_shift_norm, resblock_updown, in_channels, and the attention levels (as downsample factors)."""
    num_channels = int(state["time_embed.0.weight"].shape[1])
    in_channels = int(state["input_blocks.0.0.weight"].shape[1])
    outs = _block_ids(state, "output_blocks")
    # the last output block of every level but the top holds an upsampler: a 2nd ResBlock or an Upsample conv
    up_blocks = [i for i in outs if _is_up_block(state, i)]
    per_level = up_blocks[0] + 1 if up_blocks else len(outs)
    levels = len(outs) // per_level
    mult = []
    for level in range(levels):
        block = (levels - 1 - level) * per_level
        ch = int(state[f"output_blocks.{block}.0.out_layers.0.weight"].shape[0])
        mult.append(ch // num_channels if ch % num_channels == 0 else ch / num_channels)
    attn_ds = sorted(
        2**level
        for level in range(levels)
        if f"output_blocks.{(levels - 1 - level) * per_level}.1.qkv.weight" in state
    )
    ch0 = int(state["input_blocks.1.0.out_layers.0.weight"].shape[0])
    emb_rows = int(state["input_blocks.1.0.emb_layers.1.weight"].shape[0])
    return dict(
        cond_dim=int(state["ssl_emb.weight"].shape[1]),
        num_channels=num_channels,
        channel_mult=",".join(str(m) for m in mult),
        num_res_blocks=per_level - 1,
        learn_sigma=int(state["out.2.weight"].shape[0]) == 2 * in_channels,
        use_scale_shift_norm=emb_rows == 2 * ch0,
        resblock_updown=not any(k.endswith(".op.weight") or k.endswith(".conv.weight") for k in state),
        in_channels=in_channels,
        attention_ds=attn_ds,
    )


def _is_up_block(state: dict[str, torch.Tensor], i: int) -> bool:
    return any(
        k.startswith(f"output_blocks.{i}.")
        and (k.endswith(".conv.weight") or re.match(rf"output_blocks\.{i}\.[12]\.in_layers\.0\.weight$", k))
        for k in state
    )


def resolve_flags(
    state: dict[str, torch.Tensor], given: dict[str, Any], path: str | Path
) -> tuple[dict[str, Any], dict[str, Any]]:
    """(flags to build with, flags assumed) for a state dict, given sidecar/user flags.

    Shape-derived values win; a given flag that contradicts the file is a CheckpointError naming both values.
    """
    given = normalise_flags(given)
    found = infer_flags(state)
    attn_ds = found.pop("attention_ds")
    for key, value in found.items():
        if key in given and _differs(key, given[key], value):
            raise rc.CheckpointError(f"{path}: {key} is {value} in the file but {given[key]} was given")
    flags = {**given, **found}
    assumed: dict[str, Any] = {}
    if "image_size" not in flags:
        mult = tuple(float(m) for m in found["channel_mult"].split(","))
        sizes = [s for s, m in DEFAULT_CHANNEL_MULT.items() if tuple(map(float, m)) == mult]
        if len(state) == RELEASE_NUM_TENSORS or sizes:
            assumed["image_size"] = 128 if len(state) == RELEASE_NUM_TENSORS else sizes[0]
        else:
            raise rc.CheckpointError(
                f"{path}: the file does not tell its image size and has no sidecar; pass image_size (--image-size)"
            )
    from_sidecar = all(key in given for key in NOT_IN_STATE if key not in ADDED_LATER)
    for key in NOT_IN_STATE:
        if key in flags or key in assumed:
            continue
        if from_sidecar and key in ADDED_LATER:
            flags[key] = RELEASE_FLAGS[key]
        else:
            assumed[key] = RELEASE_FLAGS[key]
    flags.update(assumed)
    if "attention_resolutions" not in flags:
        flags["attention_resolutions"] = ",".join(str(flags["image_size"] // ds) for ds in attn_ds)
    return flags, assumed


def _differs(key: str, a: Any, b: Any) -> bool:
    if key == "channel_mult":
        return a not in ("", None) and _mult_tuple(a) != _mult_tuple(b)
    return a != b


def _mult_tuple(v: Any) -> tuple[float, ...]:
    return tuple(float(x) for x in (v.split(",") if isinstance(v, str) else v))


def load(state: dict[str, torch.Tensor], flags: dict[str, Any], path: str | Path) -> ADMUNet:
    """Build from the file's shapes + ``flags`` and load strictly; says on stderr what it had to assume."""
    resolved, assumed = resolve_flags(state, flags, path)
    if assumed:
        what = ", ".join(f"{k}={v}" for k, v in assumed.items())
        kind = "the release flags" if len(state) == RELEASE_NUM_TENSORS else "defaults"
        print(f"rcdm: {path}: no sidecar gives {', '.join(assumed)}; assumed {kind}: {what}", file=sys.stderr)
    model = ADMUNet(**resolved)
    load_state_strict(model, state, path)
    model.assumed = assumed
    return model


build.load = load  # rcdm_core.api.load_denoiser calls factory.load(state, flags, path)
