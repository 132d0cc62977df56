"""The report writer: one self-contained HTML page per run (figures embedded, tables from metrics.json)."""

from __future__ import annotations

import base64
import html
import json
from pathlib import Path
from typing import Any

from .io import atomic_write_text


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
    return html.escape(str(v))


def arm_table(metrics: dict[str, Any], arms: list[str]) -> str:
    """Rows = metric names, columns = arms (side by side); top-level keys that are not arms form their own rows."""
    per_arm = {a: flatten(metrics.get(a, {})) for a in arms if isinstance(metrics.get(a), dict)}
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


def _table_html(t: dict[str, Any]) -> str:
    cols = t.get("columns", [])
    head = "".join(f"<th>{html.escape(str(c))}</th>" for c in cols)
    body = "".join("<tr>" + "".join(f"<td>{fmt(c)}</td>" for c in row) + "</tr>" for row in t.get("rows", []))
    title = f"<h3>{html.escape(t['title'])}</h3>" if t.get("title") else ""
    return f"{title}<table><tr>{head}</tr>{body}</table>"


def _img(run_dir: Path, rel: str) -> str:
    path = run_dir / rel
    data = base64.b64encode(path.read_bytes()).decode("ascii")
    return (
        f'<figure><img src="data:image/png;base64,{data}" data-file="{html.escape(rel)}" alt="{html.escape(rel)}">'
        f"<figcaption>{html.escape(rel)}</figcaption></figure>"
    )


CSS = """body{font-family:system-ui,sans-serif;max-width:1200px;margin:2em auto;padding:0 1em;color:#222}
table{border-collapse:collapse;margin:.5em 0 1em}td,th{border:1px solid #ccc;padding:.25em .6em;text-align:right}
td:first-child,th:first-child{text-align:left}figure{display:inline-block;margin:.4em;vertical-align:top}
img{image-rendering:pixelated;max-width:100%}figcaption{font-size:.75em;color:#666}.reading{background:#f4f7fb;
padding:.5em 1em;border-left:4px solid #4a78b5}code{background:#eee;padding:0 .2em}"""


def write_report(run_dir: str | Path, config: dict[str, Any], doc: dict[str, Any]) -> Path:
    """Write ``report.html``: what was run, then each probe's reading, tables and figures."""
    run_dir = Path(run_dir)
    arms = list(doc.get("arms", {}))
    parts = [
        f"<!doctype html><html><head><meta charset='utf-8'><title>rcdm report</title><style>{CSS}</style></head><body>"
    ]
    parts.append("<h1>rcdm report</h1>")
    parts.append(
        "<h2>What was run</h2><table><tr><th>arm</th><th>encoder</th><th>layer</th><th>input_norm</th>"
        "<th>weights</th><th>checkpoint</th><th>dim</th><th>image size</th></tr>"
    )
    for name, a in doc.get("arms", {}).items():
        weights = "RANDOM (no weights given)" if a.get("random_weights") else a.get("weights")
        parts.append(
            "<tr>"
            + "".join(
                f"<td>{fmt(x)}</td>"
                for x in (
                    name,
                    a.get("encoder"),
                    a.get("layer"),
                    a.get("input_norm"),
                    weights,
                    a.get("checkpoint"),
                    a.get("dim"),
                    a.get("image_size"),
                )
            )
            + "</tr>"
        )
    parts.append("</table>")
    versions = config.get("versions", {})
    parts.append(
        f"<p>sampler <code>{fmt(doc.get('sampler'))}</code>, seed {fmt(doc.get('seed'))}, repeats {fmt(doc.get('repeats'))}, "
        f"{fmt(doc.get('n_images'))} images from <code>{fmt(config.get('data'))}</code>; torch {fmt(versions.get('torch'))}, "
        f"git {fmt(config.get('git_commit'))}</p>"
    )
    parts.append(f"<p>plugins: {fmt(json.dumps(versions.get('rcdm_plugins', {})))}</p>")
    for note in doc.get("notes", []):
        parts.append(f"<p class='reading'>{html.escape(note)}</p>")
    for name, p in doc.get("probes", {}).items():
        parts.append(f"<h2 id='{html.escape(name)}'>{html.escape(name)}</h2>")
        parts.append(f"<p><b>{html.escape(p.get('summary', ''))}</b> ({fmt(p.get('seconds'))} s)</p>")
        for note in p.get("notes", []):
            parts.append(f"<p class='reading'>{html.escape(note)}</p>")
        for t in p.get("tables", []):
            parts.append(_table_html(t))
        parts.append(arm_table(p.get("metrics", {}), arms))
        for fig in p.get("figures", []):
            parts.append(_img(run_dir, fig))
    parts.append("</body></html>")
    return atomic_write_text(run_dir / "report.html", "\n".join(parts))
