"""Data sources: determinism, ids, patch counts, splits, and the four sources end to end."""

from __future__ import annotations

import gzip
import struct
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from rcdm_core.data import load_images, open_source
from rcdm_core.errors import ConfigError, DataError
from rcdm_core.paths import safe_id, safe_join


def _items(spec: str) -> list[tuple[str, np.ndarray]]:
    return list(open_source(spec))


def _assert_identical(a: list[tuple[str, np.ndarray]], b: list[tuple[str, np.ndarray]]) -> None:
    assert [i for i, _ in a] == [i for i, _ in b]
    assert all(np.array_equal(x, y) for (_, x), (_, y) in zip(a, b))


def _write_idx(path: Path, arr: np.ndarray, gz: bool = False) -> Path:
    raw = (
        struct.pack(">BBBB", 0, 0, 0x08, arr.ndim) + struct.pack(f">{arr.ndim}I", *arr.shape) + arr.tobytes()
    )
    path.write_bytes(gzip.compress(raw) if gz else raw)
    return path


@pytest.fixture
def image_folder(tmp_path: Path) -> Path:
    rng = np.random.default_rng(0)
    root = tmp_path / "imgs"
    (root / "sub" / "deeper").mkdir(parents=True)
    Image.fromarray(rng.integers(0, 256, (12, 16, 3), dtype=np.uint8)).save(root / "b.png")
    Image.fromarray(rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)).save(root / "a.bmp")
    Image.fromarray(rng.integers(0, 256, (9, 7), dtype=np.uint8)).save(root / "sub" / "c.tif")
    Image.fromarray(rng.integers(0, 256, (5, 6, 3), dtype=np.uint8)).save(
        root / "sub" / "deeper" / "d.webp", lossless=True
    )
    Image.fromarray(rng.integers(0, 256, (6, 6, 3), dtype=np.uint8)).save(root / "sub" / "e.JPG")
    (root / "notes.txt").write_text("not an image and not an image extension")
    (root / ".ipynb_checkpoints").mkdir()  # hidden folders and files are not read
    (root / ".ipynb_checkpoints" / "b-checkpoint.png").write_bytes(b"")
    (root / "._b.png").write_bytes(b"AppleDouble")
    return root


# --- every source gives identical images on two calls ------------------------------------------------------


@pytest.mark.parametrize(
    "spec",
    [
        "builtin:photos?split=heldout",
        "builtin:photos?split=train&size=48&stride=40&scales=1,0.5&limit=300",
        "builtin:photos?patches=false&split=heldout",
        "builtin:digits?size=16&resample=bicubic&limit=50",
    ],
)
def test_builtin_source_gives_identical_images_on_two_calls(manager, spec):
    src = open_source(spec)
    first = list(src)
    _assert_identical(first, list(src))  # the same object iterated twice
    _assert_identical(first, _items(spec))  # a second source opened from the same spec


def test_folder_and_idx_give_identical_images_on_two_calls(manager, image_folder, tmp_path):
    idx = _write_idx(
        tmp_path / "x-images-idx3-ubyte.gz", np.arange(3 * 4 * 5, dtype=np.uint8).reshape(3, 4, 5), gz=True
    )
    for spec in (f"folder:{image_folder}", f"idx:{idx}"):
        first = _items(spec)
        assert first
        _assert_identical(first, _items(spec))


# --- builtin:photos -------------------------------------------------------------------------------------


def _reference_photos() -> dict[str, np.ndarray]:
    """The photos loaded straight from the libraries, independently of the plugin's loader."""
    import skimage.data as d
    from sklearn.datasets import load_sample_image

    left, right, _ = d.stereo_motorcycle()
    return {
        "astronaut": d.astronaut(),
        "coffee": d.coffee(),
        "chelsea": d.chelsea(),
        "rocket": d.rocket(),
        "motorcycle_left": left,
        "motorcycle_right": right,
        "hubble_deep_field": d.hubble_deep_field(),
        "immunohistochemistry": d.immunohistochemistry(),
        "retina": d.retina(),
        "china": load_sample_image("china.jpg"),
        "flower": load_sample_image("flower.jpg"),
    }


