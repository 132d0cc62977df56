"""Turning image ids into file names that stay inside the folder they are written to.

Ids come from data sources (file names scraped from anywhere, IDX file stems); anything that writes one id per
file (samples, encodings, figures) goes through :func:`safe_id` or :func:`safe_join`.
"""

from __future__ import annotations

from pathlib import Path

from .errors import DataError

# Characters that are unsafe or illegal in a file name on some platform, plus control characters.
_BAD_CHARS = set('<>:"|?*') | {chr(c) for c in range(32)} | {"\x7f"}


def safe_id(image_id: str) -> str:
    """An id -> a relative posix path with no ``..``, no root, no drive and no control characters.

    ``"../x"`` -> ``"__/x"``, ``"/etc/passwd"`` -> ``"etc/passwd"``, ``"a\\b"`` -> ``"a/b"``, ``""`` -> ``"_"``.
    Ids that are already safe come back unchanged, so stable ids stay stable.
    """
    parts = []
    for part in str(image_id).replace("\\", "/").split("/"):
        part = "".join("_" if c in _BAD_CHARS else c for c in part)
        # Windows drops trailing dots and spaces, which would turn "..." or ". ." into "..".
        stripped = part.rstrip(". ")
        if part in ("", "."):
            continue
        if part == ".." or not stripped:
            part = "_" * len(part)
        parts.append(part)
    return "/".join(parts) or "_"


def safe_join(root: str | Path, image_id: str, suffix: str = "") -> Path:
    """``root / safe_id(image_id) + suffix``, checked to resolve inside ``root`` (symlinked parents included)."""
    root = Path(root)
    path = root / (safe_id(image_id) + suffix)
    if not path.resolve().is_relative_to(root.resolve()):
        raise DataError(
            f"id {image_id!r} would be written outside {root}; rename the file or the folder link"
        )
    return path
