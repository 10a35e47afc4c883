"""Tests for nptp_mpi.io.inputs and .outputs: image/tensor loading, validation errors, atomic writes, sample picture."""

from __future__ import annotations

import os
import pickle
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from nptp_mpi.errors import InputError
from nptp_mpi.io import inputs
from nptp_mpi.io.inputs import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    check_finite,
    image_to_pixels,
    image_to_rgb,
    image_to_tensor,
    load_image,
    load_tensor,
    pixels_to_tensor,
    sample_image,
    write_sample,
)
from nptp_mpi.io.outputs import atomic_save_npy

SIZE = (32, 40)  # (h, w), deliberately non-square


def _denorm(x: np.ndarray) -> np.ndarray:
    """Undo ImageNet normalisation: (3, H, W) -> values in [0, 1]."""
    return x * IMAGENET_STD[:, None, None] + IMAGENET_MEAN[:, None, None]


def _check_tensor(x: np.ndarray, size: tuple[int, int] = SIZE) -> None:
    assert x.shape == (3, *size)
    assert x.dtype == np.float32
    assert x.flags.c_contiguous
    assert np.isfinite(x).all()


def _assert_input_error(excinfo: pytest.ExceptionInfo[InputError], path: Path | str) -> str:
    msg = str(excinfo.value)
    assert os.fspath(path) in msg
    assert "\n" not in msg
    return msg


def _save(img: Image.Image, path: Path, **kw: object) -> Path:
    img.save(path, **kw)
    return path


def _noise_png(path: Path, w: int = 64, h: int = 64) -> Path:
    rng = np.random.default_rng(0)
    return _save(Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)), path)


# ----------------------------------------------------------------------------- modes


def _mode_images() -> list[tuple[str, Image.Image, str]]:
    """(id, image, file suffix) covering the modes Pillow opens from real files."""
    grad = np.tile(np.linspace(0, 255, 50), (30, 1)).astype(np.uint8)
    ramp = Image.fromarray(grad)
    rgb = Image.merge("RGB", [ramp, ramp.transpose(Image.Transpose.FLIP_LEFT_RIGHT), Image.new("L", (50, 30), 90)])
    p_trans = rgb.convert("P")
    p_trans.info["transparency"] = 0
    return [
        ("1", Image.fromarray(grad > 128), ".png"),
        ("L", Image.fromarray(grad), ".png"),
        ("LA", Image.merge("LA", [Image.fromarray(grad), Image.fromarray(grad[:, ::-1])]), ".png"),
        ("P", rgb.convert("P"), ".png"),
        ("P-transparency", p_trans, ".png"),
        ("RGB", rgb, ".png"),
        ("RGB-jpeg", rgb, ".jpg"),
        ("RGBA", rgb.convert("RGBA"), ".png"),
        ("CMYK-jpeg", rgb.convert("CMYK"), ".jpg"),
        ("CMYK-tiff", rgb.convert("CMYK"), ".tiff"),
        ("I;16", Image.fromarray(grad.astype(np.uint16) * 257), ".png"),
        ("I;16B", Image.fromarray(grad.astype(np.uint16) * 257).convert("I;16B"), ".tiff"),
        ("I", Image.fromarray(grad.astype(np.int32) * 1000), ".tiff"),
        ("F", Image.fromarray(grad.astype(np.float32) / 255), ".tiff"),
        ("YCbCr", rgb.convert("YCbCr"), ".tiff"),
        ("PA", Image.new("PA", (50, 30)), ".tiff"),
        ("LAB", rgb.convert("LAB"), ".tiff"),
        ("GIF", rgb.convert("P"), ".gif"),
        ("WEBP", rgb, ".webp"),
        ("BMP", rgb, ".bmp"),
    ]


@pytest.mark.parametrize("case", _mode_images(), ids=lambda c: c[0])
def test_every_mode_loads(tmp_path: Path, case: tuple[str, Image.Image, str]) -> None:
    name, img, suffix = case
    path = tmp_path / f"img{suffix}"
    try:
        img.save(path)
    except (KeyError, OSError, ValueError) as exc:  # format plugin missing in this Pillow build
        pytest.skip(f"cannot write {name} as {suffix}: {exc}")
    _check_tensor(load_image(path, SIZE))


