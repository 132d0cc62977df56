"""``rcdm train``: train a representation-conditional denoiser on a frozen encoder's representations.

Two views of each image (the diffusion size and the encoder's size, from one short-side resize + centre crop,
sharing one random horizontal flip); the frozen encoder turns the encoder view into the condition, computed
once for both flips and cached with ``--cache-cond``. The hybrid loss (rcdm_core.diffusion) trains the
denoiser through the shared loop (rcdm_core.training): AdamW, EMA, checkpoints in the official names, resume,
DDP under torchrun. ``--batch-size`` is the GLOBAL batch (the official --batch_size is per GPU).
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import torch

from .. import dist
from ..api import build_denoiser, load_denoiser, load_encoder
from ..config import parse_bool
from ..data import load_images
from ..diffusion import Diffusion
from ..errors import ConfigError
from ..images import encoder_input
from ..interfaces import ConditionalDenoiser, Representation
from ..io import safe_load
from ..records import CommandRecord, Features
from ..training import BatchIndexer, TrainConfig, example_generator, train

CACHE_NAME = "cond_cache.pt"

# Denoiser flags (official names); only those given reach the factory, the rest take its defaults.
MODEL_FLAGS: dict[str, tuple[type, str]] = {
    "image_size": (int, "image side in pixels (default 128)"),
    "num_channels": (int, "base channels (default 256)"),
    "num_res_blocks": (int, "res blocks per level (default 2)"),
    "channel_mult": (str, "per-level channel multipliers, e.g. 1,2,2 (default: by image size)"),
    "attention_resolutions": (str, "pixel sizes with attention, e.g. 32,16,8 (default)"),
    "num_heads": (int, "attention heads (default 4)"),
    "num_head_channels": (int, "channels per head; overrides --num-heads (default -1: off)"),
    "num_heads_upsample": (int, "heads in the decoder (default -1: as --num-heads)"),
    "use_new_attention_order": ("bool", "split q, k, v before the heads (default False, the release)"),
    "learn_sigma": ("bool", "learn the variance: 6 output channels (default True)"),
    "use_scale_shift_norm": ("bool", "GroupNorm scale-shift conditioning (default True)"),
    "resblock_updown": ("bool", "resample inside ResBlocks (default True)"),
    "dropout": (float, "dropout in ResBlocks (default 0)"),
    "use_checkpoint": ("bool", "gradient checkpointing: less memory, ~30%% more compute (default False)"),
    "diffusion_steps": (int, "T (default 1000)"),
    "noise_schedule": (str, "linear or cosine (default linear)"),
    "norm_groups": (
        int,
        "GroupNorm groups (default 32, the release); below 128 channels give fewer, e.g. 8 at 32: "
        "with one channel per group no per-image constant such as the colour reaches the output",
    ),
}


def _bool(text: str) -> bool:
    return parse_bool(text, "a boolean model flag")


def _add(p) -> None:
    enc = p.add_argument_group("the frozen encoder")
    enc.add_argument(
        "--encoder", required=True, help="registered encoder name, e.g. dino-resnet50, ssl-small"
    )
    enc.add_argument("--weights", help="encoder weights file (layout detected from the file)")
    enc.add_argument("--layer", default="backbone", help="backbone, projector, block:NAME (default backbone)")
    enc.add_argument(
        "--input-norm",
        choices=["own", "rcdm"],
        default="own",
        help="encoder input: its own convention, or [-1, 1] 224 crops as the released RCDMs",
    )
    p.add_argument("--data", required=True, help="training images: builtin:photos, folder:PATH, idx:PATH")
    p.add_argument("--n-images", type=int, default=None, help="use at most this many images")
    p.add_argument("--out", required=True, help="run folder for checkpoints, sidecars and losses.csv")
    m = p.add_argument_group("denoiser flags (official names; --num_channels and --num-channels both work)")
    for name, (kind, help_) in MODEL_FLAGS.items():
        typ = _bool if kind == "bool" else kind
        extra: dict[str, Any] = {"nargs": "?", "const": True} if kind == "bool" else {}
        m.add_argument("--" + name.replace("_", "-"), type=typ, default=None, help=help_, **extra)
    t = p.add_argument_group("training")
    t.add_argument(
        "--steps", type=int, default=10000, help="train until this many optimizer steps (default 10000)"
    )
    t.add_argument(
        "--batch-size",
        type=int,
        default=16,
        help="GLOBAL batch over all processes (default 16; the official --batch_size was per GPU)",
    )
    t.add_argument("--lr", type=float, default=1e-4, help="AdamW learning rate (default 1e-4)")
    t.add_argument("--weight-decay", type=float, default=0.0, help="AdamW weight decay (default 0)")
    t.add_argument("--ema-rate", default="0.9999", help="EMA rate(s), comma-separated (default 0.9999)")
    t.add_argument(
        "--grad-clip", type=float, default=None, help="clip the global gradient norm (default off)"
    )
    t.add_argument(
        "--precision",
        choices=["fp32", "bf16", "fp16"],
        default="fp32",
        help="autocast dtype; fp16 uses loss scaling with a NaN guard (default fp32)",
    )
    t.add_argument(
        "--save-interval", type=int, default=10000, help="checkpoint every K steps (default 10000)"
    )
    t.add_argument("--log-interval", type=int, default=10, help="a losses.csv row every K steps (default 10)")
    t.add_argument(
        "--resume", action="store_true", help="continue from the newest complete checkpoint in --out"
    )
    t.add_argument(
        "--p2-gamma",
        type=float,
        default=0.0,
        help="P2 loss weighting 1/(k+SNR)^gamma on the mse term (Choi et al. 2022): trains the noisy steps "
        "that decide colour and layout harder; 0 = off, the official loss (default 0)",
    )
    t.add_argument("--p2-k", type=float, default=1.0, help="the k of --p2-gamma's weighting (default 1)")
    t.add_argument("--init", help="start from this denoiser checkpoint (fine-tuning, e.g. a released RCDM)")
    t.add_argument(
        "--cache-cond",
        action="store_true",
        help="encode every image once (both flips) and reuse the vectors: much faster on CPU",
    )


def model_flags(args) -> dict[str, Any]:
    return {name: getattr(args, name) for name in MODEL_FLAGS if getattr(args, name, None) is not None}


def build_model(args, rep: Representation, device: torch.device) -> ConditionalDenoiser:
    """A fresh denoiser for the representation, or ``--init``'s weights (cond_dim must match the layer)."""
    flags = model_flags(args)
    if args.init:
        model = load_denoiser(args.init, trust_checkpoint=args.trust_checkpoint, **flags)
        if model.cond_dim != rep.dim:
            raise ConfigError(
                f"--init {args.init} has cond_dim {model.cond_dim} but layer {rep.layer!r} of encoder "
                f"{args.encoder} gives {rep.dim}-d vectors; choose the layer the checkpoint was trained on"
            )
        # training-only flags are not in a checkpoint: apply them to the loaded model
        for module in model.modules():
            if hasattr(module, "use_checkpoint"):
                module.use_checkpoint = bool(flags.get("use_checkpoint", False))
            if isinstance(module, torch.nn.Dropout) and "dropout" in flags:
                module.p = float(flags["dropout"])
    else:
        model = build_denoiser("adm", **flags, cond_dim=rep.dim)
    return model.to(device).train()


