"""Input layer: turn image files and ``.npy`` tensors into validated model inputs.

Every tensor produced here is a single image without batch axis: ``(C, H, W)``
``float32``, C-contiguous, all values finite.  Anything wrong with a user-supplied
file is reported as :class:`InputError` with a one-line message naming the file,
so the CLI can print it and exit with status 2 instead of showing a traceback.

Decisions worth knowing:

* Images are converted to 8-bit RGB first, then resized and cropped (the usual
  torchvision-style pipeline).  Alpha (RGBA, LA, PA, palette/grey transparency)
  is composited onto a **white** background.  16-bit greyscale is scaled to
  8 bits by ``v / 257`` (full 0..65535 range), never clipped.  32-bit ``I`` and
  ``F`` images have no fixed range, so their range is guessed from the data (see
  :func:`_scale_to_uint8`).  EXIF orientation is applied when present.
* Resizing scales the image so that it *covers* the target (the shorter side,
  relative to the target's aspect, matches), with Pillow's antialiased bilinear
  filter, then centre-crops to exactly ``(h, w)``.  For a square target this is
  the classic "resize shorter side, centre crop".
* ``.npy`` files are read with ``allow_pickle=False``; the header is inspected
  before any data is read, so object arrays are refused without unpickling and a
  header claiming a huge shape cannot trigger a huge allocation.
"""

from __future__ import annotations

import contextlib
import math
import os
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

import numpy as np
from PIL import Image, ImageDraw, ImageFile, ImageFont, ImageOps

from nptp_mpi.errors import InputError
from nptp_mpi.io.files import open_regular
from nptp_mpi.io.outputs import atomic_write, one_line

__all__ = [
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "MAX_FILE_BYTES",
    "MAX_PIXELS",
    "InputError",
    "check_finite",
    "image_to_pixels",
    "image_to_rgb",
    "image_to_tensor",
    "load_image",
    "load_tensor",
    "pixels_to_tensor",
    "sample_image",
    "write_sample",
]

#: Largest image (width * height, from the file header) we agree to decode.
#: Same value as Pillow's default, but exceeding it is an error, not a warning.
MAX_PIXELS: int = 89_478_485
#: Largest input file (image or .npy) we agree to open, checked before decoding.
MAX_FILE_BYTES: int = 256 * 1024 * 1024

IMAGENET_MEAN = np.array([0.485, 0.456, 0.406], dtype=np.float32)
IMAGENET_STD = np.array([0.229, 0.224, 0.225], dtype=np.float32)

PathLike = str | os.PathLike[str]

_ALPHA_MODES = frozenset({"RGBA", "LA", "PA", "RGBa", "La"})
_16BIT_MODES = frozenset({"I;16", "I;16L", "I;16B", "I;16N"})
_NPY_MAGIC = b"\x93NUMPY"
_ZIP_MAGIC = b"PK\x03\x04"


# --------------------------------------------------------------------------- helpers


def check_finite(x: np.ndarray, what: str) -> np.ndarray:
    """Raise InputError if ``x`` holds NaN or +-Inf (saying how many); return ``x``.

    Integer arrays are trivially finite.  ``what`` names the thing being checked
    (usually the file), so the message is self-explanatory.
    """
    arr = np.asarray(x)
    if arr.dtype.kind not in "fc":
        return x
    n_nan = int(np.count_nonzero(np.isnan(arr)))
    n_inf = int(np.count_nonzero(np.isinf(arr)))
    if n_nan or n_inf:
        raise InputError(
            f"{what}: contains non-finite values ({n_nan} NaN, {n_inf} Inf out of {arr.size} elements)"
        )
    return x


def _check_size_arg(size: tuple[int, int]) -> tuple[int, int]:
    """Validate a target ``(h, w)``; both must be positive integers."""
    try:
        h, w = (int(v) for v in size)
    except (TypeError, ValueError) as exc:
        raise InputError(f"invalid target size {size!r}: expected (height, width)") from exc
    if h <= 0 or w <= 0 or (h, w) != tuple(size):
        raise InputError(f"invalid target size {size!r}: height and width must be positive integers")
    return h, w


# --------------------------------------------------------------------------- images