@pytest.mark.parametrize("mode", ["HSV", "RGBa", "RGBX", "I;16L", "I;16N"])
def test_in_memory_modes(mode: str) -> None:
    img = Image.new(mode, (20, 10))
    _check_tensor(image_to_tensor(img, (8, 8)), (8, 8))


def test_16bit_mid_grey_matches_8bit(tmp_path: Path) -> None:
    p8 = _save(Image.new("L", (20, 20), 128), tmp_path / "g8.png")
    p16 = _save(Image.fromarray(np.full((20, 20), 128 * 257, np.uint16)), tmp_path / "g16.png")
    assert Image.open(p16).mode == "I;16"
    a, b = load_image(p8, (16, 16)), load_image(p16, (16, 16))
    np.testing.assert_allclose(a, b, atol=1 / 255)
    # And a genuinely mid-range 16-bit value is mid-grey, not clipped to white.
    p = _save(Image.fromarray(np.full((20, 20), 32768, np.uint16)), tmp_path / "half.png")
    np.testing.assert_allclose(_denorm(load_image(p, (16, 16))), 0.5, atol=1 / 255)
    dark = _save(Image.fromarray(np.full((20, 20), 1000, np.uint16)), tmp_path / "dark.png")
    assert _denorm(load_image(dark, (16, 16))).max() < 0.02


def test_32bit_int_and_float_ranges(tmp_path: Path) -> None:
    f = _save(Image.fromarray(np.full((10, 10), 0.5, np.float32)), tmp_path / "f.tiff")
    np.testing.assert_allclose(_denorm(load_image(f, (8, 8))), 0.5, atol=1 / 255)
    i = _save(Image.fromarray(np.full((10, 10), 128, np.int32)), tmp_path / "i8.tiff")
    np.testing.assert_allclose(_denorm(load_image(i, (8, 8))), 128 / 255, atol=1e-5)
    i16 = _save(Image.fromarray(np.full((10, 10), 32896, np.int32)), tmp_path / "i16.tiff")
    np.testing.assert_allclose(_denorm(load_image(i16, (8, 8))), 128 / 255, atol=1e-5)
    nan = np.zeros((10, 10), np.float32)
    nan[0, 0] = np.nan
    p = _save(Image.fromarray(nan), tmp_path / "nan.tiff")
    with pytest.raises(InputError, match="1 NaN") as ei:
        load_image(p, (8, 8))
    _assert_input_error(ei, p)


def _assert_red(x: np.ndarray) -> None:
    r, g, b = _denorm(x).reshape(3, -1).mean(axis=1)
    assert r > 0.9 and g < 0.1 and b < 0.1, (r, g, b)


def test_red_rgba_and_cmyk(tmp_path: Path) -> None:
    _assert_red(load_image(_save(Image.new("RGBA", (20, 20), (255, 0, 0, 255)), tmp_path / "r.png"), (8, 8)))
    _assert_red(load_image(_save(Image.new("CMYK", (20, 20), (0, 255, 255, 0)), tmp_path / "r.tiff"), (8, 8)))
    _assert_red(load_image(_save(Image.new("CMYK", (20, 20), (0, 255, 255, 0)), tmp_path / "r.jpg"), (8, 8)))


def test_alpha_composited_on_white(tmp_path: Path) -> None:
    clear = _save(Image.new("RGBA", (20, 20), (255, 0, 0, 0)), tmp_path / "clear.png")
    np.testing.assert_allclose(_denorm(load_image(clear, (8, 8))), 1.0, atol=1e-5)
    la = _save(Image.new("LA", (20, 20), (0, 0)), tmp_path / "la.png")
    np.testing.assert_allclose(_denorm(load_image(la, (8, 8))), 1.0, atol=1e-5)
    assert image_to_rgb(Image.new("RGBA", (2, 2), (0, 0, 255, 128))).getpixel((0, 0))[2] == 255


def test_animated_uses_first_frame(tmp_path: Path) -> None:
    frames = [Image.new("RGB", (20, 20), c) for c in ((255, 0, 0), (0, 0, 255))]
    for suffix in (".gif", ".png"):
        p = tmp_path / f"anim{suffix}"
        frames[0].save(p, save_all=True, append_images=frames[1:], duration=100, loop=0)
        assert getattr(Image.open(p), "n_frames", 1) == 2
        _assert_red(load_image(p, (8, 8)))


# ----------------------------------------------------------------------------- resize / crop