def _encode_views(rep: Representation, pixels: torch.Tensor, batch: int = 64) -> torch.Tensor:
    """(N, 3, S, S) [0, 1] -> (N, D) float32 on the representation's device (a normal, not an inference tensor)."""
    return rep.encode(pixels, batch_size=batch).clone()


def cached_conditions(
    rep: Representation, ids: list[str], pixels: torch.Tensor, meta: dict, path: Path
) -> torch.Tensor:
    """(2N, D): rows 0..N-1 unflipped, N..2N-1 flipped; read from ``path`` when its meta matches, else encoded
    (sharded over ranks) and written by rank 0 in the ``rc.Features`` format."""
    want_ids = ids + [i + "|flip" for i in ids]
    if path.exists():
        obj = safe_load(path)
        if obj.get("meta") == meta and list(obj.get("ids", [])) == want_ids:
            print(f"rcdm: using cached conditions {path}", file=sys.stderr) if dist.is_main() else None
            return obj["features"].float().to(rep.device)
    both = torch.cat([pixels, pixels.flip(-1)])
    part = dist.shard(len(both))
    local = (
        _encode_views(rep, both[part.start : part.stop])
        if len(part)
        else torch.zeros(0, rep.dim, device=rep.device)
    )
    feats = dist.gather_cat(local.to(rep.device), len(both))
    if dist.is_main():
        Features(want_ids, feats.cpu(), meta).save(path)
    dist.barrier()
    return feats


