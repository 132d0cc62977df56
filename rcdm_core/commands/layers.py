"""``rcdm layers``: the layers an encoder (with its weights) offers and their dimensions."""

from __future__ import annotations

import json
from pathlib import Path

from ..errors import CheckpointError
from ..plugins import get_manager
from ..records import CommandRecord


def _add(p) -> None:
    p.add_argument("--encoder", required=True, help="registered encoder, e.g. dino-vits16, clip:ViT-B-32")
    p.add_argument("--weights", help="encoder weights file (without it: random weights, said loudly)")
    p.add_argument("--json", action="store_true", help="machine-readable listing")


def list_layers(encoder) -> dict[str, int]:
    """Every selectable layer spec for this encoder -> its dimension, from every registered layer selector."""
    m = get_manager()
    out: dict[str, int] = {}
    for name in m.names("layer"):
        out.update(m.registry["layer"][name].factory().names(encoder))
    return out


def _run(args) -> int:
    if args.weights is not None and not Path(args.weights).exists():
        raise CheckpointError(f"--weights {args.weights}: no such file")
    rec, arg = get_manager().get("encoder", args.encoder)
    encoder = rec.factory(arg, args.weights, args.trust_checkpoint)
    layers = list_layers(encoder)
    meta = encoder.meta
    if args.json:
        print(
            json.dumps(
                {
                    "encoder": args.encoder,
                    "weights": args.weights,
                    "random_weights": encoder.random_weights,
                    "layout": meta.get("layout"),
                    "input_size": encoder.input_size,
                    "mean": encoder.mean,
                    "std": encoder.std,
                    "ignored": meta.get("ignored", []),
                    "layers": layers,
                },
                indent=2,
            )
        )
        return 0
    norm = "[0, 1], no mean/std" if encoder.mean is None else f"mean {encoder.mean} std {encoder.std}"
    print(f"encoder {args.encoder}: {'RANDOM WEIGHTS' if encoder.random_weights else args.weights}")
    print(f"layout {meta.get('layout')}; input {encoder.input_size} px, {norm}")
    if meta.get("ignored"):
        print(f"ignored on purpose: {', '.join(map(str, meta['ignored']))}")
    width = max(len(n) for n in layers) if layers else 5
    for name, dim in layers.items():
        print(f"  {name:<{width}}  {dim}")
    return 0


COMMAND = CommandRecord(
    name="layers",
    help="list an encoder's selectable layers and their dimensions",
    add_arguments=_add,
    run=_run,
    example="rcdm layers --encoder dino-vits16 --weights dino_deitsmall16_pretrain.pth",
)
