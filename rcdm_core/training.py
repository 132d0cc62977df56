"""The one training loop, shared by ``rcdm train`` (the denoiser) and ``rcdm train-encoder`` (SSL encoders).

AdamW, EMA, fp32/bf16/fp16 (fp16 with dynamic loss scaling), a NaN/inf guard, optional gradient clipping,
checkpoints in the official plain form and names with a JSON sidecar, atomic writes, exact resume, DDP under
torchrun (gloo on CPU), a progress bar with loss and images/s, and ``losses.csv``.

How to use it::

    from rcdm_core.training import BatchIndexer, TrainConfig, example_generator, train

    indexer = BatchIndexer(n=len(data), global_batch=64, seed=0)

    def get_batch(step):                      # this rank's share of the global batch of `step`
        idx = indexer.local_indices(step)
        return {"x": data[idx], "ids": idx}

    def loss_fn(model, batch, step):          # -> (scalar loss, {name: float})
        gens = [example_generator(0, step, int(i)) for i in batch["ids"]]
        ...                                   # per-example randomness from gens, never the global RNG
        return loss, {"mse": mse.item()}

    cfg = TrainConfig(out_dir="runs/x", steps=1000, global_batch=64, lr=1e-4, ema_rates=(0.9999,))
    train(model, loss_fn, get_batch, cfg, sidecar={"flags": ..., "encoder": ..., "command": ...})

Why a ``get_batch(step)`` callable rather than an iterator: a step's batch must depend only on the step number
(and fixed inputs) so that ``--resume`` continues with exactly the batches an uninterrupted run would have seen,
and so that N ranks together see exactly the global batch one process would. For the same reason per-example
randomness (timesteps, noise, augmentations) is drawn from :func:`example_generator`, keyed on (seed, step,
example id), so it does not depend on how the global batch is split over ranks; the global torch RNG (used by
dropout) is reseeded at every step from (seed, step, rank).

Files written in ``out_dir`` at every ``save_interval`` steps and at the last step (``k`` = completed steps):
``{model_prefix}{k:06d}.pt`` (plain state dict), ``{ema_prefix}_{rate}_{k:06d}.pt`` per EMA rate (same keys;
parameters averaged, buffers copied), each with a ``.json`` sidecar (the caller's dict + step, kind, losses),
then ``{opt_prefix}{k:06d}.pt`` (the optimizer state dict, plus an ``rcdm`` entry with the step, the loss scaler
and the guard counters). A set is complete when all of these exist; ``resume`` uses the newest complete set.
"""

from __future__ import annotations

import csv
import hashlib
import io
import math
import re
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import attrs
import torch
from torch import nn

from . import dist
from .errors import CheckpointError, ConfigError, RcdmError
from .io import atomic_torch_save, atomic_write_json, atomic_write_text, check_finite, safe_load
from .progress import bar

LossFn = Callable[[nn.Module, Any, int], "tuple[torch.Tensor, dict[str, float]]"]

# Test hook (issue 9): called with each checkpoint file's path right after it is written, so a test can stop
# the process between the files of one set and check that resume skips the incomplete set.
_after_checkpoint_file_hook: Callable[[Path], None] | None = None

PRECISIONS = ("fp32", "bf16", "fp16")


