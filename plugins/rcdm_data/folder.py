"""``folder:PATH`` — every image file under a folder (recursive), or one named file.

Ids are the path relative to the folder without its extension, in posix form, made safe with
``rcdm_core.paths.safe_id`` (so no id can point outside an output folder), sorted. Hidden files and folders
(names starting with ".") are not read. A folder reached twice through symlinks (a loop) is read once.
Unreadable files are warned about once each (stderr), listed in ``skipped`` and the rest are read.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from pathlib import Path, PurePosixPath

import numpy as np

from rcdm_core.errors import DataError
from rcdm_core.interfaces import DataSource
from rcdm_core.paths import safe_id

from .decode import DEFAULT_MAX_PIXELS, IMAGE_EXTENSIONS, Unreadable, decode_image


def warn(path: str, reason: str) -> None:
    """The one warning line for a skipped file."""
    print(f"rcdm: warning: skipping {path}: {reason}", file=sys.stderr)


class FolderSource(DataSource):
    """Images under ``root`` as ``(id, uint8 (H, W, 3))``; see the module docstring for ids and skipping."""

    def __init__(
        self,
        root: str | Path,
        *,
        background: tuple[int, int, int] = (255, 255, 255),
        max_pixels: int = DEFAULT_MAX_PIXELS,
        limit: int | None = None,
    ):
        self.root = Path(root).expanduser()
        self.background = background
        self.max_pixels = max_pixels
        self.limit = limit
        self.skipped: list[tuple[str, str]] = []
        self._warned: set[str] = set()
        if not self.root.exists():
            hint = " (a broken symlink)" if self.root.is_symlink() else ""
            raise DataError(f"data source folder:{root}: no such file or folder{hint}; check the path")
        self.single_file = not self.root.is_dir()
        if self.single_file:
            self.entries = [(safe_id(self.root.stem), self.root)]
            self._listing_skips: list[tuple[str, str]] = []
            self._decode_or_fail(self.root)
        else:
            files, self._listing_skips = list_image_files(self.root)
            for path, reason in self._listing_skips:
                self._warn_once(path, reason)
            if not files:
                raise DataError(
                    f"data source folder:{root} contains no image files (looked for {', '.join(IMAGE_EXTENSIONS)}); "
                    "point it at a folder of images"
                )
            self.entries = assign_ids(self.root, files)

    def __len__(self) -> int:
        """Candidate files (before unreadable ones are skipped)."""
        return len(self.entries) if self.limit is None else min(self.limit, len(self.entries))

    def __iter__(self) -> Iterator[tuple[str, np.ndarray]]:
        self.skipped = list(self._listing_skips)
        yielded = 0
        for image_id, path in self.entries:
            if self.limit is not None and yielded >= self.limit:
                return
            try:
                arr = decode_image(path, background=self.background, max_pixels=self.max_pixels)
            except Unreadable as exc:
                self.skipped.append((str(path), str(exc)))
                self._warn_once(str(path), str(exc))
                continue
            yielded += 1
            yield image_id, arr
        if yielded == 0:
            raise DataError(
                f"data source folder:{self.root}: none of its {len(self.entries)} image file(s) could be read "
                "(see the warnings above)"
            )

    def _decode_or_fail(self, path: Path) -> None:
        try:
            decode_image(path, background=self.background, max_pixels=self.max_pixels)
        except Unreadable as exc:
            raise DataError(f"data source folder:{path}: cannot read the image: {exc}") from None

    def _warn_once(self, path: str, reason: str) -> None:
        if path not in self._warned:
            self._warned.add(path)
            warn(path, reason)


def list_image_files(root: Path) -> tuple[list[Path], list[tuple[str, str]]]:
    """Walk ``root`` following symlinks, each real folder once -> (image files, [(path, reason) not read]).

    An explicit stack instead of recursion, so a very deep tree cannot exhaust Python's recursion limit.
    """
    files: list[Path] = []
    skipped: list[tuple[str, str]] = []
    visited: dict[str, Path] = {}
    stack = [root]
    while stack:
        folder = stack.pop()
        real = os.path.realpath(folder)
        if real in visited:
            skipped.append((str(folder), f"symlink loop: the same folder as {visited[real]}; not read twice"))
            continue
        visited[real] = folder
        try:
            entries = sorted(os.scandir(folder), key=lambda e: e.name)
        except OSError as exc:
            skipped.append((str(folder), f"cannot list the folder ({exc.strerror or exc})"))
            continue
        for entry in reversed(entries):  # reversed: the stack pops them in name order
            if entry.name.startswith("."):
                continue
            path = Path(entry.path)
            try:
                is_dir = entry.is_dir()  # follows symlinks
            except OSError:
                is_dir = False
            if is_dir:
                stack.append(path)
            elif path.suffix.lower() in IMAGE_EXTENSIONS:
                if entry.is_symlink() and not path.exists():
                    skipped.append((str(path), "broken symlink"))
                else:
                    files.append(path)
    return files, skipped


def assign_ids(root: Path, files: list[Path]) -> list[tuple[str, Path]]:
    """Files -> sorted [(id, path)]; id = safe relative path without extension, unique.

    Where two files share an id (``a.png`` and ``a.jpg``, or names that sanitise alike) they keep their
    extension, and a ``~N`` suffix breaks any tie that remains.
    """
    rel = {f: PurePosixPath(*f.relative_to(root).parts) for f in files}
    plain = {f: safe_id(str(r.with_suffix(""))) for f, r in rel.items()}
    counts: dict[str, int] = {}
    for image_id in plain.values():
        counts[image_id] = counts.get(image_id, 0) + 1
    out: dict[str, Path] = {}
    for f in sorted(files, key=lambda p: str(rel[p])):
        image_id = plain[f] if counts[plain[f]] == 1 else safe_id(str(rel[f]))
        base, n = image_id, 1
        while image_id in out:
            image_id, n = f"{base}~{n}", n + 1
        out[image_id] = f
    return sorted(out.items())
