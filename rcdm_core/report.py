"""The report writer: one self-contained HTML page per run (figures embedded, tables from metrics.json).

Layout: what was run (arms, run settings, versions), a summary line per probe, then per probe its plain-language
readings (the probe's ``notes``; where a probe gives none, a generic reading generated from its numbers), its own
tables, its figures, and every metric it recorded in one table (rows = metrics, columns = arms).
"""

from __future__ import annotations

import base64
import html
import json
from pathlib import Path
from typing import Any

from .io import atomic_write_text

# How many numbers the generic reading quotes per probe (the full table is always there).
READING_MAX_METRICS = 6


def flatten(d: Any, prefix: str = "") -> dict[str, Any]:
    """Nested metrics -> {"a.b": value}; a {mean, std, values} leaf becomes "mean ± std"."""
    out: dict[str, Any] = {}
    if isinstance(d, dict) and set(d) >= {"mean", "std"} and isinstance(d.get("mean"), (int, float)):
        out[prefix.rstrip(".")] = d
        return out
    if isinstance(d, dict):
        for k, v in d.items():
            out.update(flatten(v, f"{prefix}{k}."))
        return out
    out[prefix.rstrip(".")] = d
    return out


def fmt(v: Any) -> str:
    if isinstance(v, dict) and "mean" in v:
        return f"{fmt(v['mean'])} ± {fmt(v['std'])}"
    if isinstance(v, bool):
        return "yes" if v else "no"
    if isinstance(v, float):
        return f"{v:.4g}"
    if isinstance(v, list):
        return "[" + ", ".join(fmt(x) for x in v[:8]) + (", …" if len(v) > 8 else "") + "]"
    if v is None:
        return "–"
    return html.escape(str(v))


def _number(v: Any) -> float | None:
    """A metric leaf as a float (the mean of a repeats aggregate), or None when it is not a number."""
    if isinstance(v, dict) and isinstance(v.get("mean"), (int, float)):
        return float(v["mean"])
    if isinstance(v, (int, float)) and not isinstance(v, bool):
        return float(v)
    return None


def _per_arm(metrics: dict[str, Any], arms: list[str]) -> dict[str, dict[str, Any]]:
    return {a: flatten(metrics.get(a, {})) for a in arms if isinstance(metrics.get(a), dict)}


def arm_table(metrics: dict[str, Any], arms: list[str]) -> str:
    """Rows = metric names, columns = arms (side by side); top-level keys that are not arms form their own rows."""
    per_arm = _per_arm(metrics, arms)
    rows = sorted({k for m in per_arm.values() for k in m}, key=lambda k: (k.count("."), k))
    parts = []
    if per_arm:
        head = "".join(f"<th>{html.escape(a)}</th>" for a in per_arm)
        body = "".join(
            f"<tr><td>{html.escape(r)}</td>"
            + "".join(f"<td>{fmt(per_arm[a].get(r, ''))}</td>" for a in per_arm)
            + "</tr>"
            for r in rows
        )
        parts.append(f"<table><tr><th>metric</th>{head}</tr>{body}</table>")
    other = flatten({k: v for k, v in metrics.items() if k not in per_arm})
    if other:
        body = "".join(f"<tr><td>{html.escape(k)}</td><td>{fmt(v)}</td></tr>" for k, v in other.items())
        parts.append(f"<table><tr><th>metric</th><th>value</th></tr>{body}</table>")
    return "\n".join(parts)


