"""Build each registered encoder: architecture from torchvision / timm / open_clip, weights from any layout.

Every factory has the EncoderRecord signature ``factory(arg, weights, trust_checkpoint) -> Encoder``. Without
weights the network (head included, at the official widths) is random, ``random_weights`` is True and a loud
warning goes to stderr.
"""

from __future__ import annotations

import sys
from typing import Any

import attrs
import torch
from torch import nn

from rcdm_core.errors import CheckpointError, ConfigError
from rcdm_core.io import check_finite, read_sidecar, safe_load, sha256_file

from . import heads as H
from . import small
from .checkpoints import WRAPPER_PREFIXES, Checkpoint, load_strict, read_checkpoint, strip_prefixes, unwrap
from .encoders import EncoderNet, NetEncoder, warn_random

IMAGENET = ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
CLIP_MEAN_STD = ((0.48145466, 0.4578275, 0.40821073), (0.26862954, 0.26130258, 0.27577711))
SMALL_MEAN_STD = ((0.5, 0.5, 0.5), (0.5, 0.5, 0.5))


@attrs.frozen
class Spec:
    """A named encoder: its method, trunk and official head (for random weights; files give their own widths)."""

    method: str
    trunk: str  # "resnet50" or a timm ViT name
    act: str = "relu"
    head: tuple = ()
    loss_bn: int = 0
    layouts: tuple[str, ...] = ()  # method-specific layouts this encoder accepts (plus the generic ones)


_DINO_RN50_HEAD = (H.linear(2048, 4096), H.bn(4096), H.ACT, H.linear(4096, 256))
SPECS: dict[str, Spec] = {
    "simclr-resnet50": Spec(
        "simclr",
        "resnet50",
        "relu",
        tuple(H.mlp([2048, 2048, 128])),
        0,
        ("spijkervet-simclr", "simclr-v1-converted", "vissl"),
    ),
    "dino-resnet50": Spec("dino", "resnet50", "gelu", _DINO_RN50_HEAD, 0, ("dino-full",)),
    "vicreg-resnet50": Spec(
        "vicreg",
        "resnet50",
        "relu",
        tuple(H.mlp([2048, 8192, 8192, 8192], norm=True, last_bias=False)),
        0,
        ("vicreg-full", "vissl"),
    ),
    "barlow-twins-resnet50": Spec(
        "barlow-twins",
        "resnet50",
        "relu",
        tuple(H.mlp([2048, 8192, 8192, 8192], bias=False, norm=True)),
        8192,
        ("barlow-twins-full", "vissl"),
    ),
    "supervised-resnet50": Spec("supervised", "resnet50"),
    "dino-vits16": Spec(
        "dino", "vit_small_patch16_224", "gelu", tuple(H.mlp([384, 2048, 2048, 256])), 0, ("dino-full",)
    ),
    "dino-vitb16": Spec(
        "dino", "vit_base_patch16_224", "gelu", tuple(H.mlp([768, 2048, 2048, 256])), 0, ("dino-full",)
    ),
}
GENERIC_LAYOUTS = ("torchvision-resnet", "dino-vit-backbone")
# which named encoder fits a method-specific layout (for the "use --encoder X" hint)
LAYOUT_HINT = {
    "dino-full": "dino-resnet50 / dino-vits16 / dino-vitb16",
    "spijkervet-simclr": "simclr-resnet50",
    "simclr-v1-converted": "simclr-resnet50",
    "vicreg-full": "vicreg-resnet50",
    "barlow-twins-full": "barlow-twins-resnet50",
    "rcdm-ssl": "ssl-small",
}


# ---- shared loading helpers -------------------------------------------------------------------------------------
def _load_head(ckpt: Checkpoint, act: str, in_dim: int) -> nn.Module | None:
    layers = ckpt.head_layers()
    if layers is None:
        return None
    got = H.in_dim(layers if ckpt.head_style == "flat" else layers[0])
    if got != in_dim:
        raise CheckpointError(
            f"{ckpt.path}: the head's first Linear takes {got} inputs but the trunk gives {in_dim}; the head does not "
            f"belong to this trunk"
        )
    module = H.build_vissl(layers, act) if ckpt.head_style == "vissl" else H.build_flat(layers, act)
    load_strict(module, ckpt.head, f"{ckpt.path} (projector head)")
    return module