class DenoiserTask:
    """The batches and the loss of ``rcdm train`` (see rcdm_core.training for the contract)."""

    def __init__(self, args, rep: Representation, model: ConditionalDenoiser, device: torch.device):
        self.rep, self.device, self.seed = rep, device, int(args.seed)
        self.size = int(model.image_size)
        self.learn_sigma = bool(model.learn_sigma)
        if args.p2_gamma < 0 or args.p2_k <= 0:
            raise ConfigError(f"--p2-gamma must be >= 0 and --p2-k > 0, got {args.p2_gamma} and {args.p2_k}")
        self.p2 = {"p2_gamma": float(args.p2_gamma), "p2_k": float(args.p2_k)}
        self.diffusion = Diffusion.from_flags(model.diffusion_steps, model.noise_schedule)
        enc_size = 224 if rep.input_norm == "rcdm" else int(getattr(rep.encoder, "input_size", 224))
        self.ids, pixels = load_images(args.data, limit=args.n_images, size=max(self.size, enc_size))
        self.small = encoder_input(pixels, self.size).to(device) * 2 - 1  # diffusion view, [-1, 1]
        self.global_batch = int(args.batch_size)
        self.indexer = BatchIndexer(len(self.ids), self.global_batch, seed=self.seed)
        self.cache: torch.Tensor | None = None
        self.pixels: torch.Tensor | None = None
        if args.cache_cond:
            meta = {**rep.meta(), "data": args.data, "n_images": len(self.ids), "load_size": pixels.shape[-1]}
            self.cache = cached_conditions(rep, self.ids, pixels, meta, Path(args.out) / CACHE_NAME)
        else:
            self.pixels = pixels

    def get_batch(self, step: int) -> dict[str, torch.Tensor]:
        """This rank's share of step ``step``: x0 (n, 3, S, S) in [-1, 1], cond (n, D), positions (n,)."""
        idx = self.indexer.local_indices(step)
        per = len(idx)
        positions = torch.arange(per) + dist.rank() * per  # position in the global batch: keys the randomness
        flips = torch.tensor(
            [
                bool(torch.randint(2, (1,), generator=example_generator(self.seed, step, int(p), "flip")))
                for p in positions
            ]
        )
        x0 = self.small[idx.to(self.device)]
        x0 = torch.where(flips.to(self.device)[:, None, None, None], x0.flip(-1), x0)
        if self.cache is not None:
            cond = self.cache[(idx + flips.long() * len(self.ids)).to(self.cache.device)]
        else:
            view = self.pixels[idx]
            view = torch.where(flips[:, None, None, None], view.flip(-1), view)
            cond = _encode_views(self.rep, view)
        return {"x0": x0, "cond": cond.to(self.device), "positions": positions}

    def loss(self, model, batch: dict[str, torch.Tensor], step: int) -> tuple[torch.Tensor, dict[str, float]]:
        """Mean hybrid loss over the local batch; t and noise per example keyed on (seed, step, position)."""
        x0 = batch["x0"]
        ts, noises = [], []
        for p in batch["positions"].tolist():
            gen = example_generator(self.seed, step, p, "diffusion")
            ts.append(self.diffusion.sample_timesteps(1, gen))
            noises.append(torch.randn(x0.shape[1:], generator=gen))
        t = torch.cat(ts).to(self.device)
        noise = torch.stack(noises).to(self.device)
        terms = self.diffusion.training_losses(
            model, x0, t, batch["cond"], noise, learn_sigma=self.learn_sigma, **self.p2
        )
        loss = terms["loss"].mean()
        return loss, {"mse": float(terms["mse"].detach().mean()), "vb": float(terms["vb"].detach().mean())}