def _scale_to_uint8(arr: np.ndarray, what: str) -> np.ndarray:
    """Map a 32-bit ``I``/``F`` image (no fixed range) to uint8 by guessing its range.

    ``[0, 1]`` floats -> x255; ``[0, 255]`` -> as is; ``[0, 65535]`` -> /257
    (16-bit data); anything else -> min-max stretch.  NaN/Inf are refused.
    """
    a = arr.astype(np.float64)
    check_finite(a, what)
    lo, hi = float(a.min()), float(a.max())
    if lo >= 0.0 and hi <= 1.0 and arr.dtype.kind == "f":
        a = a * 255.0
    elif lo >= 0.0 and hi <= 255.0:
        pass
    elif lo >= 0.0 and hi <= 65535.0:
        a = a / 257.0
    elif hi > lo:
        a = (a - lo) * (255.0 / (hi - lo))
    else:
        a = np.zeros_like(a)
    return np.clip(np.rint(a), 0, 255).astype(np.uint8)


def image_to_rgb(img: Image.Image, what: str = "image") -> Image.Image:
    """Convert a loaded Pillow image of any mode to 8-bit RGB.

    Alpha and transparency are composited onto white; 16-bit greyscale is scaled
    by 1/257; ``I``/``F`` ranges are guessed (see :func:`_scale_to_uint8`).
    """
    mode = img.mode
    if mode in _16BIT_MODES:
        arr = np.asarray(img).astype(np.float64) / 257.0
        grey = np.clip(np.rint(arr), 0, 255).astype(np.uint8)
        return Image.fromarray(grey).convert("RGB")
    if mode in ("I", "F"):
        return Image.fromarray(_scale_to_uint8(np.asarray(img), what)).convert("RGB")
    try:
        if mode in _ALPHA_MODES or "transparency" in img.info:
            rgba = img.convert("RGBA")
            white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
            return Image.alpha_composite(white, rgba).convert("RGB")
        if mode == "RGB":
            return img
        return img.convert("RGB")
    except (ValueError, OSError) as exc:
        raise InputError(f"{what}: cannot convert image mode {mode!r} to RGB ({one_line(exc)})") from None


def image_to_tensor(img: Image.Image, size: tuple[int, int], what: str = "image") -> np.ndarray:
    """Preprocess a Pillow image to a normalised ``(3, h, w)`` float32 tensor.

    RGB conversion, cover-resize (antialiased bilinear) so both sides reach the
    target, centre crop to ``(h, w)``, scale to [0, 1], ImageNet normalisation.
    """
    out = pixels_to_tensor(image_to_pixels(img, size, what))
    check_finite(out, what)
    return out


def pixels_to_tensor(pixels: np.ndarray) -> np.ndarray:
    """8-bit ``(3, h, w)`` pixels (or any part of them) as the normalised float32 model input: the same
    values whether a whole image or a tile of it is converted (ranks normalise their own tiles)."""
    x = pixels.astype(np.float32) / np.float32(255.0)
    return np.ascontiguousarray((x - IMAGENET_MEAN[:, None, None]) / IMAGENET_STD[:, None, None], dtype=np.float32)


def image_to_pixels(img: Image.Image, size: tuple[int, int], what: str = "image") -> np.ndarray:
    """A Pillow image as the 8-bit ``(3, h, w)`` pixels image_to_tensor normalises (RGB, cover-resize,
    centre crop)."""
    h, w = _check_size_arg(size)
    rgb = image_to_rgb(img, what)
    src_w, src_h = rgb.size
    if src_w <= 0 or src_h <= 0:
        raise InputError(f"{what}: image has zero size {src_w}x{src_h}")
    scale = max(h / src_h, w / src_w)
    new_h = max(h, round(src_h * scale))
    new_w = max(w, round(src_w * scale))
    if (new_w, new_h) != (src_w, src_h):
        rgb = rgb.resize((new_w, new_h), Image.Resampling.BILINEAR)
    top = int(round((new_h - h) / 2.0))
    left = int(round((new_w - w) / 2.0))
    if (new_w, new_h) != (w, h):
        rgb = rgb.crop((left, top, left + w, top + h))
    return np.ascontiguousarray(np.asarray(rgb, dtype=np.uint8).transpose(2, 0, 1))