def _load_loss_bn(ckpt: Checkpoint) -> nn.Module | None:
    if ckpt.loss_bn is None:
        return None
    dim = int(ckpt.loss_bn["running_mean"].shape[0]) if "running_mean" in ckpt.loss_bn else 0
    module = nn.BatchNorm1d(dim, affine=False)
    load_strict(module, ckpt.loss_bn, f"{ckpt.path} (Barlow Twins loss bn)")
    return module


def _meta(ckpt: Checkpoint | None, spec_name: str, method: str, arch: str, **more: Any) -> dict[str, Any]:
    if ckpt is None:
        return {
            "weights": None,
            "sha256": None,
            "layout": "random",
            "ignored": [],
            "method": method,
            "architecture": arch,
            **more,
        }
    return {
        "weights": ckpt.path,
        "sha256": ckpt.sha256,
        "layout": ckpt.layout,
        "ignored": list(ckpt.ignored),
        "method": method,
        "architecture": arch,
        "encoder": spec_name,
        **more,
    }


def _check_layout(name: str, spec: Spec, ckpt: Checkpoint) -> None:
    if ckpt.layout in GENERIC_LAYOUTS or ckpt.layout in spec.layouts:
        return
    hint = LAYOUT_HINT.get(ckpt.layout, "another encoder")
    raise ConfigError(
        f"{ckpt.path} is a {ckpt.layout} checkpoint, which encoder {name} does not read; use --encoder {hint}"
    )


# ---- ResNet-50 and DINO ViT -------------------------------------------------------------------------------------
def _resnet50() -> nn.Module:
    from torchvision.models import resnet50

    trunk = resnet50(weights=None)
    trunk.fc = nn.Identity()  # the representation is the 2048-d pool; a supervised fc is never built
    return trunk


def _vit(timm_name: str) -> nn.Module:
    import timm

    return timm.create_model(timm_name, pretrained=False, num_classes=0)


def build_named(name: str, part: str | None, weights: str | None, trust_checkpoint: bool) -> NetEncoder:
    """Build ``simclr-resnet50`` ... ``dino-vitb16``; ``part`` picks DINO's teacher (default) or student."""
    spec = SPECS[name]
    is_vit = spec.trunk.startswith("vit")
    if part not in (None, "teacher", "student"):
        raise ConfigError(f"encoder {name}:{part}: the part after the colon must be teacher or student")
    ckpt = read_checkpoint(weights, trust_checkpoint, part or "teacher") if weights else None
    # with a file, build on the meta device and take the file's tensors (no random init to throw away)
    with torch.device("meta" if ckpt is not None else "cpu"):
        trunk = _vit(spec.trunk) if is_vit else _resnet50()
    trunk_dim = trunk.num_features if is_vit else 2048
    if ckpt is not None:
        _check_layout(name, spec, ckpt)
        want = "vit" if is_vit else "resnet"
        if ckpt.arch != want:
            raise ConfigError(
                f"{ckpt.path} holds a {ckpt.arch} trunk but encoder {name} is a {want}; pick the "
                f"encoder that matches the file"
            )
        load_strict(trunk, ckpt.trunk, f"{ckpt.path} (backbone)", assign=True)
        head = _load_head(ckpt, spec.act, trunk_dim)
        loss_bn = _load_loss_bn(ckpt)
    else:
        warn_random(name)
        head = H.build_flat(list(spec.head), spec.act) if spec.head else None
        loss_bn = nn.BatchNorm1d(spec.loss_bn, affine=False) if spec.loss_bn else None
    if is_vit:
        blocks = {f"blocks.{i}": f"blocks.{i}" for i in range(len(trunk.blocks))}
        dims = {"backbone": trunk_dim, **{b: trunk.embed_dim for b in blocks}}
    else:
        blocks = {f"layer{i}": f"layer{i}" for i in range(1, 5)}
        dims = {"backbone": 2048, **{f"layer{i}": 256 * 2 ** (i - 1) for i in range(1, 5)}}
    mean, std = (None, None) if ckpt is not None and ckpt.unit_input else IMAGENET
    meta = _meta(
        ckpt, name, spec.method, spec.trunk, part=part or "teacher" if spec.method == "dino" else None
    )
    return NetEncoder(
        name,
        EncoderNet(trunk, head, loss_bn),
        blocks,
        input_size=224,
        mean=mean,
        std=std,
        meta=meta,
        random_weights=ckpt is None,
        transformer=is_vit,
        trunk_dims=dims,
    )