def test_resize_crop_keeps_centre(tmp_path: Path) -> None:
    img = Image.new("RGB", (200, 100), (255, 255, 255))  # w=200, h=100
    img.paste((255, 0, 0), (90, 40, 110, 60))  # centre marker
    img.paste((0, 0, 255), (0, 0, 20, 100))  # left edge: must be cropped away
    img.paste((0, 0, 255), (180, 0, 200, 100))  # right edge: must be cropped away
    x = _denorm(load_image(_save(img, tmp_path / "wide.png"), (50, 50)))
    assert x.shape == (3, 50, 50)
    centre = x[:, 22:28, 22:28].reshape(3, -1).mean(axis=1)
    assert centre[0] > 0.9 and centre[1] < 0.1 and centre[2] < 0.1
    corner = x[:, :5, :5].reshape(3, -1).mean(axis=1)
    np.testing.assert_allclose(corner, 1.0, atol=0.02)
    assert (x[2] - x[0]).max() < 0.1  # no blue survived the crop


def test_non_square_target(tmp_path: Path) -> None:
    img = Image.new("RGB", (100, 100), (255, 255, 255))
    img.paste((0, 255, 0), (0, 0, 100, 10))  # top band: cropped for a 48x64 target
    img.paste((255, 0, 0), (45, 45, 55, 55))
    x = _denorm(load_image(_save(img, tmp_path / "sq.png"), (48, 64)))
    assert x.shape == (3, 48, 64)
    # scale 0.64 -> 64x64, crop rows 8..56: the 6.4-row green band is gone.
    assert (x[1] - x[0]).max() < 0.1
    assert x[0, 22:26, 30:34].mean() > 0.9 and x[1, 22:26, 30:34].mean() < 0.1
    # Tall target from a wide image, and upscaling a tiny image.
    _check_tensor(load_image(_save(Image.new("RGB", (300, 50)), tmp_path / "w.png"), (64, 16)), (64, 16))
    _check_tensor(load_image(_save(Image.new("RGB", (1, 1)), tmp_path / "one.png"), (480, 640)), (480, 640))


def test_exact_size_is_plain_normalisation() -> None:
    img = sample_image((48, 64))
    x = image_to_tensor(img, (48, 64))
    ref = (np.asarray(img, np.float32) / np.float32(255) - IMAGENET_MEAN) / IMAGENET_STD
    np.testing.assert_array_equal(x, ref.transpose(2, 0, 1))


def test_pixels_normalised_by_tile_equal_the_whole_image_bit_for_bit(tmp_path: Path) -> None:
    """What the scatter of an image relies on: its 8-bit pixels normalised tile by tile, on each rank, are
    exactly the tensor rank 0 would have normalised whole."""
    img = sample_image((60, 90))
    pixels = image_to_pixels(img, SIZE)
    assert pixels.dtype == np.uint8 and pixels.shape == (3, *SIZE) and pixels.flags.c_contiguous
    whole = image_to_tensor(img, SIZE)
    np.testing.assert_array_equal(pixels_to_tensor(pixels), whole)
    for y0, x0, y1, x1 in ((0, 0, 17, 23), (17, 0, 32, 23), (5, 23, 32, 40)):
        np.testing.assert_array_equal(pixels_to_tensor(pixels[:, y0:y1, x0:x1]), whole[:, y0:y1, x0:x1])
    img.save(tmp_path / "p.png")
    np.testing.assert_array_equal(load_image(tmp_path / "p.png", SIZE, pixels=True), pixels)


@pytest.mark.parametrize("size", [(0, 5), (5, -1), (2.5, 3), ("a", 3), (1, 2, 3)])
def test_bad_target_size(size: object) -> None:
    with pytest.raises(InputError):
        image_to_tensor(Image.new("RGB", (4, 4)), size)  # type: ignore[arg-type]


# ----------------------------------------------------------------------------- bad images


def test_missing_empty_garbage_directory(tmp_path: Path) -> None:
    missing = tmp_path / "missing.png"
    with pytest.raises(InputError, match="no such") as ei:
        load_image(missing, SIZE)
    _assert_input_error(ei, missing)

    empty = tmp_path / "empty.png"
    empty.write_bytes(b"")
    with pytest.raises(InputError, match="empty") as ei:
        load_image(empty, SIZE)
    _assert_input_error(ei, empty)

    garbage = tmp_path / "garbage.png"
    garbage.write_bytes(np.random.default_rng(1).bytes(4096))
    with pytest.raises(InputError, match="not a recognised image") as ei:
        load_image(garbage, SIZE)
    _assert_input_error(ei, garbage)

    with pytest.raises(InputError, match="directory") as ei:
        load_image(tmp_path, SIZE)
    _assert_input_error(ei, tmp_path)