def tensor_to_image(x: np.ndarray) -> Image.Image | None:
    """The picture a normalised (3, h, w) input tensor shows (for drawing tiles over it); None otherwise."""
    if x.ndim != 3 or x.shape[0] != 3:
        return None
    hwc = x.transpose(1, 2, 0) * IMAGENET_STD + IMAGENET_MEAN
    return Image.fromarray(np.clip(np.rint(hwc * 255.0), 0, 255).astype(np.uint8))


@contextlib.contextmanager
def _strict_pillow() -> Iterator[None]:
    """Within the block: truncated images fail, and Pillow's bomb limit equals MAX_PIXELS (as errors)."""
    old_trunc = ImageFile.LOAD_TRUNCATED_IMAGES
    old_max = Image.MAX_IMAGE_PIXELS
    ImageFile.LOAD_TRUNCATED_IMAGES = False
    Image.MAX_IMAGE_PIXELS = MAX_PIXELS
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            yield
    finally:
        ImageFile.LOAD_TRUNCATED_IMAGES = old_trunc
        Image.MAX_IMAGE_PIXELS = old_max


def load_image(path: PathLike, size: tuple[int, int], pixels: bool = False) -> np.ndarray:
    """Read an image file and return the normalised ``(3, h, w)`` float32 model input (pixels: its 8-bit
    pixels, which pixels_to_tensor normalises).

    ``size`` is ``(height, width)``.  Multi-frame files use their first frame.
    Every failure (missing, empty, oversized, not an image, corrupt/truncated,
    decompression bomb, unsupported mode) raises InputError naming the file.
    """
    name = os.fspath(path)
    _check_size_arg(size)
    with open_regular(name, "image", MAX_FILE_BYTES) as f, _strict_pillow():
        try:
            img = Image.open(f)
            w, h = img.size
            if w * h > MAX_PIXELS:
                raise InputError(
                    f"{name}: image is {w}x{h} = {w * h} pixels, above the limit of {MAX_PIXELS} "
                    "(possible decompression bomb)"
                )
            img.load()  # force a full decode now, inside the try
            try:
                img = ImageOps.exif_transpose(img)
            except Exception:  # noqa: BLE001 - broken EXIF must not reject a decodable image
                pass
            return image_to_pixels(img, size, name) if pixels else image_to_tensor(img, size, name)
        except InputError:
            raise
        except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
            raise InputError(f"{name}: refused as a possible decompression bomb ({one_line(exc)})") from None
        except Image.UnidentifiedImageError:
            raise InputError(f"{name}: not a recognised image file") from None
        except MemoryError:
            raise InputError(f"{name}: out of memory while decoding the image") from None
        except Exception as exc:  # noqa: BLE001 - Pillow plugins raise many types on bad data
            raise InputError(f"{name}: corrupt or truncated image ({one_line(exc)})") from None


# --------------------------------------------------------------------------- sample picture


def _font(size: int) -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    """Pillow's built-in font at ``size`` px (bitmap fallback without FreeType)."""
    try:
        return ImageFont.load_default(size=size)
    except (TypeError, ValueError, OSError, AttributeError):
        return ImageFont.load_default()


