"""``rcdm train-encoder``: train ``ssl-small`` with SimCLR, VICReg, Barlow Twins or DINO through the one loop.

The loop (``rcdm_core.training.train``) does AdamW, checkpoints, resume and DDP; this module supplies the
model (student, and for DINO an EMA teacher, prototypes and centre, all in one module so they are checkpointed
and resumed together), the batches (two augmented views per image from ``rcdm_core.augment.SSLAugment``, each
image's randomness keyed on (seed, step, image)) and the loss. At the end it exports the representation network
(DINO: the teacher) as ``ssl_small_<method>.pt`` with a JSON sidecar; ``--encoder ssl-small --weights`` reads it.
"""

from __future__ import annotations

import copy
import sys
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

import rcdm_core as rc
from rcdm_core import dist
from rcdm_core.augment import SSLAugment
from rcdm_core.data import load_images
from rcdm_core.errors import ConfigError
from rcdm_core.io import atomic_torch_save, atomic_write_json
from rcdm_core.training import BatchIndexer, TrainConfig, example_generator, train

from . import objectives as O
from .encoders import EncoderNet
from .factories import SMALL_MEAN_STD, small_projector
from .small import SmallResNet

METHODS = ("simclr", "vicreg", "barlow-twins", "dino")


class SSLModel(nn.Module):
    """Student EncoderNet (+ DINO: normalised prototypes, an EMA teacher and the centre).

    ``forward(v1, v2) -> (loss, logs)``: v1, v2 (N, 3, S, S) normalised views of the same N images.
    """

    def __init__(
        self,
        method: str,
        widths: tuple[int, ...],
        blocks: tuple[int, ...],
        hidden: int,
        out: int,
        prototypes: int = 1024,
        teacher_momentum: float = 0.99,
    ):
        super().__init__()
        if method not in METHODS:
            raise ConfigError(f"--method must be one of {', '.join(METHODS)}, got {method!r}")
        self.method = method
        trunk = SmallResNet(widths, blocks)
        self.student = EncoderNet(trunk, small_projector(trunk.widths[-1], method, hidden, out))
        self.teacher_momentum = teacher_momentum
        if method == "dino":
            self.last_layer = nn.Linear(
                out, prototypes, bias=False
            )  # weight-normalised with g = 1 (DINO default)
            self.teacher = copy.deepcopy(self.student).requires_grad_(False)
            self.teacher_last_layer = copy.deepcopy(self.last_layer).requires_grad_(False)
            self.register_buffer("center", torch.zeros(1, prototypes))

    def _scores(self, net: EncoderNet, last: nn.Linear, x: torch.Tensor) -> torch.Tensor:
        z = F.normalize(net.projector(net.backbone(x)), dim=-1)
        return F.linear(z, F.normalize(last.weight, dim=-1))

    @torch.no_grad()
    def _update_teacher(self) -> None:
        m = self.teacher_momentum
        pairs = [(self.student, self.teacher), (self.last_layer, self.teacher_last_layer)]
        for src, dst in pairs:
            for ps, pt in zip(src.parameters(), dst.parameters()):
                pt.mul_(m).add_(ps.detach(), alpha=1 - m)

    def forward(self, v1: torch.Tensor, v2: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        if self.method == "dino":
            self._update_teacher()  # EMA after the previous optimizer step
            student = [self._scores(self.student, self.last_layer, v) for v in (v1, v2)]
            with torch.no_grad():
                teacher = [self._scores(self.teacher, self.teacher_last_layer, v) for v in (v1, v2)]
            loss = O.dino(student, teacher, self.center)
            self.center.copy_(O.updated_center(self.center, teacher))
            return loss, {}
        z1, z2 = (self.student.projector(self.student.backbone(v)) for v in (v1, v2))
        if self.method == "simclr":
            return O.nt_xent(z1, z2), {}
        if self.method == "vicreg":
            return O.vicreg(z1, z2)
        return O.barlow_twins(z1, z2), {}

    def representation_state(self) -> dict[str, torch.Tensor]:
        """What ``ssl-small`` loads: backbone.* + projector.* (DINO: the teacher, + its prototypes, ignored)."""
        if self.method == "dino":
            state = dict(self.teacher.state_dict())
            state.update({f"last_layer.{k}": v for k, v in self.teacher_last_layer.state_dict().items()})
        else:
            state = dict(self.student.state_dict())
        return {k: v.detach().cpu().clone() for k, v in state.items()}


def make_views(pixels: torch.Tensor, ids: torch.Tensor, aug: SSLAugment, seed: int, step: int):
    """(B, 3, H, W) pixels -> two normalised views; each image's draws keyed on (seed, step, image index)."""
    v1, v2 = [], []
    for img, i in zip(pixels, ids.tolist()):
        gen = example_generator(seed, step, int(i), "ssl-views")
        a, b = aug.views(img[None], gen)
        v1.append(a)
        v2.append(b)
    mean = torch.tensor(SMALL_MEAN_STD[0]).view(1, 3, 1, 1)
    std = torch.tensor(SMALL_MEAN_STD[1]).view(1, 3, 1, 1)
    return (torch.cat(v1) - mean) / std, (torch.cat(v2) - mean) / std


def train_encoder(
    method: str,
    data: str,
    out: str | Path,
    *,
    steps: int = 2000,
    batch_size: int = 128,
    lr: float = 1e-3,
    size: int = 32,
    widths: tuple[int, ...] = (32, 64, 128, 256),
    blocks: tuple[int, ...] = (1, 1, 1, 1),
    hidden: int = 512,
    out_dim: int = 128,
    seed: int = 0,
    limit: int | None = None,
    save_interval: int = 1000,
    resume: bool = False,
    device: str = "auto",
    progress: bool = True,
    command: list[str] | None = None,
) -> tuple[Path, Any]:
    """Train ssl-small and export it -> (path of the exported encoder file, TrainResult)."""
    dev = dist.resolve_device(device)
    dist.init_from_env(dev)
    ids, pixels = load_images(data, limit=limit, size=size)
    torch.manual_seed(seed)
    model = SSLModel(method, widths, blocks, hidden, out_dim).to(dev)
    aug = SSLAugment(size)
    indexer = BatchIndexer(len(ids), batch_size, seed)

    def get_batch(step: int):
        idx = indexer.local_indices(step)
        return make_views(pixels[idx], idx, aug, seed, step)

    def loss_fn(net, batch, step):
        loss, logs = net(batch[0].to(dev), batch[1].to(dev))
        return loss, {k: float(v) for k, v in logs.items()}

    arch = {
        "name": "small-resnet",
        "widths": list(widths),
        "blocks": list(blocks),
        "input_size": size,
        "mean": list(SMALL_MEAN_STD[0]),
        "std": list(SMALL_MEAN_STD[1]),
        "projector": [widths[-1], hidden, out_dim],
    }
    sidecar = {
        "encoder": "ssl-small",
        "method": method,
        "architecture": arch,
        "data": data,
        "n_images": len(ids),
        "command": command or sys.argv,
        "seed": seed,
    }
    cfg = TrainConfig(
        out_dir=out,
        steps=steps,
        global_batch=batch_size,
        lr=lr,
        ema_rates=(),
        save_interval=min(save_interval, steps),
        resume=resume,
        seed=seed,
        progress=progress,
        desc=f"train-encoder {method}",
    )
    result = train(model, loss_fn, get_batch, cfg, sidecar=sidecar)
    path = Path(out) / f"ssl_small_{method.replace('-', '_')}.pt"
    if dist.is_main():
        atomic_torch_save(model.representation_state(), path)
        losses = [r["loss"] for r in result.rows]
        atomic_write_json(
            path.with_suffix(".json"),
            {**sidecar, "steps": result.step, "final_loss": losses[-1] if losses else None},
        )
    dist.barrier()
    return path, result


def _add(p) -> None:
    p.add_argument("--method", required=True, choices=METHODS, help="SSL objective")
    p.add_argument("--data", required=True, help="image source, e.g. builtin:photos?size=32 or folder:PATH")
    p.add_argument(
        "--out", required=True, help="output folder (checkpoints, losses.csv, ssl_small_<method>.pt)"
    )
    p.add_argument("--steps", type=int, default=2000, help="optimizer steps (default 2000)")
    p.add_argument("--batch-size", type=int, default=128, help="global batch of images (two views each)")
    p.add_argument("--lr", type=float, default=1e-3, help="AdamW learning rate (default 1e-3)")
    p.add_argument("--size", type=int, default=32, help="training image side in px (default 32)")
    p.add_argument(
        "--width", type=int, default=32, help="first stage width; stages are w, 2w, 4w, 8w (default 32)"
    )
    p.add_argument("--limit", type=int, default=None, help="use at most this many images")
    p.add_argument("--save-interval", type=int, default=1000, help="checkpoint every N steps")
    p.add_argument("--resume", action="store_true", help="continue from the newest complete checkpoint set")


def _run(args) -> int:
    w = args.width
    path, result = train_encoder(
        args.method,
        args.data,
        args.out,
        steps=args.steps,
        batch_size=args.batch_size,
        lr=args.lr,
        size=args.size,
        widths=(w, 2 * w, 4 * w, 8 * w),
        seed=args.seed,
        limit=args.limit,
        save_interval=args.save_interval,
        resume=args.resume,
        device=args.device,
        progress=not args.no_progress,
        command=["rcdm", *sys.argv[1:]],
    )
    if dist.is_main():
        print(f"wrote {path} (load it with --encoder ssl-small --weights {path})")
    return 0


COMMAND = rc.CommandRecord(
    name="train-encoder",
    help="train a small SSL encoder (ssl-small) with simclr, vicreg, barlow-twins or dino",
    add_arguments=_add,
    run=_run,
    example="rcdm train-encoder --method simclr --data 'builtin:photos?size=32' --out runs/ssl --steps 500",
)
