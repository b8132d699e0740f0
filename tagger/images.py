"""Photos to model-ready pixels: the one decode + resize path shared by `tagger tag` and training.

The trainer imports `load_image` and `resize_image` from here, so a model sees at tagging time
exactly the pixels it was trained on.
"""
from __future__ import annotations

import functools
import os
import struct
import threading
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import BinaryIO

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from tagger.errors import ImageError

# Larger than any camera sensor sold today (Phase One IQ4 is 151 MP); beyond it a file is a bomb.
MAX_PIXELS = 300_000_000

# Pillow reads these itself; HEIC/HEIF (iPhone photos) need pillow-heif or pi-heif.
PILLOW_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".webp", ".tif", ".tiff", ".bmp", ".gif"})
HEIF_EXTENSIONS = frozenset({".heic", ".heif"})

# Pillow's own bomb guard is process-wide (Image.MAX_IMAGE_PIXELS, a warning above it, a refusal
# above twice it) and runs inside Image.open, before ours can. It is set to our limit, its warning
# silenced, only while a header is read (or a photo over the process's own limit decoded), under
# this lock: the setting and the warnings filter are shared by every thread (catch_warnings is not
# thread-safe before Python 3.14).
_PILLOW_GUARD = threading.Lock()
_HEIF_ONCE = threading.Lock()

RESIZE_MODES = ("squash", "shortest", "longest")
INTERPOLATIONS = {"bicubic": Image.Resampling.BICUBIC, "bilinear": Image.Resampling.BILINEAR}

# Transparent areas are shown on white by most photo viewers; tag what the user sees.
_BACKGROUND = (255, 255, 255)


@dataclass(frozen=True)
class Preprocess:
    """How a model wants its input: travels in the model file (`tagger.preprocess`)."""

    size: int = 224  # square side S of the uint8 [S, S, 3] input
    resize: str = "shortest"  # squash: ignore aspect; shortest: scale + centre crop; longest: scale + pad
    interpolation: str = "bicubic"  # resampling filter for the final resize

    def __post_init__(self) -> None:
        if not isinstance(self.size, int) or not 8 <= self.size <= 4096:
            raise ValueError(f"preprocess size must be an integer in [8, 4096], got {self.size!r}")
        if self.resize not in RESIZE_MODES:
            raise ValueError(f"preprocess resize must be one of {RESIZE_MODES}, got {self.resize!r}")
        if self.interpolation not in INTERPOLATIONS:
            raise ValueError(
                f"preprocess interpolation must be one of {tuple(INTERPOLATIONS)}, got {self.interpolation!r}"
            )

    def to_dict(self) -> dict:
        return {"size": self.size, "resize": self.resize, "interpolation": self.interpolation}

    @classmethod
    def from_dict(cls, data: dict) -> "Preprocess":
        return cls(size=data["size"], resize=data.get("resize", "shortest"),
                   interpolation=data.get("interpolation", "bicubic"))


def register_heif() -> bool:
    """Teach Pillow HEIC/HEIF the first time one is needed (importing this module does not);
    False when neither pillow-heif nor pi-heif is installed."""
    with _HEIF_ONCE:
        return _register_heif_opener()


@functools.cache
def _register_heif_opener() -> bool:
    try:
        from pillow_heif import register_heif_opener
    except ImportError:
        try:  # pi-heif: the same libheif decoder without the (GPL, 22 MB) x265 encoder
            from pi_heif import register_heif_opener
        except ImportError:
            return False
    register_heif_opener()
    return True


@functools.cache
def image_extensions() -> frozenset[str]:
    """The file extensions discovery looks for (lower case, with the dot). RAW files are looked for
    even without the RAW decoder installed: each then says how to get it, instead of a silent skip."""
    from tagger.raw import RAW_EXTENSIONS

    pillow = (PILLOW_EXTENSIONS | HEIF_EXTENSIONS) if register_heif() else PILLOW_EXTENSIONS
    return pillow | RAW_EXTENSIONS


def is_image_name(name: str) -> bool:
    return os.path.splitext(name)[1].lower() in image_extensions()


@contextmanager
def _pillow_guard_at_our_limit() -> Iterator[int | None]:
    """Pillow's bomb guard at MAX_PIXELS and its warning silenced, for this block only (see
    _PILLOW_GUARD); yields the process's own Image.MAX_IMAGE_PIXELS."""
    with _PILLOW_GUARD, warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        own = Image.MAX_IMAGE_PIXELS
        Image.MAX_IMAGE_PIXELS = MAX_PIXELS
        try:
            yield own
        finally:
            Image.MAX_IMAGE_PIXELS = own


def open_checked(path: str | os.PathLike, min_side: int | None, max_pixels: int,
                 source: BinaryIO | None = None) -> Image.Image:
    """Open a photo and refuse it by the size in its header, before any pixel is decoded.
    `source` reads the image from a file object instead (a RAW file's preview); `path` names it."""
    if source is None and os.path.splitext(os.fspath(path))[1].lower() in HEIF_EXTENSIONS:
        register_heif()
    with _pillow_guard_at_our_limit() as pillow_limit:
        img = Image.open(path if source is None else source)
        try:
            width, height = img.size
            if width * height > max_pixels:
                raise ImageError(path, f"image is {width}x{height} pixels, over the {max_pixels:,}-pixel "
                                       "limit (decompression bomb?)")
            if min_side and img.format == "JPEG":
                img.draft("RGB", (min_side, min_side))
            if pillow_limit is not None and width * height > pillow_limit:
                img.load()  # outside the guard, Pillow would warn about or refuse what our limit allows
        except BaseException:
            img.close()
            raise
    return img


