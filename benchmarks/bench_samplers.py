"""Sampler speed and quality, in one run.

1. images/s of each sampler at the same number of steps, beside the bare denoiser calls it makes (the same
   batch, the same number of forwards, nothing else) and the sampler's overhead over them (target < 5%);
2. faithfulness (mean cosine between the encoder's representation of the samples and the condition) against the
   number of denoiser calls for ddpm:100, ddim:25, dpm-solver++:20 and :10 (target: dpm-solver++:20 within 0.02
   of ddpm:100) on the demo model when its weights exist, or on ``--checkpoint/--encoder/--data`` given here.

Usage:
  python benchmarks/bench_samplers.py                       # demo model if shipped, else a random 32 px ADM
  python benchmarks/bench_samplers.py --checkpoint ema.pt --encoder ssl-small --weights enc.pt --layer backbone \
      --data builtin:photos --device cuda --precision bf16
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

import rcdm_core as rc
from rcdm_core.dist import resolve_device
from rcdm_core.images import to_pixels
from rcdm_core.stats import cosine

ROOT = Path(__file__).resolve().parent.parent
try:  # the demo plugin says where its shipped weights live
    from rcdm_demo.settings import ARM_FILES, ENCODER_FILE, HELDOUT_DATA, WEIGHTS_DIR
except ImportError:  # pragma: no cover
    ARM_FILES, ENCODER_FILE, WEIGHTS_DIR = (
        {"backbone": "rcdm_backbone.pt"},
        "ssl_small_simclr.pt",
        ROOT / "none",
    )
    HELDOUT_DATA = "builtin:photos?split=heldout&size=32&scales=0.5,0.25"
DEMO_CKPT, DEMO_ENCODER = WEIGHTS_DIR / ARM_FILES["backbone"], WEIGHTS_DIR / ENCODER_FILE
FAITHFULNESS_SPECS = ["ddpm:100", "ddim:25", "dpm-solver++:20", "dpm-solver++:10"]
# A 32 px ADM of about two million parameters, for speed only when no trained model is at hand.
SPEED_FLAGS = dict(
    image_size=32, num_channels=32, channel_mult="1,2,2", num_res_blocks=2, attention_resolutions="16,8",
    num_heads=4, cond_dim=256, learn_sigma=True,
)  # fmt: skip


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _autocast(device: torch.device, precision: str):
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(precision)
    return torch.autocast(device.type, dtype=dtype, enabled=dtype is not None)


def _timed(fn, device: torch.device) -> float:
    _sync(device)
    start = time.perf_counter()
    fn()
    _sync(device)
    return time.perf_counter() - start


def _paired(fn_a, fn_b, repeats: int, device: torch.device) -> tuple[float, float, float]:
    """Alternate a and b (after a warm-up of each) -> (best a, best b, median of the per-pair ratios a / b).

    Pairing cancels most of the drift of a shared machine, which the best-of times alone would not.
    """
    fn_a(), fn_b()
    pairs = [(_timed(fn_a, device), _timed(fn_b, device)) for _ in range(repeats)]
    ratios = sorted(a / b for a, b in pairs)
    return min(a for a, _ in pairs), min(b for _, b in pairs), ratios[len(ratios) // 2]


class _Free(torch.nn.Module):
    """A denoiser that costs nothing: what is left of a sampler's time is its own overhead."""

    def __init__(self, like):
        super().__init__()
        self.image_size, self.cond_dim, self.learn_sigma = like.image_size, like.cond_dim, True
        self.flags = dict(like.flags)
        self.anchor = torch.nn.Parameter(torch.zeros((), device=next(like.parameters()).device))

    def forward(self, x, t, cond):
        return torch.zeros(x.shape[0], 6, *x.shape[2:], device=x.device)


def bare_calls(denoiser, cond: torch.Tensor, timesteps: list[int], precision: str) -> None:
    """The denoiser forwards a sampler makes, with nothing around them."""
    size = int(denoiser.image_size)
    x = torch.randn(len(cond), 3, size, size, device=cond.device)
    with torch.inference_mode(), _autocast(cond.device, precision):
        for t in timesteps:
            denoiser(x, torch.full((len(cond),), t, device=cond.device, dtype=torch.long), cond)


def speed_table(denoiser, cond: torch.Tensor, steps: int, precision: str, repeats: int) -> None:
    device = cond.device
    free = _Free(denoiser)
    print(
        f"\n== speed: batch {len(cond)}, {steps} steps, {precision}, {device} (median of {repeats} pairs) =="
    )
    print(
        f"{'sampler':<20}{'calls':>6}{'images/s':>10}{'bare img/s':>12}{'overhead':>10}{'own ms/step':>13}"
        f"{'own/bare':>10}"
    )
    for spec in (f"ddpm:{steps}", f"ddim:{steps}", f"dpm-solver++:{steps}"):
        sampler = rc.get_sampler(f"{spec},precision={precision}")
        kept = sampler.diffusion_for(denoiser).timestep_map.flip(0).tolist()
        t_sampler, t_bare, ratio = _paired(
            lambda s=sampler: s.sample(denoiser, cond, seed=0, progress=False),
            lambda k=kept: bare_calls(denoiser, cond, k, precision),
            repeats,
            device,
        )
        own = min(
            _timed(lambda s=sampler: s.sample(free, cond, seed=0, progress=False), device) for _ in range(3)
        )
        print(
            f"{spec:<20}{sampler.num_calls:>6}{len(cond) / t_sampler:>10.2f}{len(cond) / t_bare:>12.2f}"
            f"{(ratio - 1) * 100:>9.1f}%{own / sampler.num_calls * 1e3:>13.2f}{own / t_bare * 100:>9.2f}%"
        )
    print(
        "overhead: sampler time / bare denoiser calls - 1 (paired median); own ms/step: the sampler driving a "
        "free denoiser; own/bare: that time over the bare calls' time (the overhead, immune to machine drift)"
    )


