"""The ``attribution`` probe: do Captum attributions and RCDM agree on what the representation depends on?"""

from __future__ import annotations

import re
import sys
import time
from contextlib import ExitStack
from typing import Any

import torch
from captum.metrics import infidelity, sensitivity_max

from rcdm_core.context import ArmRuntime, ProbeContext
from rcdm_core.errors import ConfigError
from rcdm_core.grad import input_gradient_mode as attribution_mode
from rcdm_core.grad import preserved_modes
from rcdm_core.interfaces import Probe
from rcdm_core.io import atomic_torch_save, atomic_write_json
from rcdm_core.progress import bar
from rcdm_core.records import ProbeResult

from .agreement import spearman, top_iou
from .baselines import make_baselines
from .figures import panel_row
from .grad import seeded
from .gradcam_layer import choose_layer, gradcam_target, trace_outputs
from .methods import LABELS, Attributor, MethodSettings, to_map
from .options import OPTIONS, as_methods, as_switch
from .rcdm_maps import rcdm_maps
from .scalar import SimilarityScalar, parse_target, reference_vectors

# RCDM maps compared with each attribution; the sample std is negated so that positive = agreement
# (low std = the representation pins the pixel down = the pixel matters to it).
COMPARED = {
    "low_sample_std": "sample_std",
    "occlusion_pixel": "occlusion_pixel",
    "occlusion_rep": "occlusion_rep",
}


def _mean(values: list[Any]) -> float | None:
    vals = [float(v) for v in values if v is not None]
    return sum(vals) / len(vals) if vals else None


def _warn(notes: list[str], text: str) -> None:
    notes.append(text)
    print(f"rcdm: WARNING: attribution: {text}", file=sys.stderr)


class AttributionProbe(Probe):
    """For each arm and image: Captum attribution maps of the representation's similarity scalar, RCDM's maps
    (sample std, occlusion through RCDM), their agreement (Spearman, top-k% IoU), captum's infidelity and
    sensitivity_max, IG's convergence delta, and a panel-row PNG per image."""

    name = "attribution"

    def __init__(self, **options: Any):
        self.options = {**{k: v.default for k, v in OPTIONS.items()}, **options}
        self.options["methods"] = as_methods(self.options["methods"])
        self.options["noise_tunnel"] = as_switch(self.options["noise_tunnel"])

    def run(self, ctx: ProbeContext) -> ProbeResult:
        result = ProbeResult()
        summaries = []
        for arm in ctx.arms:
            with preserved_modes(arm.rep.encoder.module):
                one = ArmAttribution(ctx, arm, self.options).run()
            result.metrics[arm.name] = one["metrics"]
            result.figures += one["figures"]
            result.tables.append(one["table"])
            result.notes += [f"{arm.name}: {n}" for n in one["notes"]]
            summaries.append(f"{arm.name}: {one['summary']}")
        result.notes.append(
            "Agreement compares |attribution| maps with RCDM maps: low_sample_std is the NEGATED sample std "
            "(pixels the samples agree on), occlusion_* how far RCDM samples moved when a patch was occluded. "
            "Positive Spearman / high IoU = the two views pick the same pixels."
        )
        result.summary = "; ".join(summaries)
        return result


