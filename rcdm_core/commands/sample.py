"""``rcdm sample``: samples from a denoiser checkpoint, conditioned on images or on saved representations.

Each condition gets ``--n`` samples; row r of the whole run (condition r // n) uses sample id r, so a sample does
not depend on the batch size or on the number of ranks. Under torchrun the rows are split over ranks and rank 0
writes: ``samples.pt`` (pixels in [0, 1], the conditions, ids and settings) and one grid per condition
(the original when there is one, then its samples), drawn by the same code as the ``samples`` probe.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from .. import dist
from ..errors import ConfigError, DataError
from ..images import save_rows, to_pixels
from ..io import atomic_torch_save, atomic_write_json, safe_load
from ..paths import safe_join
from ..progress import bar
from ..records import CommandRecord

MAX_OVERVIEW_ROWS = 16


def _add(p) -> None:
    p.add_argument("--checkpoint", required=True, help="denoiser checkpoint (model/ema .pt or .safetensors)")
    src = p.add_argument_group("condition on images (encode them) or on saved vectors")
    src.add_argument("--data", help="image source: builtin:photos, folder:PATH, idx:PATH, ...")
    src.add_argument(
        "--n-images", type=int, default=None, help="take at most this many images (or --cond rows)"
    )
    src.add_argument("--cond", help="a representation file from `rcdm encode` (ids, features (N, D), meta)")
    src.add_argument(
        "--encoder", help="encoder for --data (default: the one the checkpoint's sidecar records)"
    )
    src.add_argument("--weights", help="encoder weights file")
    src.add_argument(
        "--layer", help="backbone, projector, block:NAME[:avg|:cls] (default: sidecar, else backbone)"
    )
    src.add_argument(
        "--input-norm", choices=["own", "rcdm"], help="encoder input convention (default: sidecar)"
    )
    p.add_argument(
        "--sampler", default="ddpm:100", help="ddpm:N, ddim:N[,eta=..], dpm-solver++:N, or 100 / ddim25"
    )
    # --n-samples: the same, for launchers (torchrun) whose own options --n would abbreviate
    p.add_argument(
        "--n", "--n-samples", dest="n", type=int, default=8, help="samples per condition (default 8)"
    )
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--batch-size", type=int, default=16, help="rows per denoiser batch (default 16)")
    p.add_argument("--precision", choices=["fp32", "bf16", "fp16"], default="fp32", help="autocast dtype")
    p.add_argument("--compile", action="store_true", help="torch.compile the denoiser")
    p.add_argument("--channels-last", action="store_true", help="channels_last memory format")


def _sidecar_encoder(sidecar: dict[str, Any]) -> dict[str, Any]:
    """What the checkpoint's sidecar says about its encoder: a dict (rep.meta()) or flat keys."""
    enc = sidecar.get("encoder")
    info = dict(enc) if isinstance(enc, dict) else {"encoder": enc}
    for key in ("weights", "layer", "input_norm"):
        if info.get(key) is None and sidecar.get(key) is not None:
            info[key] = sidecar[key]
    return {k: v for k, v in info.items() if v is not None}


def _conditions_from_file(path: str, denoiser, checkpoint: str) -> tuple[list[str], torch.Tensor, None]:
    obj = safe_load(path)
    feats = obj.get("features") if isinstance(obj, dict) else obj
    if not isinstance(feats, torch.Tensor) or feats.ndim != 2:
        raise DataError(f"--cond {path}: expected an `rcdm encode` file holding features (N, D)")
    feats = feats.float()
    if len(feats) == 0:
        raise DataError(f"--cond {path}: holds no vectors")
    if feats.shape[1] != denoiser.cond_dim:
        raise ConfigError(
            f"--cond {path}: vectors have dimension {feats.shape[1]} but checkpoint {checkpoint} expects "
            f"cond_dim {denoiser.cond_dim}"
        )
    bad = (~torch.isfinite(feats)).any(dim=1).nonzero().flatten().tolist()
    if bad:
        raise DataError(f"--cond {path}: rows {bad[:5]} hold NaN or inf values; cannot sample from them")
    ids = obj.get("ids") if isinstance(obj, dict) else None
    ids = (
        [str(i) for i in ids]
        if ids is not None and len(ids) == len(feats)
        else [f"cond{i}" for i in range(len(feats))]
    )
    return ids, feats, None


def _conditions_from_images(args, denoiser, device) -> tuple[list[str], torch.Tensor, torch.Tensor]:
    from ..api import load_encoder
    from ..data import load_images

    side = _sidecar_encoder(getattr(denoiser, "sidecar", {}) or {})
    encoder = args.encoder or side.get("encoder")
    if not encoder:
        raise ConfigError(
            f"--data needs --encoder NAME: checkpoint {args.checkpoint} has no sidecar naming its encoder"
        )
    weights = args.weights if args.encoder else (args.weights or side.get("weights"))
    layer = args.layer or side.get("layer") or "backbone"
    input_norm = args.input_norm or side.get("input_norm") or "own"
    rep = load_encoder(encoder, weights, layer, input_norm, args.trust_checkpoint, device)
    if rep.dim != denoiser.cond_dim:
        raise ConfigError(
            f"checkpoint {args.checkpoint} expects cond_dim {denoiser.cond_dim} but layer {layer!r} of {encoder} "
            f"gives {rep.dim}"
        )
    ids, pixels = load_images(args.data, limit=args.n_images, size=int(denoiser.image_size))
    cond = rep.encode(pixels.to(device), batch_size=args.batch_size).float()
    if not torch.isfinite(cond).all():
        raise DataError(f"encoder {encoder} gave NaN or inf representations for --data {args.data}")
    return ids, cond, pixels