@attrs.define
class TrainConfig:
    """Settings of one training run.

    ``global_batch`` is the batch over all ranks (used for images/s and checked against the world size);
    ``ema_rates`` e.g. (0.9999,); ``grad_clip`` a max global gradient norm or None; ``max_bad_steps``: stop after
    this many consecutive steps with NaN/inf loss or gradients (each such step is skipped and counted).
    """

    out_dir: Path = attrs.field(converter=Path)
    steps: int
    global_batch: int
    lr: float = 1e-4
    weight_decay: float = 0.0
    ema_rates: tuple[float, ...] = (0.9999,)
    grad_clip: float | None = None
    precision: str = "fp32"
    save_interval: int = 10000
    log_interval: int = 1
    resume: bool = False
    seed: int = 0
    model_prefix: str = "model"
    ema_prefix: str = "ema"
    opt_prefix: str = "opt"
    max_bad_steps: int = 20
    initial_loss_scale: float = 2.0**16
    progress: bool = True
    desc: str = "train"

    def check(self) -> None:
        if self.precision not in PRECISIONS:
            raise ConfigError(f"--precision must be one of {', '.join(PRECISIONS)}, got {self.precision!r}")
        for name in ("steps", "global_batch", "save_interval", "log_interval", "max_bad_steps"):
            if int(getattr(self, name)) <= 0:
                raise ConfigError(
                    f"--{name.replace('_', '-')} must be a positive integer, got {getattr(self, name)}"
                )
        for rate in self.ema_rates:
            if not 0.0 <= rate < 1.0:
                raise ConfigError(f"--ema-rate values must be in [0, 1), got {rate}")
        if self.lr <= 0:
            raise ConfigError(f"--lr must be positive, got {self.lr}")
        if self.global_batch % dist.world_size():
            raise ConfigError(
                f"--batch-size {self.global_batch} is the global batch and must divide evenly over "
                f"{dist.world_size()} processes"
            )


@attrs.define
class TrainResult:
    """What :func:`train` returns: the last step, the files of the last checkpoint set, logged rows."""

    step: int
    files: list[Path]
    rows: list[dict[str, float]]
    skipped_steps: int
    resumed_from: int | None


# ---- determinism helpers -----------------------------------------------------------------------------------


def _hash_seed(*parts: Any) -> int:
    digest = hashlib.blake2b(
        ":".join(str(p) for p in ("rcdm-train", *parts)).encode(), digest_size=8
    ).digest()
    return int.from_bytes(digest, "little") & ((1 << 63) - 1)


def example_generator(seed: int, step: int, example_id: int, stream: str = "") -> torch.Generator:
    """A CPU generator keyed on (seed, step, example id, stream): per-example randomness that does not depend
    on the batch split over ranks. Draw on the CPU and move the result to the device."""
    gen = torch.Generator(device="cpu")
    gen.manual_seed(_hash_seed(seed, step, example_id, stream))
    return gen


class BatchIndexer:
    """Which examples make the global batch of each step: epoch-wise permutations keyed on (seed, epoch).

    ``global_indices(step)``: (global_batch,) indices into the dataset, a function of (seed, step) only;
    ``local_indices(step)``: this rank's contiguous share, (global_batch / world,).
    """

    def __init__(self, n: int, global_batch: int, seed: int = 0):
        if n <= 0:
            raise ConfigError("the training set is empty")
        self.n, self.global_batch, self.seed = int(n), int(global_batch), int(seed)
        self._perm_cache: dict[int, torch.Tensor] = {}

    def _perm(self, epoch: int) -> torch.Tensor:
        if epoch not in self._perm_cache:
            if len(self._perm_cache) > 4:
                self._perm_cache.clear()
            gen = torch.Generator().manual_seed(_hash_seed(self.seed, "epoch", epoch))
            self._perm_cache[epoch] = torch.randperm(self.n, generator=gen)
        return self._perm_cache[epoch]

    def global_indices(self, step: int) -> torch.Tensor:
        pos = torch.arange(step * self.global_batch, (step + 1) * self.global_batch)
        epochs, within = pos // self.n, pos % self.n
        return torch.stack([self._perm(int(e))[int(w)] for e, w in zip(epochs, within)])

    def local_indices(self, step: int) -> torch.Tensor:
        world, rank = dist.world_size(), dist.rank()
        if self.global_batch % world:
            raise ConfigError(f"batch size {self.global_batch} does not divide over {world} processes")
        per = self.global_batch // world
        return self.global_indices(step)[rank * per : (rank + 1) * per]


# ---- checkpoint sets -----------------------------------------------------------------------------------------


def checkpoint_names(cfg: TrainConfig, step: int) -> dict[str, str]:
    """{role: file name} of the set for ``step``: ``model``, ``ema_<rate>`` for each rate, ``opt``."""
    names = {"model": f"{cfg.model_prefix}{step:06d}.pt"}
    for rate in cfg.ema_rates:
        names[f"ema_{rate}"] = f"{cfg.ema_prefix}_{rate}_{step:06d}.pt"
    names["opt"] = f"{cfg.opt_prefix}{step:06d}.pt"
    return names