@pytest.mark.parametrize("suffix", [".png", ".jpg"])
def test_truncated_image(tmp_path: Path, suffix: str) -> None:
    good = tmp_path / f"good{suffix}"
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(good)
    data = good.read_bytes()
    bad = tmp_path / f"half{suffix}"
    bad.write_bytes(data[: len(data) // 2])
    with pytest.raises(InputError, match="corrupt or truncated") as ei:
        load_image(bad, SIZE)
    _assert_input_error(ei, bad)
    # The global Pillow setting is restored and ours is strict even if someone set it.
    from PIL import ImageFile

    ImageFile.LOAD_TRUNCATED_IMAGES = True
    try:
        with pytest.raises(InputError):
            load_image(bad, SIZE)
        assert ImageFile.LOAD_TRUNCATED_IMAGES is True
    finally:
        ImageFile.LOAD_TRUNCATED_IMAGES = False


def _png_claiming(path: Path, width: int, height: int) -> Path:
    """A real 1x1 PNG whose IHDR is patched (with a valid CRC) to claim width x height."""
    _save(Image.new("RGB", (1, 1), (1, 2, 3)), path)
    data = bytearray(path.read_bytes())
    assert data[12:16] == b"IHDR"
    data[16:24] = struct.pack(">II", width, height)
    data[29:33] = struct.pack(">I", zlib.crc32(bytes(data[12:29])) & 0xFFFFFFFF)
    path.write_bytes(bytes(data))
    return path


@pytest.mark.parametrize("wh", [(100_000, 100_000), (10_000, 10_000)], ids=["pillow-error", "pillow-warning"])
def test_decompression_bomb_header(tmp_path: Path, wh: tuple[int, int]) -> None:
    # 1e10 px trips Pillow's hard error; 1e8 px is only a Pillow *warning*, which we must refuse too.
    p = _png_claiming(tmp_path / "bomb.png", *wh)
    with pytest.raises(InputError, match="decompression bomb") as ei:
        load_image(p, SIZE)
    _assert_input_error(ei, p)
    assert Image.MAX_IMAGE_PIXELS == 89_478_485  # restored afterwards


def test_pixel_limit_monkeypatched(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    p = _noise_png(tmp_path / "real.png", 20, 20)
    _check_tensor(load_image(p, SIZE))
    monkeypatch.setattr(inputs, "MAX_PIXELS", 399)
    with pytest.raises(InputError, match="decompression bomb") as ei:
        load_image(p, SIZE)
    _assert_input_error(ei, p)


def test_file_size_limit(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    p = _noise_png(tmp_path / "big.png")
    t = tmp_path / "big.npy"
    np.save(t, np.zeros((3, 8, 8), np.float32))
    monkeypatch.setattr(inputs, "MAX_FILE_BYTES", 100)
    for path, fn in ((p, lambda: load_image(p, SIZE)), (t, lambda: load_tensor(t))):
        with pytest.raises(InputError, match="larger than the limit") as ei:
            fn()
        _assert_input_error(ei, path)


# ----------------------------------------------------------------------------- load_tensor


def test_load_tensor_good(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    x = rng.standard_normal((3, 8, 10)).astype(np.float32)
    p3, p4 = tmp_path / "a.npy", tmp_path / "b.npy"
    np.save(p3, x)
    np.save(p4, x[None].astype(np.float64))
    for p in (p3, p4):
        y = load_tensor(p, (3, 8, 10))
        assert y.dtype == np.float32 and y.flags.c_contiguous and y.shape == (3, 8, 10)
        np.testing.assert_allclose(y, x, rtol=1e-6)
    pf = tmp_path / "fortran.npy"
    np.save(pf, np.asfortranarray(x))
    assert load_tensor(pf).flags.c_contiguous
    for dt in (np.int8, np.uint16, np.int64, np.float16, ">f8"):
        pd = tmp_path / "dt.npy"
        np.save(pd, np.arange(24).reshape(2, 3, 4).astype(dt))
        np.testing.assert_array_equal(load_tensor(pd), np.arange(24, dtype=np.float32).reshape(2, 3, 4))


class _Evil:
    """Unpickling this creates the marker file: proof that unpickling happened."""

    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[object, tuple[str, str]]:
        return (open, (self.marker, "w"))


def test_object_array_never_unpickled(tmp_path: Path) -> None:
    marker = tmp_path / "UNPICKLED"
    arr = np.empty((1, 1, 1), dtype=object)
    arr[0, 0, 0] = _Evil(str(marker))
    p = tmp_path / "evil.npy"
    np.save(p, arr, allow_pickle=True)
    with pytest.raises(InputError, match="object") as ei:
        load_tensor(p)
    _assert_input_error(ei, p)
    assert not marker.exists()

    # A raw pickle with a .npy name is refused the same way.
    raw = tmp_path / "raw.npy"
    raw.write_bytes(pickle.dumps(_Evil(str(marker))))
    with pytest.raises(InputError, match="not a .npy") as ei:
        load_tensor(raw)
    _assert_input_error(ei, raw)
    assert not marker.exists()

    # Positive control: the side effect is real when numpy is allowed to unpickle.
    loaded = np.load(p, allow_pickle=True)
    loaded[0, 0, 0].close()
    assert marker.exists()


def test_load_tensor_non_finite(tmp_path: Path) -> None:
    x = np.zeros((3, 4, 4), np.float32)
    x[0, 0, 0] = x[1, 1, 1] = np.nan
    x[2, 2, 2] = -np.inf
    p = tmp_path / "nan.npy"
    np.save(p, x)
    with pytest.raises(InputError, match=r"2 NaN, 1 Inf") as ei:
        load_tensor(p)
    _assert_input_error(ei, p)
    big = tmp_path / "big.npy"
    np.save(big, np.full((1, 2, 2), 1e39))
    with pytest.raises(InputError, match="overflow float32") as ei:
        load_tensor(big)
    _assert_input_error(ei, big)


def test_load_tensor_shapes(tmp_path: Path) -> None:
    p = tmp_path / "t.npy"
    np.save(p, np.zeros((3, 4, 5), np.float32))
    with pytest.raises(InputError, match=r"expected \(3, 8, 8\).*got \(3, 4, 5\)") as ei:
        load_tensor(p, (3, 8, 8))
    _assert_input_error(ei, p)
    for bad, pat in (((4, 5), "expected shape"), ((2, 3, 4, 5), "batch of 2"), ((3, 0, 5), "empty"),
                     ((1, 1, 3, 4, 5), "expected shape")):
        np.save(p, np.zeros(bad, np.float32))
        with pytest.raises(InputError, match=pat) as ei:
            load_tensor(p)
        _assert_input_error(ei, p)


@pytest.mark.parametrize(
    "arr",
    [np.zeros((3, 2, 2), bool), np.zeros((3, 2, 2), np.complex64), np.array([[["a"]]]),
     np.zeros((1, 1, 1), [("a", "f4"), ("b", "i4")]), np.zeros((1, 1, 1), "datetime64[s]")],
    ids=["bool", "complex", "str", "structured", "datetime"],
)
def test_load_tensor_bad_dtype(tmp_path: Path, arr: np.ndarray) -> None:
    p = tmp_path / "d.npy"
    np.save(p, arr)
    with pytest.raises(InputError, match="dtype") as ei:
        load_tensor(p)
    _assert_input_error(ei, p)


def test_load_tensor_corrupt(tmp_path: Path) -> None:
    good = tmp_path / "good.npy"
    np.save(good, np.ones((3, 16, 16), np.float32))
    data = good.read_bytes()
    for name, blob, pat in (
        ("half.npy", data[: len(data) // 2], "truncated"),
        ("header.npy", data[:20], "corrupt"),
        ("magic.npy", data[:4], "not a .npy"),
        ("garbage.npy", np.random.default_rng(2).bytes(500), "not a .npy"),
        ("empty.npy", b"", "empty"),
    ):
        p = tmp_path / name
        p.write_bytes(blob)
        with pytest.raises(InputError, match=pat) as ei:
            load_tensor(p)
        _assert_input_error(ei, p)
    npz = tmp_path / "arch.npz"
    np.savez(npz, x=np.ones(3))
    with pytest.raises(InputError, match="npz") as ei:
        load_tensor(npz)
    _assert_input_error(ei, npz)
    with pytest.raises(InputError, match="no such") as ei:
        load_tensor(tmp_path / "nope.npy")
    _assert_input_error(ei, tmp_path / "nope.npy")


def test_check_finite() -> None:
    x = np.arange(6, dtype=np.float32)
    assert check_finite(x, "x") is x
    check_finite(np.arange(3), "ints")
    x[1], x[2] = np.inf, np.nan
    with pytest.raises(InputError, match=r"thing: .*1 NaN, 1 Inf out of 6"):
        check_finite(x, "thing")


# ----------------------------------------------------------------------------- writing


def test_atomic_save_npy_roundtrip(tmp_path: Path) -> None:
    p = tmp_path / "out.npy"
    x = np.random.default_rng(0).standard_normal((3, 5, 7)).astype(np.float32)
    atomic_save_npy(p, x)
    np.testing.assert_array_equal(np.load(p), x)
    atomic_save_npy(str(p), x * 2)  # overwrite an existing file
    np.testing.assert_array_equal(np.load(p), x * 2)
    assert sorted(os.listdir(tmp_path)) == ["out.npy"]
    umask = os.umask(0o022)
    os.umask(umask)
    assert p.stat().st_mode & 0o777 == 0o666 & ~umask


def test_atomic_save_npy_failures_leave_no_temp(tmp_path: Path) -> None:
    blocker = tmp_path / "regular_file"
    blocker.write_text("x")
    bad = blocker / "out.npy"  # parent is a regular file
    with pytest.raises(InputError, match="cannot write") as ei:
        atomic_save_npy(bad, np.zeros(3))
    _assert_input_error(ei, bad)

    obj = tmp_path / "obj.npy"  # fails after the temp file exists
    with pytest.raises(InputError) as ei:
        atomic_save_npy(obj, np.array([object()], dtype=object))
    _assert_input_error(ei, obj)

    target_dir = tmp_path / "is_a_dir"  # fails at os.replace
    target_dir.mkdir()
    with pytest.raises(InputError) as ei:
        atomic_save_npy(target_dir, np.zeros(3))
    _assert_input_error(ei, target_dir)

    assert sorted(os.listdir(tmp_path)) == ["is_a_dir", "regular_file"]
    assert os.listdir(target_dir) == []


@pytest.mark.skipif(hasattr(os, "geteuid") and os.geteuid() == 0, reason="root ignores directory permissions")
def test_atomic_save_npy_readonly_dir(tmp_path: Path) -> None:
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o555)
    try:
        with pytest.raises(InputError) as ei:
            atomic_save_npy(ro / "out.npy", np.zeros(3))
        _assert_input_error(ei, ro / "out.npy")
        assert os.listdir(ro) == []
    finally:
        ro.chmod(0o755)


# ----------------------------------------------------------------------------- sample picture


def test_sample_image_deterministic_and_sized() -> None:
    a, b = sample_image(), sample_image()
    assert a.mode == "RGB" and a.size == (640, 480)
    assert a.tobytes() == b.tobytes()
    arr = np.asarray(a, np.float32)
    assert arr.std() > 30  # a picture, not a flat fill
    assert arr[:50].mean(axis=(0, 1))[2] > arr[-50:].mean(axis=(0, 1))[2]  # sky on top, grass below
    small = sample_image((100, 150))
    assert small.size == (150, 100)


def test_write_sample(tmp_path: Path) -> None:
    p = write_sample(tmp_path / "sample.png", (96, 128))
    assert sorted(os.listdir(tmp_path)) == ["sample.png"]
    with Image.open(p) as im:
        assert im.format == "PNG" and im.size == (128, 96)
        assert im.convert("RGB").tobytes() == sample_image((96, 128)).tobytes()
    _check_tensor(load_image(p, (96, 128)), (96, 128))
    with pytest.raises(InputError):
        write_sample(tmp_path / "missing_dir" / "s.png")


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="no FIFOs on this platform")
def test_fifo_refused_without_blocking(tmp_path: Path) -> None:
    fifo = tmp_path / "pipe.npy"
    os.mkfifo(fifo)
    with pytest.raises(InputError, match="not a regular file") as ei:
        load_tensor(fifo)
    _assert_input_error(ei, fifo)
