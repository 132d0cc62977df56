"""The one reader of encoder checkpoint layouts (see shared/reference/checkpoints.md).

``read_checkpoint(path)`` unwraps the file in the documented order (``teacher`` — or ``student`` on request —,
``model``, ``state_dict``, VISSL ``classy_state_dict/base_model/model/{trunk,heads}``), strips prefixes only at
the start of keys, splits the keys into trunk / head / loss BatchNorm, lists what is ignored on purpose, and
names the layout it found. Building the network and loading strictly is the caller's part (``factories.py``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import attrs
import torch
from torch import nn

from rcdm_core.errors import CheckpointError
from rcdm_core.io import check_finite, float_state, safe_load, sha256_file

from . import heads as H

# Layouts this reader knows, in the order it tries them (named in the "matches no layout" error).
LAYOUTS = (
    "dino-full (teacher/student/optimizer/args)",
    "vicreg-full / barlow-twins-full ({epoch, model: module.backbone.*, module.projector.*})",
    "simclr-v1-converted ({state_dict: torchvision ResNet-50 incl. fc})",
    "vissl (classy_state_dict.base_model.model.{trunk,heads})",
    "spijkervet-simclr (encoder.* + projector.*)",
    "rcdm-ssl (backbone.* + projector.*, written by rcdm train-encoder)",
    "torchvision-resnet (flat ResNet state dict, fc optional)",
    "dino-vit-backbone (flat timm ViT state dict)",
)

# Prefixes that wrap a whole state dict (stripped only at the start of a key, repeatedly).
WRAPPER_PREFIXES = ("module.",)
# Group prefixes: where a key belongs once wrappers are gone.
TRUNK_PREFIXES = ("backbone.", "encoder.")
HEAD_PREFIXES = ("head.", "projector.")
LOSS_BN_PREFIX = "bn."
# Parts of a trunk we never build: classifier layers.
TRUNK_IGNORED = ("fc.",)
# Key prefixes stripped from trunk keys (VISSL's trunk wrapper).
TRUNK_STRIP = ("_feature_blocks.",)


@attrs.define
class Checkpoint:
    """What a file holds, split and renamed, ready for strict loading.

    ``trunk``: state dict in torchvision / timm names. ``head``: flat (``0.weight``) or VISSL (``0.clf.0.weight``)
    keys as ``head_style`` says, None when the file holds no head. ``loss_bn``: Barlow Twins' loss BatchNorm.
    ``arch``: ``resnet`` (Bottleneck), ``resnet-basic`` or ``vit``. ``unit_input``: the weights take [0, 1]
    input without mean/std (SimCLR converted from TensorFlow, Spijkervet).
    """

    path: str
    layout: str
    arch: str
    trunk: dict[str, torch.Tensor]
    head: dict[str, torch.Tensor] | None = None
    head_style: str = "flat"
    loss_bn: dict[str, torch.Tensor] | None = None
    ignored: list[str] = attrs.field(factory=list)
    unit_input: bool = False
    sha256: str = ""

    def head_layers(self) -> Any:
        """The head's layer description read from the file (widths from the tensors)."""
        if self.head is None:
            return None
        where = f"{self.path} (head)"
        return (
            H.infer_vissl(self.head, where) if self.head_style == "vissl" else H.infer_flat(self.head, where)
        )


def strip_prefixes(key: str, prefixes: tuple[str, ...]) -> str:
    """Remove any of ``prefixes`` from the START of ``key`` only, repeatedly (``module.module.x`` -> ``x``).

    Never ``lstrip``: ``"bn1.weight".lstrip("backbone.")`` would eat the ``b``.
    """
    changed = True
    while changed:
        changed = False
        for p in prefixes:
            if key.startswith(p):
                key = key.removeprefix(p)
                changed = True
    return key


def _is_state(node: Any) -> bool:
    return isinstance(node, dict) and bool(node) and all(isinstance(v, torch.Tensor) for v in node.values())


def _top_keys(obj: Any) -> str:
    keys = list(obj)[:12] if isinstance(obj, dict) else []
    return ", ".join(map(str, keys)) + (" ..." if isinstance(obj, dict) and len(obj) > 12 else "")


def _no_layout(path: str, obj: Any, why: str = "") -> CheckpointError:
    tried = "; ".join(LAYOUTS)
    return CheckpointError(
        f"{path} matches no known encoder checkpoint layout{(' (' + why + ')') if why else ''}; top-level keys "
        f"found: [{_top_keys(obj)}]; layouts tried: {tried}"
    )