def sample_image(size: tuple[int, int] = (480, 640)) -> Image.Image:
    """Draw a deterministic landscape picture (sky, sun, hills, house, tree, text) of ``(h, w)``.

    Pillow only, no downloads.  Drawn at 2x and downsampled so edges are smooth.
    """
    h, w = _check_size_arg(size)
    s = 2
    W, H = w * s, h * s

    # Sky: vertical gradient from deep blue to pale near the horizon.
    t = np.linspace(0.0, 1.0, H, dtype=np.float64)[:, None]
    top, bottom = np.array([40, 110, 200.0]), np.array([190, 225, 250.0])
    sky = (top * (1 - t) + bottom * t)[:, None, :].repeat(W, axis=1)
    img = Image.fromarray(np.rint(sky).astype(np.uint8), "RGB")
    d = ImageDraw.Draw(img)

    def X(f: float) -> int:
        return int(round(f * W))

    def Y(f: float) -> int:
        return int(round(f * H))

    # Sun with rays.
    cx, cy, r = X(0.82), Y(0.17), min(W, H) * 0.08
    for k in range(12):
        a = k * math.pi / 6
        d.line(
            [(cx + 1.3 * r * math.cos(a), cy + 1.3 * r * math.sin(a)),
             (cx + 1.8 * r * math.cos(a), cy + 1.8 * r * math.sin(a))],
            fill=(255, 200, 40), width=max(1, int(r * 0.12)),
        )
    d.ellipse([cx - r, cy - r, cx + r, cy + r], fill=(255, 215, 60), outline=(240, 170, 30), width=3)

    # Clouds.
    for fx, fy, fs in ((0.18, 0.14, 1.0), (0.50, 0.09, 0.8)):
        cw, ch = X(0.09 * fs), Y(0.05 * fs)
        for dx, dy in ((-0.9, 0.3), (0.0, 0.0), (0.9, 0.3), (0.4, 0.5), (-0.4, 0.5)):
            ox, oy = X(fx) + dx * cw, Y(fy) + dy * ch
            d.ellipse([ox - cw, oy - ch, ox + cw, oy + ch], fill=(250, 250, 252))

    # Hills (far then near) and the ground.
    d.ellipse([X(-0.3), Y(0.45), X(0.55), Y(1.1)], fill=(95, 150, 90))
    d.ellipse([X(0.35), Y(0.50), X(1.30), Y(1.2)], fill=(80, 140, 80))
    d.rectangle([0, Y(0.72), W, H], fill=(110, 175, 70))
    d.polygon([(X(0.40), H), (X(0.47), Y(0.72)), (X(0.51), Y(0.72)), (X(0.62), H)], fill=(200, 180, 140))

    # House: walls, roof, door, windows with panes, chimney.
    hx0, hx1, hy0, hy1 = X(0.30), X(0.62), Y(0.48), Y(0.80)
    d.rectangle([X(0.53), Y(0.34), X(0.57), Y(0.46)], fill=(120, 60, 50))
    d.rectangle([hx0, hy0, hx1, hy1], fill=(235, 220, 180), outline=(90, 60, 40), width=4)
    d.polygon([(hx0 - X(0.03), hy0), ((hx0 + hx1) / 2, Y(0.30)), (hx1 + X(0.03), hy0)],
              fill=(180, 50, 40), outline=(110, 30, 25))
    d.rectangle([X(0.43), Y(0.62), X(0.49), hy1], fill=(120, 75, 40), outline=(70, 40, 20), width=3)
    d.ellipse([X(0.475), Y(0.71), X(0.482), Y(0.72)], fill=(230, 200, 60))
    for wx in (0.33, 0.53):
        x0, y0, x1, y1 = X(wx), Y(0.54), X(wx + 0.065), Y(0.64)
        d.rectangle([x0, y0, x1, y1], fill=(150, 200, 240), outline=(255, 255, 255), width=4)
        d.line([((x0 + x1) / 2, y0), ((x0 + x1) / 2, y1)], fill=(255, 255, 255), width=3)
        d.line([(x0, (y0 + y1) / 2), (x1, (y0 + y1) / 2)], fill=(255, 255, 255), width=3)

    # Tree.
    d.rectangle([X(0.79), Y(0.58), X(0.82), Y(0.82)], fill=(110, 70, 35))
    for ox, oy, rr in ((0.805, 0.52, 0.075), (0.77, 0.57, 0.055), (0.84, 0.57, 0.055)):
        rx, ry = rr * min(W, H) * 1.2, rr * min(W, H) * 1.2
        d.ellipse([X(ox) - rx, Y(oy) - ry, X(ox) + rx, Y(oy) + ry], fill=(40, 120, 50))

    # A few coloured shapes in the grass, and the label.
    d.ellipse([X(0.08), Y(0.84), X(0.14), Y(0.92)], fill=(220, 60, 120))
    d.regular_polygon((X(0.20), Y(0.90), min(W, H) * 0.035), 3, fill=(250, 150, 30))
    d.rectangle([X(0.70), Y(0.86), X(0.75), Y(0.93)], fill=(60, 90, 200))
    font = _font(max(10, int(H * 0.07)))
    d.text((X(0.04), Y(0.03)), "nptp-mpi", font=font, fill=(255, 255, 255),
           stroke_width=max(1, H // 200), stroke_fill=(30, 40, 80))

    return img.resize((w, h), Image.Resampling.LANCZOS)


def write_sample(path: PathLike, size: tuple[int, int] = (480, 640)) -> Path:
    """Save :func:`sample_image` of ``(h, w)`` as PNG at ``path`` atomically; return the path."""
    img = sample_image(size)
    atomic_write(path, lambda f: img.save(f, format="PNG"), "sample image")
    return Path(path)


# --------------------------------------------------------------------------- tensors


def _read_npy_header(f: BinaryIO, name: str) -> tuple[tuple[int, ...], np.dtype]:
    """Validate the .npy magic/header and that the data bytes are all present; return (shape, dtype)."""
    head = f.read(len(_NPY_MAGIC))
    if head[:4] == _ZIP_MAGIC:
        raise InputError(f"{name}: is a .npz archive, expected a single-array .npy file")
    if head != _NPY_MAGIC:
        raise InputError(f"{name}: not a .npy file (bad magic); pickled data is never loaded")
    f.seek(0)
    try:
        version = np.lib.format.read_magic(f)
        if version == (1, 0):
            shape, _fortran, dtype = np.lib.format.read_array_header_1_0(f)
        elif version == (2, 0):
            shape, _fortran, dtype = np.lib.format.read_array_header_2_0(f)
        else:
            raise InputError(f"{name}: unsupported .npy format version {version[0]}.{version[1]}")
    except InputError:
        raise
    except Exception as exc:  # noqa: BLE001 - numpy raises ValueError/SyntaxError/... on bad headers
        raise InputError(f"{name}: corrupt .npy header ({one_line(exc)})") from None
    dtype = np.dtype(dtype)
    if dtype.hasobject:
        raise InputError(f"{name}: .npy holds an object (pickled) array; refused, never unpickled")
    if dtype.kind not in "fiu":
        raise InputError(
            f"{name}: unsupported dtype {dtype} (need a real float or integer type; "
            "complex, bool, string, structured and object arrays are refused)"
        )
    need = math.prod(shape) * dtype.itemsize
    have = os.fstat(f.fileno()).st_size - f.tell()
    if have < need:
        raise InputError(f"{name}: truncated .npy file (header needs {need} data bytes, file has {have})")
    return tuple(int(v) for v in shape), dtype


def load_tensor(path: PathLike, shape: tuple[int, int, int] | None = None) -> np.ndarray:
    """Load a ``.npy`` input tensor as C-contiguous ``(C, H, W)`` float32.

    Accepts ``(C, H, W)`` or ``(1, C, H, W)``; real float/int dtypes are cast to
    float32.  Refused with InputError: pickled/object arrays (never unpickled),
    other dtypes, NaN/Inf (with counts), values overflowing float32, wrong rank or
    a shape different from ``shape``, and missing/empty/oversized/corrupt files.
    """
    name = os.fspath(path)
    with open_regular(name, ".npy", MAX_FILE_BYTES) as f:
        file_shape, _dtype = _read_npy_header(f, name)
        f.seek(0)
        try:
            arr = np.load(f, allow_pickle=False)
        except MemoryError:
            raise InputError(f"{name}: out of memory reading the array") from None
        except Exception as exc:  # noqa: BLE001 - numpy raises ValueError/EOFError/OSError on bad data
            raise InputError(f"{name}: corrupt or truncated .npy ({one_line(exc)})") from None
    if not isinstance(arr, np.ndarray):  # defensive: np.load may return an NpzFile
        raise InputError(f"{name}: not a single-array .npy file")

    if arr.ndim == 4:
        if arr.shape[0] != 1:
            raise InputError(
                f"{name}: batch of {arr.shape[0]} in shape {tuple(file_shape)}; only one image is supported"
            )
        arr = arr[0]
    elif arr.ndim != 3:
        raise InputError(f"{name}: expected shape (C, H, W) or (1, C, H, W), got {tuple(file_shape)}")
    if arr.size == 0:
        raise InputError(f"{name}: empty tensor of shape {tuple(file_shape)}")
    if shape is not None:
        want = tuple(int(v) for v in shape)
        if tuple(arr.shape) != want:
            raise InputError(
                f"{name}: shape mismatch: expected {want} or {(1, *want)}, got {tuple(file_shape)}"
            )

    check_finite(arr, name)
    with np.errstate(over="ignore", invalid="ignore"):
        out = np.ascontiguousarray(arr, dtype=np.float32)
    n_over = int(np.count_nonzero(~np.isfinite(out)))
    if n_over:
        raise InputError(f"{name}: {n_over} values overflow float32 (|x| > {np.finfo(np.float32).max:.3g})")
    return out