class ArmAttribution:
    """One arm's attribution study; ``run()`` returns metrics, figures, a table, notes and a summary line."""

    def __init__(self, ctx: ProbeContext, arm: ArmRuntime, options: dict[str, Any]):
        self.ctx, self.arm, self.o = ctx, arm, options
        self.notes: list[str] = []
        images = ctx.images_for(arm)
        n = options["n_images"] or len(images)
        self.images = images[:n].detach().float().cpu()
        self.size = int(self.images.shape[-1])
        self.kind, self.index = parse_target(options["target"])
        self.baselines = make_baselines(options["baseline"], self.images, options["blur_sigma"] or None)
        self.settings = self._settings()

    def _settings(self) -> MethodSettings:
        o, size = self.o, self.size
        patch = o["occlusion_patch"] or max(1, size // 8)
        noise = o["noise_tunnel"] == "on" or (o["noise_tunnel"] == "auto" and self.kind == "self")
        if not noise and self.kind == "self" and {"saliency", "gradcam"} & set(o["methods"]):
            self.notes.append(
                "noise_tunnel is off with target=self: the cosine is maximal at x' = x, so its gradient there is "
                "~0 and the Saliency/GradCam maps are numerical noise"
            )
        return MethodSettings(
            ig_steps=o["ig_steps"],
            internal_batch_size=o["internal_batch_size"],
            gs_samples=o["gradient_shap_samples"],
            gs_stdev=o["gradient_shap_stdev"],
            gs_batch=o["gradient_shap_batch"],
            noise=noise,
            nt_samples=o["nt_samples"],
            nt_stdev=o["nt_stdev"],
            nt_batch=o["nt_samples_batch_size"],
            occlusion_patch=patch,
            occlusion_stride=o["occlusion_stride"] or patch,
            perturbations_per_eval=o["perturbations_per_eval"],
        )

    # -- steps ---------------------------------------------------------------------------------------------
    def run(self) -> dict[str, Any]:
        if len(self.images) == 0:
            raise ConfigError("attribution: the run has no images to attribute")
        refs = self._references()
        attributions = self._attribute_all(refs)
        rcdm = [
            self._rcdm(i)
            for i in bar(
                range(len(self.images)), desc=f"RCDM maps {self.arm.name}", progress=self.ctx.progress
            )
        ]
        self._note_constant_maps(rcdm)
        per_image = [self._agreement(a, r) for a, r in zip(attributions, rcdm)]
        figures = self._figures(attributions, rcdm, per_image)
        self._write_per_image(per_image)
        self._write_maps(attributions, rcdm)
        metrics = self._aggregate(per_image)
        return {
            "metrics": metrics,
            "figures": figures,
            "table": self._table(metrics),
            "notes": self.notes,
            "summary": self._summary(metrics),
        }

    def _references(self) -> torch.Tensor:
        ctx, arm = self.ctx, self.arm
        own = ctx.encode(arm, self.images)
        pool_ref = ctx.images_for(arm, ctx.reference) if ctx.reference is not None else None
        refs = reference_vectors(
            self.kind, self.index, own, lambda p: ctx.encode(arm, p), ctx.images_for(arm), pool_ref
        )
        if self.kind != "dim" and self.o["baseline"] != "":
            rb = ctx.encode(arm, self.baselines)
            if bool((rb.norm(dim=-1) < 1e-6 * own.norm(dim=-1).clamp_min(1e-12)).any()):
                _warn(
                    self.notes,
                    f"baseline {self.o['baseline']!r} maps to a (near) zero representation: the "
                    "cosine is degenerate there, IG/GradientShap/Occlusion maps are unreliable",
                )
        return refs

    def _attribute_all(self, refs: torch.Tensor) -> list[dict[str, Any]]:
        module = self.arm.rep.encoder.module
        device = self.ctx.device
        out = []
        with ExitStack() as stack:
            stack.enter_context(attribution_mode(module))
            # Clones: tensors made under inference mode cannot be saved for backward.
            xs = self.images.to(device).clone()
            bs = self.baselines.to(device).clone()
            rs = refs.to(device).clone()
            scalar = SimilarityScalar(self.arm.rep, projection=self.kind == "dim")
            layer = (
                self._gradcam_layer(stack, scalar, xs[:1], rs[:1]) if "gradcam" in self.o["methods"] else None
            )
            attributor = Attributor(scalar, self.settings, layer)
            for i in bar(range(len(xs)), desc=f"attribution {self.arm.name}", progress=self.ctx.progress):
                out.append(
                    self._attribute_one(attributor, scalar, xs[i : i + 1], bs[i : i + 1], rs[i : i + 1], i)
                )
        return out

    def _gradcam_layer(self, stack: ExitStack, scalar, x: torch.Tensor, r: torch.Tensor):
        module = self.arm.rep.encoder.module
        events = trace_outputs(module, lambda: scalar(x, r), n=1)
        shapes = dict(events)
        name = self.o["gradcam_layer"]
        if name == "auto":
            name = choose_layer(module, events, n=1)
        elif name not in shapes:
            known = ", ".join(sorted({e for e, s in events if len(s) in (3, 4)})[:12])
            raise ConfigError(
                f"attribution option gradcam_layer={name!r} is not a module that runs in this "
                f"encoder with a tensor output; candidates: {known}"
            )
        self.gradcam_name = name
        return stack.enter_context(gradcam_target(module, name, shapes[name], n=1))

    def _attribute_one(self, attributor: Attributor, scalar, x, b, r, i: int) -> dict[str, Any]:
        o, seed = self.o, self.ctx.seed * 100_003 + i
        maps, extra = {}, {"seconds": {}, "infidelity": {}, "sensitivity_max": {}}
        for method in o["methods"]:
            explain = attributor.explain(method)
            t0 = time.perf_counter()
            with seeded(seed, self.ctx.device):
                attr = explain(x, baselines=b, additional_forward_args=(r,)).detach()
            extra["seconds"][method] = time.perf_counter() - t0
            maps[method] = to_map(attr)
            if method == "integrated_gradients":
                extra["ig"] = self._ig_delta(scalar, x, b, r, attributor.last_delta, i)
            full = attr.expand_as(x) / attr.shape[1] if attr.shape[1] != x.shape[1] else attr
            extra["infidelity"][method] = self._infidelity(scalar, x, r, full, seed)
            extra["sensitivity_max"][method] = self._sensitivity(explain, x, b, r, seed)
        return {"maps": maps, **extra}

    def _ig_delta(self, scalar, x, b, r, delta: torch.Tensor, i: int) -> dict[str, float]:
        with torch.no_grad():
            gap = float((scalar(x, r) - scalar(b, r)).abs().sum())
        abs_delta = float(delta.abs().sum())
        rel = abs_delta / max(gap, 1e-8)
        if rel > self.o["delta_warn"]:
            _warn(
                self.notes,
                f"image {self.ctx.ids[i] if i < len(self.ctx.ids) else i}: IG convergence delta "
                f"{abs_delta:.3g} is {rel:.0%} of f(x) - f(baseline) = {gap:.3g}; raise ig_steps or "
                "change the baseline",
            )
        return {"abs_delta": abs_delta, "rel_delta": rel, "f_gap": gap}

    def _infidelity(self, scalar, x, r, attr, seed: int) -> float | None:
        n, std = self.o["infidelity_samples"], self.o["infidelity_noise"]
        if n <= 0:
            return None

        def perturb(inputs):
            noise = std * torch.randn_like(inputs)
            return noise, inputs - noise

        with seeded(seed + 1, self.ctx.device):
            val = infidelity(
                scalar,
                perturb,
                x,
                attr,
                additional_forward_args=(r,),
                n_perturb_samples=n,
                max_examples_per_batch=max(1, min(n, self.o["perturbations_per_eval"])),
                normalize=True,
            )
        return float(val.sum())

    def _sensitivity(self, explain, x, b, r, seed: int) -> float | None:
        n = self.o["sensitivity_samples"]
        if n <= 0:
            return None
        with seeded(seed + 2, self.ctx.device):
            val = sensitivity_max(
                explain,
                x,
                perturb_radius=self.o["sensitivity_radius"],
                n_perturb_samples=n,
                max_examples_per_batch=1,
                baselines=b,
                additional_forward_args=(r,),
            )
        return float(val.sum())

    def _rcdm(self, i: int) -> dict[str, torch.Tensor]:
        k = self.o["n_samples"] or self.ctx.n_samples
        if k < 2 and i == 0:
            self.notes.append(
                "fewer than 2 RCDM samples per image: the sample std map is zero (no agreement)"
            )
        patch = (self.o["rcdm_patch"] or max(1, self.size // 4)) if self.o["rcdm_occlusion"] else 0
        ids = [i * k + j for j in range(k)]
        return rcdm_maps(self.ctx, self.arm, self.images[i], self.baselines[i], ids, self.ctx.seed, patch)

    def _note_constant_maps(self, rcdm: list[dict[str, torch.Tensor]]) -> None:
        for name in ("occlusion_pixel", "sample_std"):
            if name in rcdm[0] and all(float(r[name].max() - r[name].min()) == 0 for r in rcdm):
                self.notes.append(
                    f"the RCDM {name} map is constant for every image, so its agreement is n/a: the samples "
                    + (
                        "did not move when any patch was occluded"
                        if name != "sample_std"
                        else "are all equal"
                    )
                    + " (a denoiser that ignores its condition, e.g. untrained, or too few samples)"
                )

    def _agreement(self, attributed: dict[str, Any], rcdm: dict[str, torch.Tensor]) -> dict[str, Any]:
        top = self.o["top_k"]
        agree: dict[str, Any] = {}
        for method, m in attributed["maps"].items():
            agree[method] = {}
            for key, rname in COMPARED.items():
                if rname not in rcdm:
                    continue
                other = -rcdm[rname] if key == "low_sample_std" else rcdm[rname]
                agree[method][f"vs_{key}"] = {"spearman": spearman(m, other), "iou": top_iou(m, other, top)}
        rcdm_stats = {f"mean_{k}": float(v.mean()) for k, v in rcdm.items() if k != "samples"}
        return {
            "agreement": agree,
            "rcdm": rcdm_stats,
            **{k: v for k, v in attributed.items() if k != "maps"},
        }

    # -- outputs -------------------------------------------------------------------------------------------
    def _aggregate(self, per_image: list[dict[str, Any]]) -> dict[str, Any]:
        def avg(path: tuple[str, ...]) -> float | None:
            vals = []
            for row in per_image:
                for key in path:
                    row = row.get(key) if isinstance(row, dict) else None
                vals.append(row)
            return _mean(vals)

        iou_key = f"iou_top{self.o['top_k']:g}pct"
        first = per_image[0]
        metrics: dict[str, Any] = {
            "n_images": len(per_image),
            "target": self.o["target"],
            "baseline": self.o["baseline"],
        }
        metrics["agreement"] = {
            m: {
                vs: {
                    "spearman": avg(("agreement", m, vs, "spearman")),
                    iou_key: avg(("agreement", m, vs, "iou")),
                }
                for vs in first["agreement"][m]
            }
            for m in first["agreement"]
        }
        for group in ("infidelity", "sensitivity_max", "seconds"):
            metrics[group if group != "seconds" else "seconds_per_image"] = {
                m: avg((group, m)) for m in first[group]
            }
        if "ig" in first:
            metrics["ig_convergence"] = {k: avg(("ig", k)) for k in ("abs_delta", "rel_delta")}
            metrics["ig_convergence"]["max_rel_delta"] = max(r["ig"]["rel_delta"] for r in per_image)
        metrics["rcdm"] = {k: avg(("rcdm", k)) for k in first["rcdm"]}
        if "gradcam" in self.o["methods"]:
            metrics["gradcam_layer"] = self.gradcam_name
        return metrics

    def _table(self, metrics: dict[str, Any]) -> dict[str, Any]:
        iou_key = f"iou_top{self.o['top_k']:g}pct"
        rows = []
        for m, per in metrics["agreement"].items():
            for vs, val in per.items():
                rows.append(
                    [
                        LABELS[m],
                        vs.removeprefix("vs_"),
                        val["spearman"],
                        val[iou_key],
                        metrics["infidelity"].get(m),
                        metrics["sensitivity_max"].get(m),
                        metrics["seconds_per_image"].get(m),
                    ]
                )
        return {
            "title": f"attribution vs RCDM, arm {self.arm.name} (mean over {metrics['n_images']} images)",
            "columns": [
                "method",
                "RCDM map",
                "Spearman",
                f"IoU top {self.o['top_k']:g}%",
                "infidelity",
                "sensitivity_max",
                "s/image",
            ],
            "rows": rows,
        }

    def _summary(self, metrics: dict[str, Any]) -> str:
        vs = "vs_occlusion_pixel" if self.o["rcdm_occlusion"] else "vs_low_sample_std"
        parts = []
        for m, per in metrics["agreement"].items():
            rho = per.get(vs, {}).get("spearman")
            parts.append(f"{LABELS[m]} {rho:.2f}" if rho is not None else f"{LABELS[m]} n/a")
        return f"Spearman with RCDM {vs.removeprefix('vs_')}: " + ", ".join(parts)

    def _figures(self, attributions, rcdm, per_image) -> list[str]:
        out_dir = self.ctx.probe_dir("attribution")
        paths = []
        for i in range(min(self.o["max_figures"], len(self.images))):
            key = "vs_occlusion_pixel" if "occlusion_pixel" in rcdm[i] else "vs_low_sample_std"
            tag = "occl" if key == "vs_occlusion_pixel" else "-std"
            scores = {}
            for m in attributions[i]["maps"]:
                rho = per_image[i]["agreement"][m].get(key, {}).get("spearman")
                scores[LABELS[m]] = f"rho({tag})={rho:.2f}" if rho is not None else f"rho({tag})=n/a"
            maps = {k: v for k, v in rcdm[i].items() if k != "samples"}
            attrs_ = {LABELS[m]: v for m, v in attributions[i]["maps"].items()}
            ident = re.sub(
                r"[^A-Za-z0-9_.-]+", "_", str(self.ctx.ids[i]) if i < len(self.ctx.ids) else str(i)
            )
            path = out_dir / f"{_stem(self.arm.name)}_{i:03d}_{ident[:40]}.png"
            panel_row(path, self.images[i], rcdm[i]["samples"], maps, attrs_, scores)
            paths.append(str(path.relative_to(self.ctx.out_dir)))
        return paths

    def _write_maps(self, attributions, rcdm) -> None:
        """All maps as tensors (N, S, S) per method / RCDM map, for re-analysis: ``{arm}_maps.pt``."""
        ids = [str(self.ctx.ids[i]) if i < len(self.ctx.ids) else str(i) for i in range(len(attributions))]
        maps = {
            "ids": ids,
            "attributions": {
                m: torch.stack([a["maps"][m] for a in attributions]) for m in attributions[0]["maps"]
            },
            "rcdm": {k: torch.stack([r[k] for r in rcdm]) for k in rcdm[0] if k != "samples"},
        }
        atomic_torch_save(maps, self.ctx.probe_dir("attribution") / f"{_stem(self.arm.name)}_maps.pt")

    def _write_per_image(self, per_image: list[dict[str, Any]]) -> None:
        ids = [str(self.ctx.ids[i]) if i < len(self.ctx.ids) else str(i) for i in range(len(per_image))]
        atomic_write_json(
            self.ctx.probe_dir("attribution") / f"{_stem(self.arm.name)}_per_image.json",
            {"ids": ids, "images": per_image, "options": {k: v for k, v in self.o.items()}},
        )


def _stem(name: str) -> str:
    """An arm name as part of a file name: no separators, so the file stays in the probe folder."""
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", name)
