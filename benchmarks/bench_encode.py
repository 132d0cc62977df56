"""``rcdm encode`` path vs a bare timm forward of the same model, same run, same device.

Ours: uint8 images -> the encode command's own function (per-image shared resize, preprocess, batched
inference-mode forward through the Encoder, layer selection). Reference: ``model(x)`` on an already
preprocessed batch of the same size in inference mode (channels_last on CUDA, as ours). Prints images/s of
both and the ratio (target >= 0.9).

    python benchmarks/bench_encode.py [--model resnet18] [--n 64] [--batch-size 32] [--device auto]
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch

import rcdm_core as rc
from rcdm_core.commands.encode import encode_arrays, prepare
from rcdm_core.dist import resolve_device


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--model", default="resnet18", help="timm model name (random weights)")
    p.add_argument("--n", type=int, default=64, help="images per timed pass")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--device", default="auto")
    args = p.parse_args()
    device = resolve_device(args.device)
    rep = prepare(rc.load_encoder(f"timm:{args.model}", layer="backbone", device=device))
    side = rep.encoder.input_size
    rng = np.random.default_rng(0)
    arrays = [rng.integers(0, 256, (side, side, 3), dtype=np.uint8) for _ in range(args.n)]
    items = [(i, str(i), a) for i, a in enumerate(arrays)]
    model = rep.encoder.module.backbone
    x = torch.randn(args.batch_size, 3, side, side, device=device)
    if device.type == "cuda" and not rep.encoder.transformer:
        x = x.contiguous(memory_format=torch.channels_last)

    def ours() -> None:
        encode_arrays(rep, items, args.batch_size, progress=False)

    def bare() -> None:
        with torch.inference_mode():
            for _ in range(0, args.n, args.batch_size):
                model(x)

    for fn in (ours, bare):  # warm-up (kernel selection, allocator)
        fn()
    times = {"ours": [], "bare": []}
    for _ in range(args.repeats):  # interleaved, so load changes hit both alike
        for name, fn in (("ours", ours), ("bare", bare)):
            _sync(device)
            t = time.perf_counter()
            fn()
            _sync(device)
            times[name].append(time.perf_counter() - t)
    ours_ips = args.n / min(times["ours"])
    bare_ips = args.n / min(times["bare"])
    print(f"device {device}, timm:{args.model} at {side} px, {args.n} images, batch {args.batch_size}")
    print(f"rcdm encode path : {ours_ips:9.1f} images/s (uint8 -> resize -> preprocess -> forward -> select)")
    print(f"bare timm forward: {bare_ips:9.1f} images/s (preprocessed tensor -> model(x))")
    print(f"ratio            : {ours_ips / bare_ips:9.3f} (target >= 0.9)")


if __name__ == "__main__":
    main()
