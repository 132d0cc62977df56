"""Progress bars (tqdm), silenced by --no-progress / RCDM_NO_PROGRESS=1 and on ranks other than 0."""

from __future__ import annotations

import os
from typing import Any


def enabled(progress: bool = True) -> bool:
    from .dist import rank

    return progress and os.environ.get("RCDM_NO_PROGRESS") != "1" and rank() == 0


def bar(iterable: Any = None, *, total: int | None = None, desc: str = "", progress: bool = True, **kw: Any):
    from tqdm.auto import tqdm

    return tqdm(
        iterable, total=total, desc=desc, disable=not enabled(progress), leave=False, dynamic_ncols=True, **kw
    )
