"""Bad image input (issue 9): every case is handled with one line naming the file, and a folder run continues.

Each test records the case it tries and, once its assertions pass, that it was handled; the module prints
``bad inputs tried: N, handled: N`` at the end.
"""

from __future__ import annotations

import io
import os
import struct
import sys
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from rcdm_core.data import load_images, open_source
from rcdm_core.errors import DataError
from rcdm_core.paths import safe_join

TRIED: list[str] = []
HANDLED: list[str] = []


@pytest.fixture(scope="module", autouse=True)
def _report_counts(request):
    yield
    # Printed with capturing suspended, so the figure reaches the terminal on a passing run too.
    capture = request.config.pluginmanager.getplugin("capturemanager")
    line = f"\nbad inputs tried: {len(TRIED)}, handled: {len(HANDLED)}"
    if capture is None:  # run with -p no:capture
        print(line, file=sys.stderr)
        return
    with capture.global_and_fixture_disabled():
        print(line, file=sys.stderr)


@pytest.fixture
def case(request):
    """Count this test as one bad input tried; it counts as handled only if the test body completes."""
    TRIED.append(request.node.name)


def _handled(name: str) -> None:
    """Called as a test's last line: all its assertions held."""
    HANDLED.append(name)


def _rgb(h: int = 6, w: int = 6, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


def _jpeg_bytes(img: Image.Image, **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, "JPEG", **kw)
    return buf.getvalue()


def _folder_with(tmp_path: Path, name: str, data: bytes | Image.Image, **save_kw) -> Path:
    """A folder holding one good image ``good.png`` plus the bad file ``name``."""
    root = tmp_path / "in"
    root.mkdir(exist_ok=True)
    Image.fromarray(_rgb()).save(root / "good.png")
    if isinstance(data, Image.Image):
        data.save(root / name, **save_kw)
    else:
        (root / name).write_bytes(data)
    return root


def _read_one(path: Path, **options) -> np.ndarray:
    """Open ``folder:FILE`` and return its single image."""
    query = "&".join(f"{k}={v}" for k, v in options.items())
    items = list(open_source(f"folder:{path}" + (f"?{query}" if query else "")))
    assert len(items) == 1
    return items[0][1]


def _assert_skipped_once(capsys, root: Path, bad: str, reason: str) -> None:
    """The folder yields only good.png, lists the bad file in ``skipped`` and warns exactly once about it."""
    src = open_source(f"folder:{root}")
    assert [i for i, _ in src] == ["good"]
    assert len(src.skipped) == 1 and src.skipped[0][0].endswith(bad) and reason in src.skipped[0][1]
    list(src)  # iterating again does not warn again
    lines = [ln for ln in capsys.readouterr().err.splitlines() if ln.strip()]
    assert len(lines) == 1 and bad in lines[0] and lines[0].startswith("rcdm: warning: skipping")


# --- files that cannot be images: skipped with one warning, the run continues ----------------------------


def test_truncated_jpeg_is_skipped_with_one_warning(tmp_path, capsys, case):
    data = _jpeg_bytes(Image.fromarray(_rgb(64, 64)))
    root = _folder_with(tmp_path, "cut.jpg", data[: len(data) // 2])
    _assert_skipped_once(capsys, root, "cut.jpg", "truncated")
    _handled("truncated jpeg")


def test_zero_byte_file_is_skipped(tmp_path, capsys, case):
    root = _folder_with(tmp_path, "empty.png", b"")
    _assert_skipped_once(capsys, root, "empty.png", "0 bytes")
    _handled("zero-byte file")


def test_non_image_with_an_image_extension_is_skipped(tmp_path, capsys, case):
    root = _folder_with(tmp_path, "readme.jpg", b"# not a picture\n" * 20)
    _assert_skipped_once(capsys, root, "readme.jpg", "not an image")
    _handled("non-image with image extension")


def test_image_over_the_pixel_limit_is_refused(tmp_path, capsys, case):
    root = _folder_with(tmp_path, "big.png", Image.fromarray(_rgb(100, 100)))
    src = open_source(f"folder:{root}?max_pixels=5000")
    assert [i for i, _ in src] == ["good"] and "over the limit of 5000" in src.skipped[0][1]
    assert "big.png" in capsys.readouterr().err
    _handled("image over max_pixels")


def test_decompression_bomb_header_is_refused_before_decoding(tmp_path, capsys, case):
    """A tiny PNG whose header claims 40000 x 40000 pixels: refused from the header, nothing allocated."""
    buf = io.BytesIO()
    Image.new("L", (1, 1)).save(buf, "PNG")
    png = bytearray(buf.getvalue())
    ihdr = struct.pack(">II", 40000, 40000) + bytes(png[24:29])
    png[16:29] = ihdr
    png[29:33] = struct.pack(">I", zlib.crc32(b"IHDR" + ihdr))
    root = _folder_with(tmp_path, "bomb.png", bytes(png))
    _assert_skipped_once(capsys, root, "bomb.png", "1600000000 pixels")
    _handled("decompression bomb")


def test_broken_symlink_with_image_name_is_skipped(tmp_path, capsys, case):
    root = _folder_with(tmp_path, "fine.bmp", Image.fromarray(_rgb()))
    os.symlink(tmp_path / "gone.png", root / "dangling.png")
    src = open_source(f"folder:{root}")
    assert [i for i, _ in src] == ["fine", "good"] and src.skipped[0][1] == "broken symlink"
    assert "dangling.png" in capsys.readouterr().err
    _handled("broken symlink")


def test_folder_with_some_unreadable_files_warns_per_file_continues_and_counts(tmp_path, capsys, case):
    root = tmp_path / "mixed"
    root.mkdir()
    for k in range(3):
        Image.fromarray(_rgb(seed=k)).save(root / f"ok{k}.png")
    (root / "bad1.png").write_bytes(b"")
    (root / "bad2.jpg").write_bytes(b"GIF89a but not really")
    (root / "bad3.webp").write_bytes(b"\x00" * 50)
    ids, pixels = load_images(f"folder:{root}")
    assert ids == ["ok0", "ok1", "ok2"] and pixels.shape[0] == 3
    err = capsys.readouterr().err
    for bad in ("bad1.png", "bad2.jpg", "bad3.webp"):
        assert sum(bad in line for line in err.splitlines()) == 1
    assert "skipped 3 unreadable file(s)" in err
    src = open_source(f"folder:{root}")
    list(src)
    assert len(src.skipped) == 3
    _handled("folder with some unreadable files")


def test_folder_where_no_file_is_readable_is_a_clear_error(tmp_path, capsys, case):
    root = tmp_path / "allbad"
    root.mkdir()
    (root / "x.png").write_bytes(b"nope")
    with pytest.raises(DataError, match="none of its 1 image file"):
        list(open_source(f"folder:{root}"))
    _handled("folder with no readable file")


def test_spec_naming_one_unreadable_file_is_one_error_naming_it(tmp_path, case):
    bad = tmp_path / "photo.jpg"
    bad.write_bytes(b"\xff\xd8\xff garbage")
    with pytest.raises(DataError, match=r"folder:.*photo\.jpg: cannot read the image"):
        open_source(f"folder:{bad}")
    _handled("single unreadable file")


def test_missing_path_and_empty_folder_are_clear_errors(tmp_path, case):
    with pytest.raises(DataError, match="no such file or folder"):
        open_source(f"folder:{tmp_path / 'nowhere'}")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="contains no image files"):
        open_source(f"folder:{tmp_path / 'empty'}")
    _handled("missing path / empty folder")


def test_idx_bad_header_is_an_error_naming_the_file(tmp_path, case):
    bad = tmp_path / "images-idx3-ubyte"
    bad.write_bytes(b"\x12\x34\x56\x78" + b"\x00" * 32)
    with pytest.raises(DataError, match=r"images-idx3-ubyte: not an IDX file"):
        open_source(f"idx:{bad}")
    _handled("idx bad header")


# --- odd but valid encodings: converted, not dropped ------------------------------------------------------


def test_16bit_png_is_scaled_not_clipped_to_white(tmp_path, case):
    Image.fromarray(np.full((4, 5), 30000, dtype=np.uint16)).save(tmp_path / "deep.png")
    img = _read_one(tmp_path / "deep.png")
    assert img.shape == (4, 5, 3) and img.dtype == np.uint8
    assert np.all(img == 117)  # 30000 / 65535 * 255 = 116.7
    _handled("16-bit png")


def test_rgba_is_composited_on_the_background(tmp_path, case):
    rgba = np.zeros((2, 2, 4), dtype=np.uint8)
    rgba[0, 0] = (255, 0, 0, 0)  # fully transparent red
    rgba[0, 1] = (255, 0, 0, 255)  # opaque red
    rgba[1, :] = (0, 0, 0, 128)  # half-transparent black
    Image.fromarray(rgba, "RGBA").save(tmp_path / "alpha.png")
    white = _read_one(tmp_path / "alpha.png")
    assert white[0, 0].tolist() == [255, 255, 255] and white[0, 1].tolist() == [255, 0, 0]
    assert white[1, 0].tolist() == [127, 127, 127]  # 255 * (1 - 128/255)
    blue = _read_one(tmp_path / "alpha.png", background="0,0,255")
    assert blue[0, 0].tolist() == [0, 0, 255]
    _handled("rgba")


def test_la_is_composited_on_the_background(tmp_path, case):
    la = np.zeros((2, 2, 2), dtype=np.uint8)
    la[..., 0] = 40
    la[0, 0, 1] = 255  # one opaque pixel, the rest transparent
    Image.fromarray(la, "LA").save(tmp_path / "la.png")
    img = _read_one(tmp_path / "la.png", background="black")
    assert img[0, 0].tolist() == [40, 40, 40] and img[1, 1].tolist() == [0, 0, 0]
    _handled("la")


def test_palette_with_transparency_is_composited(tmp_path, case):
    pal = Image.new("P", (3, 1))
    pal.putpalette([255, 0, 0, 0, 255, 0] + [0] * (256 * 3 - 6))
    pal.putdata([0, 1, 0])
    pal.save(tmp_path / "pal.gif", transparency=0)
    img = _read_one(tmp_path / "pal.gif")
    assert img[0].tolist() == [[255, 255, 255], [0, 255, 0], [255, 255, 255]]
    _handled("palette with transparency")


def test_cmyk_jpeg_is_converted_to_rgb(tmp_path, case):
    Image.new("RGB", (8, 8), (200, 30, 60)).convert("CMYK").save(tmp_path / "print.jpg", quality=100)
    assert Image.open(tmp_path / "print.jpg").mode == "CMYK"
    img = _read_one(tmp_path / "print.jpg")
    assert img.shape == (8, 8, 3) and np.abs(img.astype(int) - [200, 30, 60]).max() <= 3
    _handled("cmyk jpeg")


def test_grayscale_becomes_three_equal_channels(tmp_path, case):
    gray = np.arange(12, dtype=np.uint8).reshape(3, 4) * 20
    Image.fromarray(gray).save(tmp_path / "gray.png")
    img = _read_one(tmp_path / "gray.png")
    assert img.shape == (3, 4, 3) and all(np.array_equal(img[..., c], gray) for c in range(3))
    _handled("grayscale")


def test_exif_rotated_jpeg_is_turned_upright(tmp_path, case):
    stored = np.zeros((10, 20, 3), dtype=np.uint8)  # stored landscape, 10 high and 20 wide
    stored[:4, :4] = (255, 0, 0)  # red block at the stored top-left
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 degrees clockwise to display"
    Image.fromarray(stored).save(tmp_path / "phone.jpg", exif=exif, quality=100)
    img = _read_one(tmp_path / "phone.jpg")
    assert img.shape == (20, 10, 3)  # portrait once upright
    assert img[1, -2, 0] > 200 and img[1, 1, 0] < 50  # the red block is now at the top-right
    _handled("exif orientation")


def test_one_pixel_image_is_accepted(tmp_path, case):
    Image.new("RGB", (1, 1), (1, 2, 3)).save(tmp_path / "dot.png")
    assert _read_one(tmp_path / "dot.png").tolist() == [[[1, 2, 3]]]
    _handled("1x1 image")


# --- folders that could trap or escape -------------------------------------------------------------------


def test_symlink_loop_is_read_once_and_reported(tmp_path, capsys, case):
    root = tmp_path / "loopy"
    (root / "sub").mkdir(parents=True)
    Image.fromarray(_rgb()).save(root / "a.png")
    Image.fromarray(_rgb(seed=1)).save(root / "sub" / "b.png")
    os.symlink(root, root / "sub" / "back")  # sub/back -> root: an endless tree if followed blindly
    os.symlink(".", root / "sub" / "self")
    src = open_source(f"folder:{root}")
    assert [i for i, _ in src] == ["a", "sub/b"]
    assert sorted(Path(p).name for p, _ in src.skipped) == ["back", "self"]
    assert all("symlink loop" in reason for _, reason in src.skipped)
    assert capsys.readouterr().err.count("symlink loop") == 2
    _handled("symlink loop")


def test_ids_that_would_escape_the_output_folder_are_made_safe(tmp_path, case):
    root = tmp_path / "in"
    root.mkdir()
    # A legal Linux name that reads as sub/../../x (= ../x) wherever backslashes separate folders.
    Image.fromarray(_rgb()).save(root / "sub\\..\\..\\x.png")
    Image.fromarray(_rgb(seed=2)).save(tmp_path / "outside.png")
    os.symlink(tmp_path / "outside.png", root / "link.png")  # a file link pointing out of the folder
    ids = [i for i, _ in open_source(f"folder:{root}")]
    assert ids == ["link", "sub/__/__/x"]
    out = tmp_path / "out"
    out.mkdir()
    for image_id in ids:
        target = safe_join(out, image_id, ".png").resolve()
        assert target.is_relative_to(out.resolve())
    _handled("id escaping the output folder")