def _grid_count(h: int, w: int, size: int, stride: int) -> int:
    return ((h - size) // stride + 1) * ((w - size) // stride + 1) if h >= size and w >= size else 0


def _photo_of(image_id: str) -> str:
    return image_id.split("/")[1]


def test_photo_patch_counts_match_an_independent_count(manager):
    photos = _reference_photos()
    for size, stride in ((32, 32), (64, 48)):
        expected = sum(_grid_count(p.shape[0], p.shape[1], size, stride) for p in photos.values())
        src = open_source(f"builtin:photos?size={size}&stride={stride}&min_std=0")
        assert len(src) == expected
        assert len(list(src)) == expected
    # scale 0.5: the photo is resized to round(h / 2) x round(w / 2) before cutting
    half = sum(_grid_count(round(p.shape[0] / 2), round(p.shape[1] / 2), 32, 32) for p in photos.values())
    full = sum(_grid_count(p.shape[0], p.shape[1], 32, 32) for p in photos.values())
    assert len(open_source("builtin:photos?scales=1,0.5&min_std=0")) == full + half
    assert full == 5097  # the figure quoted in the report


def test_default_photo_patches_drop_exactly_the_flat_ones(manager):
    """min_std=1 (default) keeps the patches whose std is >= 1, counted here with a reshape, not a loop."""
    expected = 0
    for p in _reference_photos().values():
        h, w = p.shape[0] // 32 * 32, p.shape[1] // 32 * 32
        blocks = p[:h, :w].astype(np.float64).reshape(h // 32, 32, w // 32, 32, 3).transpose(0, 2, 1, 3, 4)
        expected += int((blocks.reshape(-1, 32 * 32 * 3).std(axis=1) >= 1.0).sum())
    assert len(open_source("builtin:photos")) == expected == 4727


def test_photo_patch_pixels_match_their_id(manager):
    photos = _reference_photos()
    for image_id, patch in _items("builtin:photos?size=24&limit=40"):
        _, name, scale, pos = image_id.split("/")
        y, x = (int(v) for v in pos.split("_"))
        assert scale == "s1" and patch.shape == (24, 24, 3) and patch.dtype == np.uint8
        assert np.array_equal(patch, photos[name][y : y + 24, x : x + 24])


def test_photo_splits_hold_out_whole_photos_and_keep_the_stereo_pair_together(manager):
    from rcdm_data.photos import GROUPS, HELDOUT, PHOTOS

    train = {_photo_of(i) for i, _ in _items("builtin:photos?split=train&patches=false")}
    held = {_photo_of(i) for i, _ in _items("builtin:photos?split=heldout&patches=false")}
    assert train.isdisjoint(held) and train | held == set(PHOTOS) and held == set(HELDOUT)
    assert len(PHOTOS) == 11
    pair = {"motorcycle_left", "motorcycle_right"}
    assert GROUPS.keys() == pair and (pair <= train or pair <= held)
    n_train, n_held = (
        len(open_source("builtin:photos?split=train")),
        len(open_source("builtin:photos?split=heldout")),
    )
    assert n_train + n_held == len(open_source("builtin:photos")) and (n_train, n_held) == (4125, 602)


def test_first_heldout_patches_come_from_several_photos(manager):
    ids = [i for i, _ in _items("builtin:photos?split=heldout&limit=6")]
    assert len({_photo_of(i) for i in ids}) == 3
    assert len(set(ids)) == 6


def test_whole_photos_at_two_scales(manager):
    items = dict(_items("builtin:photos?patches=false&scales=1,0.5&split=heldout"))
    assert items["photos/chelsea/s1"].shape == (300, 451, 3)
    assert items["photos/chelsea/s0.5"].shape == (150, 226, 3)  # round(451 / 2) = 226 (banker's rounding)


def test_photo_options_are_checked(manager):
    with pytest.raises(ConfigError, match="scales"):
        open_source("builtin:photos?scales=1,2")
    with pytest.raises(ConfigError, match="split"):
        open_source("builtin:photos?split=test")
    with pytest.raises(ConfigError, match="unknown option 'colour'"):
        open_source("builtin:photos?colour=1")
    with pytest.raises(DataError, match="no 2000x2000 patch"):
        open_source("builtin:photos?size=2000")


# --- builtin:digits ---------------------------------------------------------------------------------------


def test_digits_are_scaled_to_0_255_and_upscaled_by_nearest(manager):
    from sklearn.datasets import load_digits

    raw = load_digits().images
    items = _items("builtin:digits?size=32&limit=3")
    assert [i for i, _ in items] == ["digits/0", "digits/1", "digits/2"]
    for k, (_, img) in enumerate(items):
        expected = np.kron(np.round(raw[k] * 255 / 16), np.ones((4, 4))).astype(np.uint8)
        assert img.shape == (32, 32, 3) and np.array_equal(img[..., 0], expected)
        assert np.array_equal(img[..., 0], img[..., 2])
    assert len(open_source("builtin:digits")) == 1797


# --- idx:PATH -------------------------------------------------------------------------------------------


@pytest.mark.parametrize("gz", [False, True])
def test_idx_reads_mnist_format_gzipped_or_not(manager, tmp_path, gz):
    arr = np.random.default_rng(1).integers(0, 256, (5, 28, 28), dtype=np.uint8)
    path = _write_idx(tmp_path / ("train-images-idx3-ubyte" + (".gz" if gz else "")), arr, gz=gz)
    items = _items(f"idx:{path}?limit=4")
    assert [i for i, _ in items] == [f"train-images-idx3-ubyte/{k}" for k in range(4)]
    for k, (_, img) in enumerate(items):
        assert img.shape == (28, 28, 3) and img.dtype == np.uint8
        assert np.array_equal(img, np.repeat(arr[k][..., None], 3, axis=2))


def test_idx_rejects_labels_and_truncated_files(manager, tmp_path):
    labels = _write_idx(tmp_path / "labels-idx1-ubyte", np.arange(10, dtype=np.uint8))
    with pytest.raises(DataError, match="label file"):
        open_source(f"idx:{labels}")
    good = _write_idx(tmp_path / "imgs-idx3-ubyte", np.zeros((4, 6, 6), dtype=np.uint8))
    short = tmp_path / "short-idx3-ubyte"
    short.write_bytes(good.read_bytes()[:-10])
    with pytest.raises(DataError, match="short-idx3-ubyte.*truncated"):
        open_source(f"idx:{short}")


# --- folder:PATH ----------------------------------------------------------------------------------------


def test_folder_ids_are_sorted_relative_paths_without_extension(manager, image_folder):
    items = _items(f"folder:{image_folder}")
    assert [i for i, _ in items] == ["a", "b", "sub/c", "sub/deeper/d", "sub/e"]
    shapes = {i: a.shape for i, a in items}
    assert shapes["b"] == (12, 16, 3) and shapes["sub/c"] == (9, 7, 3) and shapes["sub/deeper/d"] == (5, 6, 3)
    expected_b = np.asarray(Image.open(image_folder / "b.png"))
    assert np.array_equal(dict(items)["b"], expected_b)


def test_folder_keeps_extensions_where_two_files_share_a_stem(manager, tmp_path):
    root = tmp_path / "dup"
    root.mkdir()
    Image.new("RGB", (4, 4), (10, 20, 30)).save(root / "x.png")
    Image.new("RGB", (4, 4), (40, 50, 60)).save(root / "x.bmp")
    items = dict(_items(f"folder:{root}"))
    assert sorted(items) == ["x.bmp", "x.png"] and items["x.png"][0, 0].tolist() == [10, 20, 30]


def test_folder_single_file_and_load_images_end_to_end(manager, image_folder):
    assert [i for i, _ in _items(f"folder:{image_folder / 'b.png'}")] == ["b"]
    ids, pixels = load_images(f"folder:{image_folder}", size=8)
    assert ids == ["a", "b", "sub/c", "sub/deeper/d", "sub/e"]
    assert tuple(pixels.shape) == (5, 3, 8, 8) and 0.0 <= float(pixels.min()) and float(pixels.max()) <= 1.0
    a = np.asarray(Image.open(image_folder / "a.bmp"), dtype=np.float32) / 255  # a.bmp is 8x8 already
    assert np.allclose(pixels[0].permute(1, 2, 0).numpy(), a)


def test_folder_limit_and_unknown_option(manager, image_folder):
    assert len(_items(f"folder:{image_folder}?limit=2")) == 2
    with pytest.raises(ConfigError, match="unknown option 'size'.*background"):
        open_source(f"folder:{image_folder}?size=3")


def test_data_sources_are_registered_under_their_names(manager):
    names = set(manager.registry["data"])
    assert {"folder:", "idx:", "builtin:photos", "builtin:digits"} <= names
    with pytest.raises(ConfigError, match="available: builtin:digits, builtin:photos"):
        open_source("builtin:nope")


# --- safe ids -------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "safe"),
    [
        ("photos/astronaut/s1/0_0", "photos/astronaut/s1/0_0"),
        ("../x", "__/x"),
        ("a/../../b", "a/__/__/b"),
        ("/etc/passwd", "etc/passwd"),
        ("..\\x", "__/x"),
        ("C:\\temp\\x", "C_/temp/x"),
        ("./a//b/.", "a/b"),
        ("...", "___"),
        ("", "_"),
        ("bad\x00name", "bad_name"),
    ],
)
def test_safe_id_never_climbs_out(raw, safe):
    assert safe_id(raw) == safe
    assert ".." not in safe.split("/") and not safe.startswith("/")


def test_safe_join_stays_inside_the_folder(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    assert safe_join(out, "../../x", ".png") == out / "__" / "__" / "x.png"
    (out / "link").symlink_to(tmp_path)  # a folder link planted inside the output folder
    with pytest.raises(DataError, match="outside"):
        safe_join(out, "link/y")
