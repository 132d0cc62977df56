"""``rcdm encode``: images -> representation file ``{ids, features (N, D), meta}`` (also the training cache).

Batched, in inference mode, channels_last for convolutional encoders on CUDA, with a progress bar. Under
torchrun each rank encodes every world-th image and rank 0 gathers them back into source order and writes.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Any

import numpy as np
import torch

from .. import dist
from ..api import load_encoder
from ..data import open_source
from ..errors import DataError
from ..images import arrays_to_pixels, encoder_input
from ..interfaces import Representation
from ..progress import bar
from ..records import CommandRecord, Features


def _add(p) -> None:
    p.add_argument(
        "--encoder", required=True, help="registered encoder, e.g. dino-resnet50, timm:resnet18, ssl-small"
    )
    p.add_argument("--weights", help="encoder weights file (layout detected from the file)")
    p.add_argument(
        "--layer", default="backbone", help="backbone, projector, projector_bn, block:NAME[:avg|:cls]"
    )
    p.add_argument(
        "--input-norm",
        default="own",
        choices=["own", "rcdm"],
        help="own: the weights' convention; rcdm: [-1,1] 224 crops as the released RCDMs",
    )
    p.add_argument("--data", required=True, help="image source: builtin:photos, folder:PATH, ...")
    p.add_argument("--out", required=True, help="output .pt file")
    p.add_argument("--batch-size", type=int, default=64, help="images per forward pass (default 64)")
    p.add_argument("--limit", type=int, default=None, help="encode at most this many images")


def prepare(rep: Representation) -> Representation:
    """Inference settings: eval mode, channels_last for conv nets on CUDA (the faster cuDNN layout)."""
    rep.encoder.module.eval()
    if rep.device.type == "cuda" and not getattr(rep.encoder, "transformer", False):
        rep.encoder.module.to(memory_format=torch.channels_last)
    return rep


def input_side(rep: Representation) -> int:
    return 224 if rep.input_norm == "rcdm" else int(rep.encoder.input_size)


def encode_arrays(
    rep: Representation,
    items: Iterable[tuple[int, str, np.ndarray]],
    batch_size: int,
    total: int | None = None,
    progress: bool = True,
) -> tuple[list[int], list[str], torch.Tensor]:
    """(position, id, uint8 (H, W, 3)) items -> (positions, ids, features (N, D) float32 on the CPU).

    Each image gets the one shared resize (short side + centre crop) on the CPU, then batches are encoded.
    """
    side, mode = input_side(rep), rep.encoder.resize_mode
    positions: list[int] = []
    ids: list[str] = []
    out: list[torch.Tensor] = []
    pending: list[torch.Tensor] = []

    def flush() -> None:
        if pending:
            out.append(rep.encode(torch.cat(pending), batch_size=batch_size).cpu())
            pending.clear()

    with bar(
        total=total, desc=f"encode {rep.encoder.name} {rep.layer}", progress=progress, unit="img"
    ) as pbar:
        for pos, image_id, arr in items:
            pending.append(encoder_input(arrays_to_pixels([np.ascontiguousarray(arr)]), side, mode=mode))
            positions.append(pos)
            ids.append(image_id)
            if len(pending) == batch_size:
                flush()
            pbar.update(1)
        flush()
    feats = torch.cat(out) if out else torch.zeros(0, rep.dim)
    return positions, ids, feats


def _my_share(source: Iterable[tuple[str, Any]], limit: int | None) -> Iterator[tuple[int, str, Any]]:
    """This rank's images: every world-th one, so ranks split any source without knowing its length."""
    rank, world = dist.rank(), dist.world_size()
    for pos, (image_id, arr) in enumerate(source):
        if limit is not None and pos >= limit:
            return
        if pos % world == rank:
            yield pos, image_id, arr


def _gather(positions: list[int], ids: list[str], feats: torch.Tensor) -> tuple[list[str], torch.Tensor]:
    """Every rank's share -> (ids, features) in source order (on every rank)."""
    if not dist.is_distributed():
        return ids, feats
    parts: list[Any] = [None] * dist.world_size()
    torch.distributed.all_gather_object(parts, (positions, ids, feats))
    rows = sorted((p, i, f) for ps, is_, fs in parts for p, i, f in zip(ps, is_, fs))
    if not rows:
        return [], feats[:0]
    return [i for _, i, _ in rows], torch.stack([f for _, _, f in rows])


def _run(args) -> int:
    device = dist.resolve_device(args.device)
    dist.init_from_env(device)
    rep = prepare(
        load_encoder(args.encoder, args.weights, args.layer, args.input_norm, args.trust_checkpoint, device)
    )
    source = open_source(args.data)
    total = len(source) if hasattr(source, "__len__") else None
    if total is not None and args.limit is not None:
        total = min(total, args.limit)
    share = None if total is None else len(range(dist.rank(), total, dist.world_size()))
    positions, ids, feats = encode_arrays(
        rep, _my_share(source, args.limit), args.batch_size, share, not args.no_progress
    )
    ids, feats = _gather(positions, ids, feats)
    if not ids:
        raise DataError(f"data source {args.data!r} yielded no images")
    if dist.is_main():
        meta = {
            **rep.meta(),
            "data": args.data,
            "n": len(ids),
            "layout": rep.encoder.meta.get("layout"),
            "ignored": rep.encoder.meta.get("ignored", []),
        }
        Features(ids, feats, meta).save(args.out)
        note = " (RANDOM encoder weights)" if rep.encoder.random_weights else ""
        print(f"wrote {args.out}: {len(ids)} x {feats.shape[1]} features, layer {args.layer}{note}")
    dist.barrier()
    return 0


COMMAND = CommandRecord(
    name="encode",
    help="encode images with an encoder layer -> {ids, features (N, D), meta} .pt file",
    add_arguments=_add,
    run=_run,
    example="rcdm encode --encoder dino-resnet50 --weights dino_resnet50_pretrain.pth --layer backbone "
    "--data folder:imgs --out feats.pt",
)