def generic_reading(metrics: dict[str, Any], arms: list[str]) -> list[str]:
    """Plain sentences from the numbers, for a probe that gives no ``notes`` of its own.

    With several arms: for each shared numeric metric (the first few), which arm is higher and by how much.
    With one arm: the first few numbers. Returns [] when the probe recorded no numbers.
    """
    per_arm = _per_arm(metrics, arms)
    numeric = {a: {k: n for k, v in m.items() if (n := _number(v)) is not None} for a, m in per_arm.items()}
    numeric = {a: m for a, m in numeric.items() if m}
    if not numeric:
        other = {k: n for k, v in flatten(metrics).items() if (n := _number(v)) is not None}
        if not other:
            return []
        items = list(other.items())[:READING_MAX_METRICS]
        return [
            "This probe gives no reading of its own; its numbers: "
            + _join(f"{k} = {v:.3g}" for k, v in items)
            + "."
        ]
    names = list(numeric)
    if len(names) == 1:
        a = names[0]
        items = list(numeric[a].items())[:READING_MAX_METRICS]
        return [
            f"This probe gives no reading of its own; arm {a}: "
            + _join(f"{k} = {v:.3g}" for k, v in items)
            + "."
        ]
    shared = [k for k in numeric[names[0]] if all(k in numeric[a] for a in names[1:])]
    sentences = []
    for key in shared[:READING_MAX_METRICS]:
        vals = {a: numeric[a][key] for a in names}
        hi = max(vals, key=vals.get)
        lo = min(vals, key=vals.get)
        listing = ", ".join(f"{a} {v:.3g}" for a, v in vals.items())
        if vals[hi] == vals[lo]:
            sentences.append(f"{key}: equal across arms ({listing})")
        else:
            sentences.append(f"{key}: highest for {hi}, lowest for {lo} ({listing})")
    if not sentences:
        return ["This probe gives no reading of its own, and its arms share no numeric metric to compare."]
    return ["This probe gives no reading of its own; comparing the arms: " + "; ".join(sentences) + "."]


def _join(items) -> str:
    return ", ".join(items)


def _table_html(t: dict[str, Any]) -> str:
    cols = t.get("columns", [])
    head = "".join(f"<th>{html.escape(str(c))}</th>" for c in cols)
    body = "".join("<tr>" + "".join(f"<td>{fmt(c)}</td>" for c in row) + "</tr>" for row in t.get("rows", []))
    title = f"<h3>{html.escape(t['title'])}</h3>" if t.get("title") else ""
    caption = f"<p class='caption'>{html.escape(t['caption'])}</p>" if t.get("caption") else ""
    return f"{title}<table><tr>{head}</tr>{body}</table>{caption}"


def _img(run_dir: Path, rel: str) -> str:
    path = run_dir / rel
    if not path.exists():
        return f"<p class='missing'>figure {html.escape(rel)} was listed by the probe but is missing</p>"
    data = base64.b64encode(path.read_bytes()).decode("ascii")
    return (
        f'<figure><img src="data:image/png;base64,{data}" data-file="{html.escape(rel)}" alt="{html.escape(rel)}">'
        f"<figcaption>{html.escape(rel)}</figcaption></figure>"
    )


CSS = """body{font-family:system-ui,sans-serif;max-width:1200px;margin:2em auto;padding:0 1em;color:#222}
table{border-collapse:collapse;margin:.5em 0 1em}td,th{border:1px solid #ccc;padding:.25em .6em;text-align:right}
td:first-child,th:first-child{text-align:left}figure{display:inline-block;margin:.4em;vertical-align:top}
img{image-rendering:pixelated;max-width:100%}figcaption{font-size:.75em;color:#666}.reading{background:#f4f7fb;
padding:.5em 1em;border-left:4px solid #4a78b5}.warn{background:#fff4e5;padding:.5em 1em;border-left:4px solid
#d9822b}.missing{color:#b00}.caption{font-size:.85em;color:#555}code{background:#eee;padding:0 .2em}
details summary{cursor:pointer;color:#4a78b5}"""


def _arms_table(doc: dict[str, Any]) -> str:
    cols = ("arm", "encoder", "layer", "input_norm", "weights", "checkpoint", "dim", "image size")
    rows = []
    for name, a in doc.get("arms", {}).items():
        weights = "RANDOM (no weights given)" if a.get("random_weights") else a.get("weights")
        vals = (
            name,
            a.get("encoder"),
            a.get("layer"),
            a.get("input_norm"),
            weights,
            a.get("checkpoint"),
            a.get("dim"),
            a.get("image_size"),
        )
        rows.append("<tr>" + "".join(f"<td>{fmt(x)}</td>" for x in vals) + "</tr>")
    head = "".join(f"<th>{c}</th>" for c in cols)
    return f"<table><tr>{head}</tr>{''.join(rows)}</table>"