# ---- ssl-small --------------------------------------------------------------------------------------------------
def small_projector(in_dim: int, method: str, hidden: int = 512, out: int = 128) -> nn.Sequential:
    """ssl-small's head: Linear+BN+act+Linear (GELU for DINO, whose bottleneck this is)."""
    act = "gelu" if method == "dino" else "relu"
    return H.build_flat([H.linear(in_dim, hidden), H.bn(hidden), H.ACT, H.linear(hidden, out)], act)


def build_small(arg: str | None, weights: str | None, trust_checkpoint: bool) -> NetEncoder:
    """``ssl-small``: a file written by ``rcdm train-encoder`` (its sidecar gives method and input size)."""
    if weights is None:
        warn_random("ssl-small")
        trunk = small.SmallResNet()
        net = EncoderNet(trunk, small_projector(trunk.widths[-1], "simclr"))
        meta = _meta(
            None, "ssl-small", "none", "small-resnet", widths=list(trunk.widths), blocks=list(trunk.blocks)
        )
        return _small_encoder(net, small.DEFAULT_INPUT, SMALL_MEAN_STD, meta, random=True)
    ckpt = read_checkpoint(weights, trust_checkpoint)
    side = read_sidecar(weights) or {}
    if ckpt.layout not in ("rcdm-ssl", "torchvision-resnet") or ckpt.arch != "resnet-basic":
        raise ConfigError(
            f"{weights} is a {ckpt.layout} ({ckpt.arch}) checkpoint, not an ssl-small one; use "
            f"--encoder {LAYOUT_HINT.get(ckpt.layout, 'that matches the file')}"
        )
    widths, blocks = small.infer_arch(ckpt.trunk)
    trunk = small.SmallResNet(widths, blocks)
    load_strict(trunk, ckpt.trunk, f"{weights} (backbone)")
    method = str(side.get("method", "simclr"))
    head = _load_head(ckpt, "gelu" if method == "dino" else "relu", widths[-1])
    arch = side.get("architecture", {})
    mean_std = (tuple(arch["mean"]), tuple(arch["std"])) if arch.get("mean") else SMALL_MEAN_STD
    meta = _meta(ckpt, "ssl-small", method, "small-resnet", widths=list(widths), blocks=list(blocks))
    return _small_encoder(
        EncoderNet(trunk, head), int(arch.get("input_size", small.DEFAULT_INPUT)), mean_std, meta
    )


def _small_encoder(net, input_size, mean_std, meta, random=False) -> NetEncoder:
    widths = net.backbone.widths
    blocks = {f"layer{i}": f"layer{i}" for i in range(1, len(widths) + 1)}
    dims = {"backbone": widths[-1], **{f"layer{i + 1}": w for i, w in enumerate(widths)}}
    return NetEncoder(
        "ssl-small",
        net,
        blocks,
        input_size=input_size,
        mean=mean_std[0],
        std=mean_std[1],
        meta=meta,
        random_weights=random,
        trunk_dims=dims,
    )


# ---- timm: any model as a backbone ------------------------------------------------------------------------------
def build_timm(arg: str | None, weights: str | None, trust_checkpoint: bool) -> NetEncoder:
    """``timm:NAME``: ``timm.create_model(NAME, num_classes=0)``; a file goes through the model's own checkpoint
    filter (e.g. ViT position-embedding resampling) and then loads strictly; the classifier is ignored."""
    import timm

    try:
        model = timm.create_model(arg, pretrained=False, num_classes=0)
    except RuntimeError as exc:
        raise ConfigError(f"encoder timm:{arg}: {exc} (list names with timm.list_models())") from None
    meta = _meta(None, f"timm:{arg}", "timm", arg)
    if weights is None:
        warn_random(f"timm:{arg}")
    else:
        meta = _load_timm(model, arg, weights, trust_checkpoint)
    cfg = model.pretrained_cfg or {}
    mean, std = tuple(cfg.get("mean", IMAGENET[0])), tuple(cfg.get("std", IMAGENET[1]))
    size = int(cfg.get("input_size", (3, 224, 224))[-1])
    info = [i for i in (getattr(model, "feature_info", None) or []) if isinstance(i, dict) and "module" in i]
    blocks = {i["module"]: i["module"] for i in info}
    dims = {"backbone": int(model.num_features), **{i["module"]: int(i["num_chs"]) for i in info}}
    return NetEncoder(
        f"timm:{arg}",
        EncoderNet(model),
        blocks,
        input_size=size,
        mean=mean,
        std=std,
        resize_mode=cfg.get("interpolation", "bicubic")
        if cfg.get("interpolation") in ("bilinear", "bicubic")
        else "bicubic",
        meta=meta,
        random_weights=weights is None,
        trunk_dims=dims if all("num_chs" in i for i in info) else None,
        probe_size=size if cfg.get("fixed_input_size") else min(size, 64),
    )