def unwrap(obj: Any, path: str, part: str = "teacher") -> tuple[Any, list[str], list[str]]:
    """Descend wrappers in the documented order -> (node, trail of keys taken, ignored sibling keys).

    Stops at a flat state dict or at a VISSL ``classy_state_dict`` (returned as the ``base_model.model`` dict).
    """
    node, trail, ignored = obj, [], []

    def take(key: str) -> None:
        nonlocal node
        ignored.extend("/".join([*trail, str(k)]) for k in node if k != key)
        trail.append(key)
        node = node[key]

    while not _is_state(node):
        if not isinstance(node, dict):
            raise _no_layout(path, obj, f"{'/'.join(trail) or 'the file'} holds a {type(node).__name__}")
        if "teacher" in node or "student" in node:
            if part not in node:
                raise CheckpointError(
                    f"{path}: asked for the DINO {part!r} weights but the file has no {part!r} key"
                )
            take(part)
        elif isinstance(node.get("model"), dict):
            take("model")
        elif isinstance(node.get("state_dict"), dict):
            take("state_dict")
        elif isinstance(node.get("classy_state_dict"), dict):
            take("classy_state_dict")
            for key in ("base_model", "model"):
                if not isinstance(node.get(key), dict):
                    raise _no_layout(path, obj, f"VISSL file without classy_state_dict/.../{key}")
                take(key)
            return node, trail, ignored
        elif "resnet" in node and "head" in node:
            raise CheckpointError(
                f"{path} looks like a SimCLRv2 converter file ({{'resnet', 'head'}}); its ResNet key names could not "
                f"be confirmed, so it is not supported: convert it to a torchvision ResNet state dict first"
            )
        else:
            raise _no_layout(path, obj)
    return node, trail, ignored


def _arch(trunk: dict[str, torch.Tensor]) -> str | None:
    if "cls_token" in trunk and any(k.startswith("blocks.") for k in trunk):
        return "vit"
    if "conv1.weight" in trunk and "layer1.0.conv1.weight" in trunk:
        return "resnet" if "layer1.0.conv3.weight" in trunk else "resnet-basic"
    return None


def _split_groups(state: dict[str, torch.Tensor], path: str):
    """Flat keys (wrappers stripped) -> trunk, head, loss_bn, ignored (stripped names), grouped?"""
    grouped = any(k.startswith(TRUNK_PREFIXES) for k in state)
    if not grouped:
        return dict(state), None, None, [], False
    trunk: dict[str, torch.Tensor] = {}
    head: dict[str, torch.Tensor] = {}
    loss_bn: dict[str, torch.Tensor] = {}
    ignored: list[str] = []
    for key, value in state.items():
        if key.startswith(TRUNK_PREFIXES):
            trunk[strip_prefixes(key, TRUNK_PREFIXES)] = value
        elif key.startswith(HEAD_PREFIXES):
            rest = strip_prefixes(key, HEAD_PREFIXES)
            if rest.startswith(
                "last_layer."
            ):  # DINO's prototype layer (65536 / 60000 way): not a representation
                ignored.append(key)
            else:
                head[rest.removeprefix("mlp.")] = value
        elif key.startswith("last_layer."):  # rcdm-ssl DINO prototypes
            ignored.append(key)
        elif key.startswith(LOSS_BN_PREFIX):
            loss_bn[key.removeprefix(LOSS_BN_PREFIX)] = value
        else:
            raise CheckpointError(
                f"{path}: key {key!r} belongs to no known part (expected backbone./encoder., head./projector., bn.)"
            )
    return trunk, head or None, loss_bn or None, ignored, True


def _clean_trunk(trunk: dict[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], list[str]]:
    out, ignored = {}, []
    for key, value in trunk.items():
        key = strip_prefixes(key, TRUNK_STRIP)
        if key.startswith(TRUNK_IGNORED):
            ignored.append(key)  # a supervised classifier: we build the trunk without it
        else:
            out[key] = value
    return out, ignored