def _set_files(cfg: TrainConfig, step: int) -> list[Path]:
    files = []
    for role, name in checkpoint_names(cfg, step).items():
        path = cfg.out_dir / name
        files.append(path)
        if role != "opt":
            files.append(path.with_suffix(".json"))
    return files


def find_resume_step(cfg: TrainConfig) -> tuple[int | None, list[tuple[int, str]]]:
    """Newest step whose set is complete, and [(step, first missing file)] for newer incomplete sets."""
    pattern = re.compile(rf"^{re.escape(cfg.model_prefix)}(\d{{6,}})\.pt$")
    steps: set[int] = set()
    if cfg.out_dir.is_dir():
        for p in cfg.out_dir.iterdir():
            m = pattern.match(p.name)
            if m:
                steps.add(int(m.group(1)))
        opt_pat = re.compile(rf"^{re.escape(cfg.opt_prefix)}(\d{{6,}})\.pt$")
        steps |= {int(m.group(1)) for p in cfg.out_dir.iterdir() if (m := opt_pat.match(p.name))}
    skipped = []
    for step in sorted(steps, reverse=True):
        missing = [p for p in _set_files(cfg, step) if not p.exists()]
        if not missing:
            return step, skipped
        skipped.append((step, missing[0].name))
    return None, skipped


# ---- EMA -----------------------------------------------------------------------------------------------------


class Ema:
    """Exponential moving averages of a model's parameters, one per rate (buffers are copied, not averaged)."""

    def __init__(self, model: nn.Module, rates: tuple[float, ...]):
        self.rates = tuple(rates)
        self.names = [n for n, _ in model.named_parameters()]
        self.params = {r: [p.detach().clone() for p in model.parameters()] for r in self.rates}

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        params = [p.detach() for p in model.parameters()]
        if not params:
            return
        for rate in self.rates:
            # lerp(ema, p, 1 - rate) == rate * ema + (1 - rate) * p
            torch._foreach_lerp_(self.params[rate], params, 1.0 - rate)

    def state_dict(self, model: nn.Module, rate: float) -> dict[str, torch.Tensor]:
        """The model's state dict with parameters replaced by the EMA values of ``rate``."""
        state = {k: v.detach().clone() for k, v in model.state_dict().items()}
        for name, value in zip(self.names, self.params[rate]):
            state[name] = value.clone()
        return state

    def load(self, rate: float, state: dict[str, torch.Tensor], path: Path) -> None:
        for i, name in enumerate(self.names):
            if name not in state:
                raise CheckpointError(f"{path}: EMA file lacks parameter {name!r}")
            if state[name].shape != self.params[rate][i].shape:
                raise CheckpointError(
                    f"{path}: {name} has shape {tuple(state[name].shape)}, the model has "
                    f"{tuple(self.params[rate][i].shape)}"
                )
            self.params[rate][i].copy_(state[name])


# ---- the loop ------------------------------------------------------------------------------------------------


def _autocast(device: torch.device, precision: str):
    if precision == "fp32":
        return torch.autocast(device.type, enabled=False)
    dtype = torch.bfloat16 if precision == "bf16" else torch.float16
    return torch.autocast(device.type, dtype=dtype)


def _unwrap(model: nn.Module) -> nn.Module:
    return model.module if isinstance(model, nn.parallel.DistributedDataParallel) else model


def load_state_strict(module: nn.Module, state: dict[str, torch.Tensor], path: str | Path) -> None:
    """Load every key of ``state`` into ``module``; a missing, unexpected or mis-shaped key is a CheckpointError
    naming the key (and both shapes); NaN/inf weights are refused, naming the key."""
    check_finite(state, path)
    own = module.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    if missing:
        raise CheckpointError(f"{path}: key {missing[0]!r} is missing ({len(missing)} missing in all)")
    if unexpected:
        raise CheckpointError(
            f"{path}: unexpected key {unexpected[0]!r} ({len(unexpected)} unexpected in all)"
        )
    for k, v in own.items():
        if tuple(state[k].shape) != tuple(v.shape):
            raise CheckpointError(
                f"{path}: {k} has shape {tuple(state[k].shape)} in the file but {tuple(v.shape)} in the model"
            )
    module.load_state_dict(state, strict=True)