def _load_timm(model: nn.Module, arg: str, weights: str, trust_checkpoint: bool) -> dict[str, Any]:
    obj = safe_load(weights, trust_checkpoint=trust_checkpoint)
    if not isinstance(obj, dict):
        raise CheckpointError(f"{weights} holds a {type(obj).__name__}, not a state dict")
    node, _, ignored = unwrap(obj, weights)
    state = {strip_prefixes(k, WRAPPER_PREFIXES): v for k, v in node.items()}
    filter_fn = getattr(sys.modules.get(type(model).__module__), "checkpoint_filter_fn", None)
    if filter_fn is not None:
        try:
            state = filter_fn(state, model)
        except Exception as exc:
            raise CheckpointError(f"{weights}: timm's checkpoint filter for {arg} failed ({exc})") from None
    classifier = (model.pretrained_cfg or {}).get("classifier") or ()
    classifier = (classifier,) if isinstance(classifier, str) else tuple(classifier)
    own = model.state_dict()
    for key in list(state):
        if key not in own and any(key.startswith(c + ".") for c in classifier):
            ignored.append(key)
            del state[key]
    load_strict(model, state, f"{weights} (timm {arg})")
    return {
        "weights": weights,
        "sha256": sha256_file(weights),
        "layout": "timm",
        "ignored": ignored,
        "method": "timm",
        "architecture": arg,
    }


# ---- CLIP via open_clip -----------------------------------------------------------------------------------------
def build_clip(arg: str | None, weights: str | None, trust_checkpoint: bool) -> NetEncoder:
    """``clip:NAME``: the image tower of ``open_clip.create_model_and_transforms(NAME, pretrained=FILE)``."""
    import open_clip

    if weights is not None:
        safe_load(
            weights, trust_checkpoint=trust_checkpoint
        )  # refuses code-running pickles before open_clip reads
    try:
        model = open_clip.create_model(arg, pretrained=weights, weights_only=not trust_checkpoint)
    except RuntimeError as exc:
        msg = str(exc).splitlines()[0]
        if "not found" in msg.lower():
            raise ConfigError(f"encoder clip:{arg}: {msg}; names: open_clip.list_models()") from None
        raise CheckpointError(f"{weights}: open_clip could not load it into {arg} ({msg})") from None
    if weights is None:
        warn_random(f"clip:{arg}")
    else:  # open_clip loads the file itself: check what it loaded
        check_finite(model.visual.state_dict(), f"{weights} (clip:{arg} image tower)")
    visual = model.visual
    mean = tuple(getattr(visual, "image_mean", None) or CLIP_MEAN_STD[0])
    std = tuple(getattr(visual, "image_std", None) or CLIP_MEAN_STD[1])
    size = visual.image_size
    size = int(size[0] if isinstance(size, (tuple, list)) else size)
    if hasattr(visual, "transformer"):
        blocks = {
            f"blocks.{i}": f"transformer.resblocks.{i}" for i in range(len(visual.transformer.resblocks))
        }
    else:
        blocks = {f"layer{i}": f"layer{i}" for i in range(1, 5) if hasattr(visual, f"layer{i}")}
    meta = {
        "weights": weights,
        "sha256": sha256_file(weights) if weights else None,
        "layout": "open_clip" if weights else "random",
        "ignored": ["text tower (not built into the encoder)"],
        "method": "clip",
        "architecture": arg,
    }
    return NetEncoder(
        f"clip:{arg}",
        EncoderNet(visual),
        blocks,
        input_size=size,
        mean=mean,
        std=std,
        meta=meta,
        random_weights=weights is None,
        probe_size=size,
        transformer=hasattr(visual, "transformer"),
    )


def named_factory(name: str):
    def factory(arg: str | None, weights: str | None, trust_checkpoint: bool = False) -> NetEncoder:
        return build_named(name, arg, weights, trust_checkpoint)

    return factory
