"""Data-source plumbing: parse a spec, build the registered source, gather images at one size."""

from __future__ import annotations

import sys
from urllib.parse import parse_qsl

import numpy as np
import torch

from .config import parse_value, resolve_options
from .errors import DataError
from .images import arrays_to_pixels, encoder_input
from .interfaces import DataSource
from .plugins import get_manager


def parse_data_spec(spec: str) -> tuple[str, dict[str, object]]:
    """``builtin:photos?split=heldout&size=32`` -> ("builtin:photos", {"split": "heldout", "size": 32})."""
    base, _, query = spec.partition("?")
    opts = {k: parse_value(v) for k, v in parse_qsl(query, keep_blank_values=True)} if query else {}
    return base, opts


def open_source(spec: str) -> DataSource:
    base, opts = parse_data_spec(spec)
    rec, arg = get_manager().get("data", base)
    options = resolve_options(f"data source {base!r}", rec.options, opts)
    src = rec.factory(arg, **options)
    src.spec = spec
    return src


def load_images(
    spec: str, limit: int | None = None, size: int | None = None
) -> tuple[list[str], torch.Tensor]:
    """Read up to ``limit`` images -> (ids, pixels (N, 3, S, S)); each image short-side resized + centre
    cropped to ``size`` (default: the first image's short side). Unreadable files are warned about and counted.
    """
    src = open_source(spec)
    ids: list[str] = []
    tensors: list[torch.Tensor] = []
    for image_id, arr in src:
        t = arrays_to_pixels([np.ascontiguousarray(arr)])
        if size is None:
            size = min(t.shape[-2:])
        tensors.append(encoder_input(t, size, mode="bicubic"))
        ids.append(image_id)
        if limit is not None and len(ids) >= limit:
            break
    skipped = getattr(src, "skipped", [])
    if skipped:
        print(f"rcdm: warning: skipped {len(skipped)} unreadable file(s) in {spec}", file=sys.stderr)
    if not ids:
        raise DataError(
            f"data source {spec!r} yielded no images" + (f" ({len(skipped)} unreadable)" if skipped else "")
        )
    return ids, torch.cat(tensors)