class _Trainer:
    def __init__(
        self,
        model: nn.Module,
        loss_fn: LossFn,
        get_batch: Callable[[int], Any],
        cfg: TrainConfig,
        sidecar: dict[str, Any],
    ):
        cfg.check()
        self.cfg, self.loss_fn, self.get_batch, self.sidecar = cfg, loss_fn, get_batch, dict(sidecar)
        self.module = model
        self.device = next(model.parameters()).device
        self.model = self._wrap(model)
        self.opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
        self.scaler = torch.amp.GradScaler(
            self.device.type, enabled=cfg.precision == "fp16", init_scale=cfg.initial_loss_scale
        )
        self.ema = Ema(model, cfg.ema_rates)
        self.step = 0
        self.skipped = 0
        self.bad_in_a_row = 0
        self.rows: list[dict[str, float]] = []
        self.last_files: list[Path] = []
        self.resumed_from: int | None = None

    def _wrap(self, model: nn.Module) -> nn.Module:
        if not dist.is_distributed():
            return model
        ids = [self.device.index] if self.device.type == "cuda" else None
        return nn.parallel.DistributedDataParallel(model, device_ids=ids)

    # -- resume ---------------------------------------------------------------------------------------------
    def resume(self) -> None:
        self._remove_stale_temporaries()
        step, skipped = find_resume_step(self.cfg)
        for s, missing in skipped:
            self._say(f"skipping the incomplete checkpoint set at step {s} ({missing} is missing)")
        if step is None:
            self._say(f"--resume: no complete checkpoint set in {self.cfg.out_dir}; starting from step 0")
            return
        names = checkpoint_names(self.cfg, step)
        self._say(f"resuming from step {step}: {', '.join(names.values())}")
        path = self.cfg.out_dir / names["model"]
        load_state_strict(self.module, safe_load(path, map_location=self.device), path)
        for rate in self.cfg.ema_rates:
            epath = self.cfg.out_dir / names[f"ema_{rate}"]
            estate = safe_load(epath, map_location=self.device)
            check_finite(estate, epath)
            self.ema.load(rate, estate, epath)
        opath = self.cfg.out_dir / names["opt"]
        opt_state = dict(safe_load(opath, map_location=self.device))
        extra = opt_state.pop("rcdm", {})
        self.opt.load_state_dict(opt_state)
        if extra.get("scaler"):
            self.scaler.load_state_dict(extra["scaler"])
        self.skipped = int(extra.get("skipped_steps", 0))
        self.bad_in_a_row = int(extra.get("bad_in_a_row", 0))
        self.step = self.resumed_from = step
        self.rows = [r for r in _read_csv(self.cfg.out_dir / "losses.csv") if r.get("step", 0) <= step]

    def _remove_stale_temporaries(self) -> None:
        """Delete the ``.NAME.*.tmp`` files an interrupted atomic write of this run left behind (each may be a
        whole checkpoint's size); nothing else writes into the run folder while it is being resumed."""
        if not dist.is_main() or not self.cfg.out_dir.is_dir():
            return
        ours = _checkpoint_name_re(self.cfg)
        stale = [
            p for p in self.cfg.out_dir.iterdir()
            if (m := _TMP_RE.match(p.name)) and (ours.match(m.group(1)) or m.group(1) == "losses.csv")
        ]  # fmt: skip
        for p in stale:
            p.unlink(missing_ok=True)
        if stale:
            self._say(f"removed {len(stale)} temporary file(s) left by an interrupted write")

    # -- one step -------------------------------------------------------------------------------------------
    def train_step(self) -> dict[str, float]:
        cfg = self.cfg
        torch.manual_seed(_hash_seed(cfg.seed, self.step, "global", dist.rank()))
        batch = self.get_batch(self.step)
        self.opt.zero_grad(set_to_none=True)
        with _autocast(self.device, cfg.precision):
            loss, logs = self.loss_fn(self.model, batch, self.step)
        self.scaler.scale(loss.float()).backward()
        self.scaler.unscale_(self.opt)
        # All ranks hold the same all-reduced gradients, so they all take the same skip decision.
        max_norm = cfg.grad_clip if cfg.grad_clip else math.inf
        norm = torch.nn.utils.clip_grad_norm_(self.module.parameters(), max_norm, error_if_nonfinite=False)
        finite = bool(torch.isfinite(norm))
        if finite:
            self.scaler.step(self.opt)
            self.ema.update(self.module)
            self.bad_in_a_row = 0
        else:
            self.skipped += 1
            self.bad_in_a_row += 1
        self.scaler.update()
        self.step += 1
        if self.bad_in_a_row >= cfg.max_bad_steps:
            scale = f" (fp16 loss scale now {self.scaler.get_scale():g})" if cfg.precision == "fp16" else ""
            raise RcdmError(
                f"training stopped at step {self.step}: the loss or gradients were NaN/inf for "
                f"{self.bad_in_a_row} steps in a row{scale}; try a lower --lr, --grad-clip 1.0, or --precision "
                f"{'bf16' if cfg.precision == 'fp16' else 'fp32'}"
            )
        row = {"loss": float(loss.detach().float()), **{k: float(v) for k, v in logs.items()}}
        row = _mean_over_ranks(row, self.device)
        return {"step": self.step, **row, "grad_norm": float(norm), "skipped": float(not finite)}

    # -- saving ---------------------------------------------------------------------------------------------
    def save(self) -> list[Path]:
        files: list[Path] = []
        if dist.is_main():
            cfg, step = self.cfg, self.step
            names = checkpoint_names(cfg, step)
            recent = self.rows[-max(1, min(len(self.rows), 100)) :]
            losses = (
                {k: sum(r[k] for r in recent) / len(recent) for k in recent[0] if k != "step"}
                if recent
                else {}
            )
            side = {
                **self.sidecar,
                "step": step,
                "losses": losses,
                "skipped_steps": self.skipped,
                "global_batch": cfg.global_batch,
                "precision": cfg.precision,
            }
            files += self._write(names["model"], self.module.state_dict(), {**side, "kind": "model"})
            for rate in cfg.ema_rates:
                state = self.ema.state_dict(self.module, rate)
                files += self._write(names[f"ema_{rate}"], state, {**side, "kind": "ema", "ema_rate": rate})
            extra = {
                "step": step,
                "scaler": self.scaler.state_dict(),
                "skipped_steps": self.skipped,
                "bad_in_a_row": self.bad_in_a_row,
            }
            files += self._write(names["opt"], {**self.opt.state_dict(), "rcdm": extra}, None)
            self.write_csv()
        dist.barrier()
        self.last_files = files
        return files

    def _write(self, name: str, obj: Any, sidecar: dict[str, Any] | None) -> list[Path]:
        path = self.cfg.out_dir / name
        try:
            atomic_torch_save(obj, path)
            _hook(path)
            out = [path]
            if sidecar is not None:
                side = path.with_suffix(".json")
                atomic_write_json(side, sidecar)
                _hook(side)
                out.append(side)
        except RcdmError as exc:  # e.g. no space left: say what is still safe to resume from
            raise RcdmError(f"{exc}; {_resumable(self.cfg)}") from None
        return out

    def write_csv(self) -> None:
        if not self.rows:
            return
        keys = list(dict.fromkeys(k for r in self.rows for k in r))
        buf = io.StringIO()
        writer = csv.DictWriter(buf, fieldnames=keys)
        writer.writeheader()
        for r in self.rows:
            writer.writerow({k: (int(v) if k == "step" else f"{v:.6g}") for k, v in r.items()})
        atomic_write_text(self.cfg.out_dir / "losses.csv", buf.getvalue())

    def _say(self, msg: str) -> None:
        if dist.is_main():
            print(f"rcdm: {msg}", file=sys.stderr)

    # -- run ------------------------------------------------------------------------------------------------
    def run(self) -> TrainResult:
        cfg = self.cfg
        if cfg.resume:
            self.resume()
        elif find_resume_step(cfg)[0] is not None:
            raise ConfigError(
                f"{cfg.out_dir} already holds checkpoints; pass --resume or choose another --out"
            )
        self.model.train()
        start, t0 = self.step, time.perf_counter()
        pbar = bar(total=cfg.steps, initial=self.step, desc=cfg.desc, progress=cfg.progress)
        try:
            while self.step < cfg.steps:
                row = self.train_step()
                elapsed = time.perf_counter() - t0
                row["images_per_s"] = cfg.global_batch * (self.step - start) / max(elapsed, 1e-9)
                if self.step % cfg.log_interval == 0 or self.step == cfg.steps:
                    self.rows.append(row)
                pbar.update(1)
                pbar.set_postfix(loss=f"{row['loss']:.4f}", img_s=f"{row['images_per_s']:.1f}", refresh=False)
                if self.step % cfg.save_interval == 0 or self.step == cfg.steps:
                    self.save()
        finally:
            pbar.close()
        return TrainResult(self.step, self.last_files, self.rows, self.skipped, self.resumed_from)