def _configure_sampler(args):
    from ..api import get_sampler

    sampler = get_sampler(args.sampler)
    for attr, value in (
        ("precision", args.precision),
        ("compile", args.compile),
        ("channels_last", args.channels_last),
    ):
        if hasattr(sampler, attr):
            setattr(sampler, attr, value)
    return sampler


def _sample_rows(args, sampler, denoiser, cond: torch.Tensor, device) -> torch.Tensor:
    """This rank's rows of the whole run -> samples (rows, C, S, S) in [-1, 1] on ``device``."""
    total = len(cond) * args.n
    mine = list(dist.shard(total))
    out = []
    progress = not args.no_progress
    batches = range(0, len(mine), args.batch_size)
    for start in bar(batches, desc="batches", progress=progress and len(batches) > 1):
        rows = mine[start : start + args.batch_size]
        c = cond[[r // args.n for r in rows]].to(device)
        # a sampler without its own precision setting runs under autocast here
        use_autocast = args.precision != "fp32" and not hasattr(sampler, "precision")
        dtype = torch.bfloat16 if args.precision == "bf16" else torch.float16
        with torch.autocast(device.type, dtype=dtype, enabled=use_autocast):
            x = sampler.sample(denoiser, c, seed=args.seed, sample_ids=rows, progress=progress)
        out.append(x.float())
    if not out:
        s = int(denoiser.image_size)
        return torch.zeros(0, int(getattr(denoiser, "in_channels", 3)), s, s, device=device)
    return torch.cat(out)


def _write(args, ids, cond, originals, samples: torch.Tensor, sampler) -> Path:
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    pixels = to_pixels(samples).cpu().view(len(ids), args.n, *samples.shape[1:])
    rows = []
    for i, image_id in enumerate(ids):
        row = pixels[i] if originals is None else torch.cat([originals[i : i + 1].cpu(), pixels[i]])
        path = safe_join(out / "grids", image_id, ".png")
        path.parent.mkdir(parents=True, exist_ok=True)
        save_rows([row], path)
        rows.append(row)
    save_rows(rows[:MAX_OVERVIEW_ROWS], out / "grid.png")
    settings = {
        "checkpoint": str(args.checkpoint),
        "sampler": args.sampler,
        "sampler_resolved": sampler.describe() if hasattr(sampler, "describe") else args.sampler,
        "num_calls": sampler.num_calls,
        "seed": args.seed,
        "n": args.n,
        "source": args.cond or args.data,
        "precision": args.precision,
    }
    atomic_torch_save(
        {"ids": list(ids), "samples": pixels, "cond": cond.cpu(), "settings": settings}, out / "samples.pt"
    )
    atomic_write_json(out / "settings.json", settings)
    return out


def _run(args) -> int:
    from ..api import load_denoiser
    from ..noise import seed_everything

    if (args.data is None) == (args.cond is None):
        raise ConfigError(
            "give exactly one of --data SRC (images to encode) or --cond FILE.pt (saved vectors)"
        )
    if args.n < 1 or args.batch_size < 1 or (args.n_images is not None and args.n_images < 1):
        raise ConfigError(
            f"--n, --batch-size and --n-images must be at least 1 (got {args.n}, {args.batch_size}, {args.n_images})"
        )
    device = dist.resolve_device(args.device)
    started = dist.init_from_env(device)
    seed_everything(args.seed)
    sampler = _configure_sampler(args)
    denoiser = load_denoiser(args.checkpoint, trust_checkpoint=args.trust_checkpoint, device=device)
    if args.cond:
        ids, cond, originals = _conditions_from_file(args.cond, denoiser, args.checkpoint)
        if args.n_images is not None:
            ids, cond = ids[: args.n_images], cond[: args.n_images]
    else:
        ids, cond, originals = _conditions_from_images(args, denoiser, device)
    samples = _sample_rows(args, sampler, denoiser, cond.to(device), device)
    samples = dist.gather_cat(samples, len(cond) * args.n)
    if dist.is_main():
        out = _write(args, ids, cond, originals, samples, sampler)
        print(
            f"{len(ids)} condition(s) x {args.n} samples ({sampler.num_calls} denoiser calls each) -> {out}"
        )
    dist.barrier()
    if started:
        import torch.distributed as tdist

        tdist.destroy_process_group()
    return 0


COMMAND = CommandRecord(
    name="sample",
    help="draw samples from a denoiser checkpoint conditioned on images or on saved representations",
    add_arguments=_add,
    run=_run,
    example="rcdm sample --checkpoint ema_0.9999_010000.pt --encoder ssl-small --weights enc.pt --layer backbone "
    "--data builtin:photos --n-images 4 --sampler ddim:25 --n 8 --out samples/",
)
