"""Peak memory and seconds per image of the attribution probe's IntegratedGradients on ResNet-50 at 224.

Our figure: IG (64 steps, Gauss-Legendre, the probe's cosine scalar with a blurred baseline) through
rcdm_captum's Attributor, for several ``internal_batch_size`` values. Reference beside it: the bare
forward + backward of the same 64 interpolated images in the same batches, without Captum (what IG cannot beat),
and the ratio. Each measurement runs in a fresh process so that its peak RSS (ru_maxrss) is its own.
Target (issue 7): peak under 4 GB.

    .venv/bin/python benchmarks/bench_attribution.py                # ~2 minutes on 2 idle cores
    .venv/bin/python benchmarks/bench_attribution.py --batches 8,32,64 --size 224 --steps 64
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import time

import torch
from torch import nn


def rss_peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # KiB on Linux


def build_rep(size: int):
    """torchvision ResNet-50 (random weights: memory and time do not depend on them) as an rc.Representation."""
    import torchvision

    import rcdm_core as rc

    class ResNetEncoder(rc.Encoder):
        name, input_size = "resnet50", size

        def __init__(self):
            self.module = torchvision.models.resnet50(weights=None)
            self.module.fc = nn.Identity()
            self.meta = {}

        def features(self, x, layers):
            return {"backbone": self.module(x)}

        def layers(self):
            return {"backbone": 2048}

    class Backbone(rc.LayerSelector):
        def feature_name(self, spec, encoder):
            return "backbone"

        def reduce(self, spec, feature):
            return feature

        def dim(self, spec, encoder):
            return 2048

    enc = ResNetEncoder()
    enc.module.eval()
    return rc.Representation(enc, Backbone(), "backbone")


def child(mode: str, batch: int, steps: int, size: int) -> dict:
    from rcdm_captum.baselines import make_baselines
    from rcdm_captum.grad import attribution_mode
    from rcdm_captum.methods import Attributor, MethodSettings
    from rcdm_captum.scalar import SimilarityScalar

    torch.manual_seed(0)
    rep = build_rep(size)
    x = torch.rand(1, 3, size, size)
    base = make_baselines("blurred", x)
    ref = rep.encode(x).clone()
    loaded = rss_peak_mb()
    scalar = SimilarityScalar(rep)
    with attribution_mode(rep.encoder.module):
        if mode == "ig":
            att = Attributor(scalar, MethodSettings(ig_steps=steps, internal_batch_size=batch))
            t0 = time.perf_counter()
            att.integrated_gradients(x, baselines=base, additional_forward_args=(ref.clone(),))
            seconds = time.perf_counter() - t0
        else:
            # The bare reference: forward + backward of one batch of path points without Captum, scaled to
            # the steps / batch batches IG runs (same per-batch work; one batch has the same peak as a loop).
            a = torch.linspace(0, 1, batch).view(-1, 1, 1, 1)
            pts = (base + a * (x - base)).requires_grad_(True)
            t0 = time.perf_counter()
            out = scalar(pts, ref.expand(len(pts), -1))
            torch.autograd.grad(out.sum(), pts)
            seconds = (time.perf_counter() - t0) * -(-steps // batch)
    return {"mode": mode, "batch": batch, "seconds": seconds, "peak_mb": rss_peak_mb(), "loaded_mb": loaded}


def run_child(mode: str, batch: int, steps: int, size: int) -> dict:
    cmd = [
        sys.executable,
        __file__,
        "--child",
        mode,
        "--batches",
        str(batch),
        "--steps",
        str(steps),
        "--size",
        str(size),
    ]
    out = subprocess.run(cmd, capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def machine() -> str:
    mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    return (
        f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, torch threads "
        f"{torch.get_num_threads()}, {mem:.0f} GiB RAM, torch {torch.__version__}, "
        f"mkldnn {torch.backends.mkldnn.is_available()}"
    )


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--batches", default="8,16", help="internal_batch_size values, comma separated")
    p.add_argument("--steps", type=int, default=64)
    p.add_argument("--size", type=int, default=224)
    p.add_argument("--child", default=None, help=argparse.SUPPRESS)
    a = p.parse_args()
    batches = [int(b) for b in a.batches.split(",")]
    if a.child:
        print(json.dumps(child(a.child, batches[0], a.steps, a.size)))
        return
    print(f"machine: {machine()}")
    print(
        f"IG on ResNet-50 at {a.size}, {a.steps} steps, 1 image; peak = process max RSS (model + Python "
        "included); target peak < 4096 MB"
    )
    print(
        f"{'internal_batch':>14} {'IG s/img':>9} {'bare s':>7} {'ratio':>6} {'IG peak MB':>11} "
        f"{'bare peak MB':>13} {'model-loaded MB':>16} {'< 4 GB':>7}"
    )
    for b in batches:
        ig, bare = run_child("ig", b, a.steps, a.size), run_child("bare", b, a.steps, a.size)
        ok = "yes" if ig["peak_mb"] < 4096 else "NO"
        print(
            f"{b:>14} {ig['seconds']:>9.2f} {bare['seconds']:>7.2f} {ig['seconds'] / bare['seconds']:>6.2f} "
            f"{ig['peak_mb']:>11.0f} {bare['peak_mb']:>13.0f} {ig['loaded_mb']:>16.0f} {ok:>7}"
        )


if __name__ == "__main__":
    main()