def _settings_table(config: dict[str, Any], doc: dict[str, Any]) -> str:
    """Run settings as (setting, value) rows; every value is escaped by ``fmt``."""
    from . import __version__

    versions = config.get("versions", {})
    rows = [
        ("sampler", fmt(doc.get("sampler", config.get("sampler")))),
        ("seed", fmt(doc.get("seed", config.get("seed")))),
        ("repeats (seeds seed .. seed+R-1)", fmt(doc.get("repeats", config.get("repeats")))),
        ("images", f"{fmt(doc.get('n_images'))} from {fmt(config.get('data'))}"),
        ("samples per image", fmt(config.get("n_samples"))),
        ("reference set", fmt(config.get("reference"))),
        (
            "device / precision / batch",
            f"{fmt(config.get('device'))} / {fmt(config.get('precision'))} / {fmt(config.get('batch_size'))}",
        ),
        ("probes", fmt(", ".join(doc.get("probes", {})))),
        (
            "versions",
            f"rcdm {fmt(versions.get('rcdm', __version__))}, torch {fmt(versions.get('torch'))}, "
            f"python {fmt(versions.get('python'))}",
        ),
        ("git commit", fmt(config.get("git_commit"))),
    ]
    for probe, opts in (config.get("probe") or {}).items():
        if opts:
            rows.append(
                (f"options of {probe}", fmt(", ".join(f"{k} = {json.dumps(v)}" for k, v in opts.items())))
            )
    body = "".join(f"<tr><td>{html.escape(k)}</td><td>{v}</td></tr>" for k, v in rows)
    return f"<table><tr><th>setting</th><th>value</th></tr>{body}</table>"


def _probe_section(run_dir: Path, name: str, p: dict[str, Any], arms: list[str]) -> list[str]:
    metrics = p.get("metrics", {})
    parts = [f"<h2 id='{html.escape(name)}'>{html.escape(name)}</h2>"]
    parts.append(f"<p><b>{html.escape(p.get('summary', ''))}</b> ({fmt(p.get('seconds'))} s)</p>")
    readings = list(p.get("notes") or []) or generic_reading(metrics, arms)
    for note in readings:
        parts.append(f"<p class='reading'>{html.escape(note)}</p>")
    for t in p.get("tables", []):
        parts.append(_table_html(t))
    for fig in p.get("figures", []):
        parts.append(_img(run_dir, fig))
    table = arm_table(metrics, arms)
    if table:
        parts.append(f"<details open><summary>all metrics of {html.escape(name)}</summary>{table}</details>")
    return parts


def write_report(run_dir: str | Path, config: dict[str, Any], doc: dict[str, Any]) -> Path:
    """Write ``report.html``: what was run, then each probe's reading, tables and figures.

    ``config`` is the resolved run config (as written to config.toml, with ``versions`` and ``git_commit``);
    ``doc`` the metrics document (as written to metrics.json). Figures are embedded as data URIs, each ``<img>``
    carrying ``data-file="probes/..."`` (its path relative to the run folder).
    """
    run_dir = Path(run_dir)
    arms = list(doc.get("arms", {}))
    parts = [
        "<!doctype html><html><head><meta charset='utf-8'><title>rcdm report</title>"
        f"<style>{CSS}</style></head><body>",
        "<h1>rcdm report</h1>",
        "<h2>What was run</h2>",
        _arms_table(doc),
    ]
    random_arms = [n for n, a in doc.get("arms", {}).items() if a.get("random_weights")] or [
        n for n, r in (config.get("random_weights") or {}).items() if r
    ]
    if random_arms:
        parts.append(
            f"<p class='warn'>Arm(s) {html.escape(', '.join(random_arms))} use an encoder with RANDOM weights: "
            "the numbers below say nothing about a trained representation.</p>"
        )
    parts.append(_settings_table(config, doc))
    parts.append(
        f"<details><summary>plugin versions</summary><p>{fmt(json.dumps(config.get('versions', {}).get('rcdm_plugins', {})))}</p></details>"
    )
    for note in doc.get("notes", []):
        parts.append(f"<p class='reading'>{html.escape(note)}</p>")
    probes = doc.get("probes", {})
    if probes:
        items = "".join(
            f"<li><a href='#{html.escape(n)}'>{html.escape(n)}</a>: {html.escape(p.get('summary', ''))}</li>"
            for n, p in probes.items()
        )
        parts.append(f"<h2>Summary</h2><ul>{items}</ul>")
    for name, p in probes.items():
        parts.extend(_probe_section(run_dir, name, p, arms))
    parts.append("</body></html>")
    return atomic_write_text(run_dir / "report.html", "\n".join(parts))