def faithfulness_table(
    denoiser, rep, pixels: torch.Tensor, n_samples: int, precision: str, batch: int
) -> dict:
    device = next(denoiser.parameters()).device
    cond = rep.encode(pixels.to(device)).float()
    rows = cond.repeat_interleave(n_samples, 0)
    print(f"\n== faithfulness: {len(pixels)} images x {n_samples} samples, {precision}, {device} ==")
    print(f"{'sampler':<20}{'calls':>6}{'mean cosine':>13}{'s/image':>9}")
    results = {}
    for spec in FAITHFULNESS_SPECS:
        sampler = rc.get_sampler(f"{spec},precision={precision}")
        start = time.perf_counter()
        out = []
        for i in range(0, len(rows), batch):
            ids = list(range(i, min(i + batch, len(rows))))
            out.append(sampler.sample(denoiser, rows[ids], seed=0, sample_ids=ids, progress=False).float())
        _sync(device)
        elapsed = time.perf_counter() - start
        samples = to_pixels(torch.cat(out))
        score = cosine(rep.encode(samples), rows).mean().item()
        results[spec] = score
        print(f"{spec:<20}{sampler.num_calls:>6}{score:>13.4f}{elapsed / len(rows):>9.3f}")
    gap = results["ddpm:100"] - results["dpm-solver++:20"]
    verdict = "within" if abs(gap) <= 0.02 else "NOT within"
    print(f"dpm-solver++:20 vs ddpm:100: {gap:+.4f} ({verdict} the 0.02 target) at 20 vs 100 denoiser calls")
    return results


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", help="denoiser checkpoint (default: the demo's, if shipped)")
    p.add_argument("--encoder", help="encoder for faithfulness (default: the demo's ssl-small)")
    p.add_argument("--weights", help="encoder weights")
    p.add_argument("--layer", default="backbone")
    p.add_argument("--input-norm", default="own", choices=["own", "rcdm"])
    p.add_argument("--data", default=HELDOUT_DATA)
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    p.add_argument("--precision", default="fp32", choices=["fp32", "bf16", "fp16"])
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--steps", type=int, default=20, help="steps for the speed comparison")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--n-images", type=int, default=8)
    p.add_argument("--n-samples", type=int, default=2)
    args = p.parse_args(argv)
    device = resolve_device(args.device)
    torch.manual_seed(0)

    checkpoint, encoder, weights = args.checkpoint, args.encoder, args.weights
    if checkpoint is None and DEMO_CKPT.exists() and DEMO_ENCODER.exists():
        checkpoint, encoder, weights = str(DEMO_CKPT), encoder or "ssl-small", weights or str(DEMO_ENCODER)
    if checkpoint is not None:
        denoiser = rc.load_denoiser(checkpoint, device=device)
        print(f"denoiser: {checkpoint}")
    else:
        denoiser = rc.build_denoiser("adm", **SPEED_FLAGS).to(device).eval()
        with torch.no_grad():  # random weights, not zero-init outputs, so the samplers do real work
            for prm in denoiser.parameters():
                prm.normal_(0, 0.02)
        print("denoiser: random 32 px ADM (no demo weights, no --checkpoint): speed figures only")
    n_params = sum(prm.numel() for prm in denoiser.parameters())
    print(
        f"  {n_params / 1e6:.1f} M parameters, image size {denoiser.image_size}, cond_dim {denoiser.cond_dim}"
    )
    print(f"  torch {torch.__version__}, threads {torch.get_num_threads()}, device {device}")

    cond = torch.randn(args.batch_size, denoiser.cond_dim, generator=torch.Generator().manual_seed(0)).to(
        device
    )
    speed_table(denoiser, cond, args.steps, args.precision, args.repeats)

    if checkpoint is None or encoder is None:
        print(
            "\nfaithfulness: skipped (needs a trained checkpoint and its encoder: --checkpoint/--encoder/--weights)"
        )
        return 0
    from rcdm_core.data import load_images

    rep = rc.load_encoder(encoder, weights, args.layer, args.input_norm, device=device)
    _, pixels = load_images(args.data, limit=args.n_images, size=int(denoiser.image_size))
    faithfulness_table(denoiser, rep, pixels, args.n_samples, args.precision, args.batch_size)
    return 0


if __name__ == "__main__":
    sys.exit(main())