def open_oriented(path: str | os.PathLike, min_side: int | None = None,
                  max_pixels: int = MAX_PIXELS) -> Image.Image:
    """Decode a photo upright in RGB. With `min_side`, large JPEGs decode at a reduced scale
    (DCT draft mode) that still keeps both sides at least `min_side`: 4x less work on a 12 MP photo.
    Camera RAW files go through tagger.raw (their embedded preview, or a half-size demosaic)."""
    from tagger.raw import is_raw_name, open_raw  # (tagger.raw imports this module)

    try:
        if is_raw_name(path):
            return open_raw(path, min_side, max_pixels)
        with open_checked(path, min_side, max_pixels) as img:
            img.load()
            img = _orient(img)
            return to_rgb(img)
    except ImageError:
        raise
    except FileNotFoundError:
        raise ImageError(path, "file not found (broken link or moved during the run)") from None
    except PermissionError:
        raise ImageError(path, "permission denied") from None
    except IsADirectoryError:
        raise ImageError(path, "is a folder, not an image") from None
    except UnidentifiedImageError:
        size = _file_size(path)
        reason = "empty file (0 bytes)" if size == 0 else "not an image Pillow can read (unknown or corrupt format)"
        raise ImageError(path, reason) from None
    except Image.DecompressionBombError as exc:
        raise ImageError(path, f"decompression bomb: {exc}") from None
    except (OSError, SyntaxError, ValueError, struct.error, EOFError) as exc:
        # Pillow reports truncated and corrupt data as OSError/SyntaxError with terse texts.
        text = str(exc) or type(exc).__name__
        if "truncated" in text:
            text = "truncated or corrupt image data (" + text + ")"
        raise ImageError(path, f"cannot decode image: {text}") from None


def _file_size(path) -> int | None:
    try:
        return os.stat(path).st_size
    except OSError:
        return None


def _orient(img: Image.Image) -> Image.Image:
    try:
        return ImageOps.exif_transpose(img)
    except (SyntaxError, ValueError, TypeError, KeyError, OSError, struct.error):
        # Broken EXIF must not cost the user the photo: tag it as stored.
        return img


def to_rgb(img: Image.Image) -> Image.Image:
    """Any Pillow mode to 8-bit RGB: alpha composited on white, 16-bit and float scaled, not clipped."""
    if img.mode == "RGB":
        return img
    if img.mode in ("I;16", "I;16L", "I;16B", "I;16N", "I", "F"):
        return Image.fromarray(_scale_to_uint8(np.asarray(img)), "L").convert("RGB")
    if img.mode == "P" and "transparency" in img.info:
        img = img.convert("RGBA")
    if img.mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = img.convert("RGBA")
        background = Image.new("RGBA", rgba.size, _BACKGROUND + (255,))
        return Image.alpha_composite(background, rgba).convert("RGB")
    try:
        return img.convert("RGB")
    except ValueError as exc:
        raise ImageError(getattr(img, "filename", None), f"unsupported colour mode {img.mode}: {exc}") from None


def _scale_to_uint8(arr: np.ndarray) -> np.ndarray:
    arr = arr.astype(np.float64)
    top = float(arr.max()) if arr.size else 0.0
    if top <= 1.0:  # float images in [0, 1]
        scale = 255.0
    elif top <= 255.0:
        scale = 1.0
    elif top <= 65535.0:  # 16-bit data, whatever container Pillow put it in
        scale = 255.0 / 65535.0
    else:
        scale = 255.0 / top
    return np.clip(np.rint(arr * scale), 0, 255).astype(np.uint8)


def resize_image(img: Image.Image, spec: Preprocess) -> np.ndarray:
    """An RGB image to the model's uint8 [S, S, 3] input, per the model's preprocess spec."""
    size = spec.size
    resample = INTERPOLATIONS[spec.interpolation]
    width, height = img.size
    if spec.resize == "squash":
        out = img.resize((size, size), resample, reducing_gap=3.0)
    elif spec.resize == "shortest":
        # Crop the centred square in source coordinates and resize only that: one resampling pass.
        side = min(width, height)
        left, top = (width - side) / 2, (height - side) / 2
        out = img.resize((size, size), resample, box=(left, top, left + side, top + side), reducing_gap=3.0)
    else:  # longest: letterbox on black
        scale = size / max(width, height)
        new_w, new_h = max(1, round(width * scale)), max(1, round(height * scale))
        inner = img.resize((new_w, new_h), resample, reducing_gap=3.0)
        out = Image.new("RGB", (size, size))
        out.paste(inner, ((size - new_w) // 2, (size - new_h) // 2))
    return np.asarray(out, dtype=np.uint8)


def load_image(path: str | os.PathLike, spec: Preprocess, max_pixels: int = MAX_PIXELS) -> np.ndarray:
    """Decode, orient and resize one photo: the model's input pixels, uint8 [S, S, 3]."""
    img = open_oriented(path, min_side=spec.size, max_pixels=max_pixels)
    return resize_image(img, spec)