def _ema_rates(text: str) -> tuple[float, ...]:
    try:
        return tuple(float(r) for r in str(text).split(",") if r.strip())
    except ValueError:
        raise ConfigError(f"--ema-rate {text!r}: give numbers like 0.9999 or 0.999,0.9999") from None


def _run(args) -> int:
    from ..dist import init_from_env, resolve_device

    device = resolve_device(args.device)
    init_from_env(device)
    torch.manual_seed(args.seed)  # fresh weights are the same on every rank and every run
    rep = load_encoder(args.encoder, args.weights, args.layer, args.input_norm, args.trust_checkpoint, device)
    model = build_model(args, rep, device)
    task = DenoiserTask(args, rep, model, device)
    sidecar = {
        "denoiser": "adm",
        "flags": {k: v for k, v in model.flags.items() if k != "use_checkpoint"},
        "diffusion": {"diffusion_steps": model.diffusion_steps, "noise_schedule": model.noise_schedule,
                      "learn_sigma": model.learn_sigma, "timestep_respacing": ""},
        "encoder": args.encoder, "weights": args.weights, "weights_sha256": rep.encoder.meta.get("sha256"),
        "layer": args.layer, "input_norm": args.input_norm, "cond_dim": rep.dim,
        "data": args.data, "n_images": len(task.ids), "init": args.init, "seed": args.seed,
        "loss": {"hybrid": task.learn_sigma, **task.p2},
        "command": "rcdm " + " ".join(sys.argv[1:]) if sys.argv[1:2] == ["train"] else "rcdm train",
    }  # fmt: skip
    cfg = TrainConfig(
        out_dir=args.out, steps=args.steps, global_batch=args.batch_size, lr=args.lr, weight_decay=args.weight_decay,
        ema_rates=_ema_rates(args.ema_rate), grad_clip=args.grad_clip, precision=args.precision,
        save_interval=args.save_interval, log_interval=args.log_interval, resume=args.resume, seed=args.seed,
        desc="rcdm train",
    )  # fmt: skip
    result = train(model, task.loss, task.get_batch, cfg, sidecar)
    if dist.is_main():
        last = result.rows[-1] if result.rows else {}
        print(f"trained to step {result.step}: loss {last.get('loss', float('nan')):.4f}; "
              f"{len(result.files)} files written to {args.out}"
              + (f"; {result.skipped_steps} steps skipped (NaN/inf)" if result.skipped_steps else ""))  # fmt: skip
    return 0


COMMAND = CommandRecord(
    name="train",
    help="train a representation-conditional denoiser (ADM UNet) on a frozen encoder",
    description="Train a representation-conditional denoiser on a frozen encoder's representations. "
    "--batch-size is the GLOBAL batch over all processes (the official --batch_size was per GPU); the same "
    "command under torchrun --nproc_per_node N trains with DDP.",
    add_arguments=_add,
    run=_run,
    example="rcdm train --encoder ssl-small --weights enc.pt --layer backbone --data builtin:photos?size=32 "
    "--out runs/rcdm32 --image_size 32 --num_channels 64 --channel_mult 1,2,2 --attention_resolutions 16,8 "
    "--num_head_channels 32 --steps 2000 --batch_size 32 --save_interval 500 --cache-cond",
)
