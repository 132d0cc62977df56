"""Training throughput of the ADM denoiser: images/s, peak memory, and achieved GFLOP/s beside this machine's
measured matmul GFLOP/s for the same dtype (the ratio says how much of the hardware a training step uses).

One step = the hybrid loss (rcdm_core.diffusion) forward + backward + AdamW step, as ``rcdm train`` runs it.
FLOPs come from ``torch.utils.flop_counter`` on one step with the attention on its einsum path (the counter
sees nothing inside scaled_dot_product_attention on CPU); the timed steps use SDPA.

    python benchmarks/bench_train.py                          # 32 px few-million-parameter config (~1-2 min CPU)
    python benchmarks/bench_train.py --config release128 --batch 1 --steps 2    # the released RCDM config
    python benchmarks/bench_train.py --config release128 --batch 8 --use-checkpoint --device cuda
"""

from __future__ import annotations

import argparse
import os
import threading
import time

import torch
from torch.utils.flop_counter import FlopCounterMode

import rcdm_core as rc
from rcdm_core.diffusion import Diffusion

CONFIGS = {
    "small32": dict(image_size=32, num_channels=64, channel_mult="1,2,2", num_res_blocks=2,
                    attention_resolutions="16,8", num_head_channels=32, cond_dim=256),
    "release128": dict(cond_dim=2048),  # the factory's defaults are the release flags
}  # fmt: skip
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def matmul_gflops(device: torch.device, dtype: torch.dtype, seconds: float = 1.0) -> float:
    """This machine's dense matmul rate for ``dtype`` (square matrices, 2 n^3 FLOPs each)."""
    n = 4096 if device.type == "cuda" else 1024
    a, b = torch.randn(n, n, device=device, dtype=dtype), torch.randn(n, n, device=device, dtype=dtype)
    for _ in range(2):
        a @ b
    _sync(device)
    reps, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        a @ b
        reps += 1
        _sync(device)
    return 2 * n**3 * reps / (time.perf_counter() - t0) / 1e9


class PeakRSS:
    """Peak resident memory of this process while the block runs (CPU), sampled every 5 ms."""

    def __enter__(self):
        self.peak, self._stop = _rss(), threading.Event()
        self._thread = threading.Thread(target=self._watch, daemon=True)
        self._thread.start()
        return self

    def _watch(self):
        while not self._stop.wait(0.005):
            self.peak = max(self.peak, _rss())

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()


def _rss() -> int:
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def make_step(model, diffusion, batch: int, precision: str, device: torch.device):
    gen = torch.Generator().manual_seed(0)
    s = model.image_size
    x0 = (torch.rand(batch, 3, s, s, generator=gen) * 2 - 1).to(device)
    cond = torch.randn(batch, model.cond_dim, generator=gen).to(device)
    t = torch.randint(0, diffusion.num_timesteps, (batch,), generator=gen).to(device)
    noise = torch.randn(batch, 3, s, s, generator=gen).to(device)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    autocast = torch.autocast(device.type, dtype=DTYPES[precision], enabled=precision != "fp32")

    def step():
        opt.zero_grad(set_to_none=True)
        with autocast:
            loss = diffusion.training_losses(model, x0, t, cond, noise, learn_sigma=model.learn_sigma)[
                "loss"
            ].mean()
        loss.backward()
        opt.step()

    return step


def count_step_flops(step) -> int:
    """FLOPs of one training step with attention on the einsum path (counted as bmm)."""
    from rcdm_adm.unet import AttentionBlock

    AttentionBlock.use_sdpa = False
    try:
        with FlopCounterMode(display=False) as counter:
            step()
    finally:
        AttentionBlock.use_sdpa = True
    return counter.get_total_flops()


def bench(
    config: str, batch: int, precision: str, steps: int, device: torch.device, use_checkpoint: bool
) -> dict:
    torch.manual_seed(0)
    model = rc.build_denoiser("adm", **CONFIGS[config], use_checkpoint=use_checkpoint).to(device).train()
    diffusion = Diffusion.from_flags(model.diffusion_steps, model.noise_schedule)
    step = make_step(model, diffusion, batch, precision, device)
    flops = count_step_flops(step)  # also the warm-up step
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    with PeakRSS() as rss:
        _sync(device)
        t0 = time.perf_counter()
        for _ in range(steps):
            step()
        _sync(device)
        elapsed = time.perf_counter() - t0
    peak = torch.cuda.max_memory_allocated(device) if device.type == "cuda" else rss.peak
    return {
        "params": sum(p.numel() for p in model.parameters()),
        "images_per_s": batch * steps / elapsed,
        "s_per_step": elapsed / steps,
        "gflop_per_step": flops / 1e9,
        "achieved_gflops": flops * steps / elapsed / 1e9,
        "peak_gib": peak / 2**30,
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", choices=sorted(CONFIGS), action="append", help="default: small32")
    p.add_argument("--batch", type=int, default=None, help="default: 4 for small32, 1 for release128")
    p.add_argument("--steps", type=int, default=2, help="timed steps after one counted warm-up step")
    p.add_argument("--precision", default="fp32,bf16", help="comma list of fp32, bf16, fp16")
    p.add_argument("--use-checkpoint", action="store_true", help="gradient checkpointing")
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    args = p.parse_args()
    from rcdm_core.dist import resolve_device

    device = resolve_device(args.device)
    print(f"device {device} | torch {torch.__version__} | threads {torch.get_num_threads()}")
    precisions = [s.strip() for s in args.precision.split(",") if s.strip()]
    rates = {prec: matmul_gflops(device, DTYPES[prec]) for prec in precisions}
    header = (f"{'config':<11} {'params':>11} {'batch':>5} {'prec':<5} {'img/s':>8} {'s/step':>7} {'peak GiB':>8} "
              f"{'GFLOP/step':>10} {'GFLOP/s':>8} {'matmul GFLOP/s':>14} {'ratio':>6}")  # fmt: skip
    print(header)
    for config in args.config or ["small32"]:
        batch = args.batch or (4 if config == "small32" else 1)
        for prec in precisions:
            r = bench(config, batch, prec, args.steps, device, args.use_checkpoint)
            print(f"{config:<11} {r['params']:>11,} {batch:>5} {prec:<5} {r['images_per_s']:>8.2f} "
                  f"{r['s_per_step']:>7.3f} {r['peak_gib']:>8.2f} {r['gflop_per_step']:>10.1f} "
                  f"{r['achieved_gflops']:>8.1f} {rates[prec]:>14.1f} {r['achieved_gflops'] / rates[prec]:>6.2f}",
                  flush=True)  # fmt: skip
    mem = "CUDA max_memory_allocated" if device.type == "cuda" else "process peak RSS (sampled)"
    print(f"peak memory: {mem}; ratio = achieved GFLOP/s / matmul GFLOP/s of the same dtype")


if __name__ == "__main__":
    main()