_TMP_RE = re.compile(r"^\.(.+)\.[^.]+\.tmp$")  # rcdm_core.io.atomic_write's temporaries: .NAME.RANDOM.tmp


def _checkpoint_name_re(cfg: TrainConfig) -> re.Pattern:
    """Names of this run's checkpoint files and sidecars (model, ema, opt; ``.pt`` or ``.json``)."""
    prefixes = "|".join(re.escape(p) for p in (cfg.model_prefix, cfg.ema_prefix + "_", cfg.opt_prefix))
    return re.compile(rf"^({prefixes}).*\d{{6,}}\.(pt|json)$")


def _resumable(cfg: TrainConfig) -> str:
    """What a failed checkpoint write leaves to resume from, for the error line."""
    last, _ = find_resume_step(cfg)
    if last is None:
        return f"{cfg.out_dir} holds no complete checkpoint set yet; free space and start again"
    return f"the checkpoint set of step {last} in {cfg.out_dir} is intact; free space and rerun with --resume"


def _hook(path: Path) -> None:
    if _after_checkpoint_file_hook is not None:
        _after_checkpoint_file_hook(path)


def _mean_over_ranks(row: dict[str, float], device: torch.device) -> dict[str, float]:
    if not dist.is_distributed():
        return row
    t = torch.tensor(list(row.values()), dtype=torch.float64, device=device)
    torch.distributed.all_reduce(t)
    t /= dist.world_size()
    return dict(zip(row, t.tolist()))