def load_strict(module: nn.Module, state: dict[str, torch.Tensor], where: str, assign: bool = False) -> None:
    """Load every key of ``state`` into ``module``: a missing, unexpected or mis-shaped key is a CheckpointError
    naming the key (and both shapes). ``assign=True`` for modules built on the meta device (no random init and
    no copy: a ResNet-50 loads in a fraction of the time); nothing may stay on the meta device afterwards.
    """
    check_finite(state, where)  # every loader path (timm, CLIP, named, ssl-small) meets this check
    own = module.state_dict()
    for k, v in own.items():
        if k in state and tuple(state[k].shape) != tuple(v.shape):
            raise CheckpointError(
                f"{where}: key {k!r} has shape {tuple(state[k].shape)} in the file but the model expects {tuple(v.shape)}"
            )
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    if missing:
        raise CheckpointError(
            f"{where}: key {missing[0]!r} is missing from the file ({len(missing)} missing in all)"
        )
    if unexpected:
        raise CheckpointError(
            f"{where}: unexpected key {unexpected[0]!r} ({len(unexpected)} unexpected in all)"
        )
    module.load_state_dict(state, strict=True, assign=assign)
    left = [n for n, t in [*module.named_parameters(), *module.named_buffers()] if t.is_meta]
    if left:
        raise CheckpointError(f"{where}: {left[0]!r} was not in the file and has no value")


def _prepare(state: dict[str, torch.Tensor], path: str) -> dict[str, torch.Tensor]:
    check_finite(state, path)
    return float_state(state)


def read_checkpoint(path: str | Path, trust_checkpoint: bool = False, part: str = "teacher") -> Checkpoint:
    """Read an encoder file of any layout in checkpoints.md -> :class:`Checkpoint` (nothing built yet)."""
    path = str(path)
    obj = safe_load(path, trust_checkpoint=trust_checkpoint)
    if not isinstance(obj, dict):
        raise CheckpointError(
            f"{path} holds a {type(obj).__name__}, not a dict; give a state-dict checkpoint"
        )
    node, trail, ignored = unwrap(obj, path, part)
    if trail[-1:] == ["model"] and trail[:1] == ["classy_state_dict"]:
        ckpt = _read_vissl(node, path, ignored)
    else:
        state = {strip_prefixes(k, WRAPPER_PREFIXES): v for k, v in node.items()}
        original = {strip_prefixes(k, WRAPPER_PREFIXES): k for k in node}
        trunk, head, loss_bn, more, grouped = _split_groups(state, path)
        more = ["/".join([*trail, original.get(k, k)]) for k in more]
        trunk, fc = _clean_trunk(trunk)
        arch = _arch(trunk)
        if arch is None:
            raise _no_layout(path, obj, f"first keys after unwrapping: {', '.join(list(trunk)[:5])}")
        layout = _layout_name(trail, grouped, arch, head, loss_bn, state)
        ckpt = Checkpoint(path, layout, arch, trunk, head, "flat", loss_bn, [*ignored, *more, *fc])
        ckpt.unit_input = layout in ("spijkervet-simclr", "simclr-v1-converted")
    ckpt.trunk = _prepare(ckpt.trunk, path)
    ckpt.head = _prepare(ckpt.head, path) if ckpt.head else None
    ckpt.loss_bn = _prepare(ckpt.loss_bn, path) if ckpt.loss_bn else None
    ckpt.sha256 = sha256_file(path)
    return ckpt


def _layout_name(trail, grouped, arch, head, loss_bn, state) -> str:
    if trail[:1] in (["teacher"], ["student"]):
        return "dino-full"
    if grouped and any(k.startswith("encoder.") for k in state):
        return "spijkervet-simclr"
    if trail[:1] == ["model"] and grouped:
        return "barlow-twins-full" if loss_bn is not None else "vicreg-full"
    if grouped:
        return "rcdm-ssl"
    if trail == ["state_dict"] and "fc.weight" in state:
        return "simclr-v1-converted"
    return "dino-vit-backbone" if arch == "vit" else "torchvision-resnet"


def _read_vissl(node: dict, path: str, ignored: list[str]) -> Checkpoint:
    trunk_raw = node.get("trunk")
    if not _is_state(trunk_raw):
        raise CheckpointError(
            f"{path}: VISSL file has no tensor dict at classy_state_dict/base_model/model/trunk"
        )
    ignored = [
        *ignored,
        *(f"classy_state_dict/base_model/model/{k}" for k in node if k not in ("trunk", "heads")),
    ]
    trunk, fc = _clean_trunk({strip_prefixes(k, WRAPPER_PREFIXES): v for k, v in trunk_raw.items()})
    arch = _arch(trunk)
    if arch is None:
        raise CheckpointError(f"{path}: VISSL trunk keys are not a ResNet ({', '.join(list(trunk)[:5])})")
    heads_raw = node.get("heads")
    head = (
        {strip_prefixes(k, WRAPPER_PREFIXES): v for k, v in heads_raw.items()}
        if _is_state(heads_raw)
        else None
    )
    return Checkpoint(path, "vissl", arch, trunk, head, "vissl", None, [*ignored, *fc])