def _read_csv(path: Path) -> list[dict[str, float]]:
    if not path.exists():
        return []
    with open(path, newline="") as fh:
        return [
            {k: (int(v) if k == "step" else float(v)) for k, v in r.items() if v not in (None, "")}
            for r in csv.DictReader(fh)
        ]


def train(
    model: nn.Module,
    loss_fn: LossFn,
    get_batch: Callable[[int], Any],
    cfg: TrainConfig,
    sidecar: dict[str, Any] | None = None,
) -> TrainResult:
    """Train ``model`` (already on its device) to ``cfg.steps`` optimizer steps; see the module docstring.

    ``loss_fn(model, batch, step) -> (loss: () tensor, logs: {name: float})``: ``model`` may be wrapped in DDP,
    so call it rather than reaching into it; ``logs`` must have the same keys on every rank.
    ``get_batch(step) -> batch``: this rank's share of step ``step``'s global batch (see :class:`BatchIndexer`).
    ``sidecar``: what the JSON beside each model/ema file records (flags, diffusion settings, encoder, weights
    hash, layer, input_norm, data, command); the loop adds step, kind, ema_rate, losses and skipped_steps.
    Raises RcdmError after ``cfg.max_bad_steps`` consecutive non-finite steps.
    """
    return _Trainer(model, loss_fn, get_batch, cfg, sidecar or {}).run()
