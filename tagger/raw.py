"""Camera RAW files (CR2, CR3, NEF, ARW, RAF, ORF, RW2, PEF, DNG, ...): which names are RAW, which
may be written into, and decoding through LibRaw (rawpy, the `raw` extra, imported only here).

Decoding takes the camera's embedded preview JPEG when it is large enough for the model: it
decodes through the same DCT-draft path as any JPEG, in a few milliseconds, where demosaicing the
sensor data takes a second or more. The preview is stored as the sensor saw the scene and its own
EXIF is often missing or wrong, so the RAW file's orientation is applied to it. Without a usable
preview, the mosaic is demosaiced at half size (LibRaw bins each 2x2 Bayer cell: no interpolation,
still far more pixels than a model needs).
"""
from __future__ import annotations

import io
import mmap
import os
import struct

import numpy as np
from PIL import Image, UnidentifiedImageError

from tagger.errors import ImageError
from tagger.images import MAX_PIXELS, open_checked, to_rgb

# What LibRaw reads, by the extensions cameras give their files (DESIGN.md §3).
RAW_EXTENSIONS = frozenset({
    ".3fr", ".ari", ".arw", ".bay", ".cr2", ".cr3", ".crw", ".dcr", ".dcs", ".dng", ".erf", ".fff", ".iiq",
    ".k25", ".kdc", ".mef", ".mos", ".mrw", ".nef", ".nrw", ".orf", ".pef", ".raf", ".rw2", ".rwl", ".sr2",
    ".srf", ".srw", ".x3f",
})
# DNG is an open, documented TIFF: exiftool rewrites its metadata as it does a TIFF's and every
# reader expects keywords inside it. The others are proprietary containers that only the camera
# maker fully documents: Lightroom, darktable and digiKam never write into them, neither do we.
WRITABLE_RAW_EXTENSIONS = frozenset({".dng"})

INSTALL_HINT = 'RAW photos need the RAW decoder: pip install "tagger[raw]"'

# LibRaw's `flip` (dcraw's bits: 1 mirror columns, 2 mirror rows, 4 transpose) as an EXIF orientation.
_FLIP_TO_ORIENTATION = {0: 1, 1: 2, 2: 4, 3: 3, 4: 5, 5: 8, 6: 6, 7: 7}
# The transposition that shows an image stored with that EXIF orientation upright (as
# PIL.ImageOps.exif_transpose does for JPEGs).
_UPRIGHT = {2: Image.Transpose.FLIP_LEFT_RIGHT, 3: Image.Transpose.ROTATE_180, 4: Image.Transpose.FLIP_TOP_BOTTOM,
            5: Image.Transpose.TRANSPOSE, 6: Image.Transpose.ROTATE_270, 7: Image.Transpose.TRANSVERSE,
            8: Image.Transpose.ROTATE_90}
# With no model size to serve (min_side None), a preview this large still beats demosaicing.
_DEFAULT_MIN_PREVIEW_SIDE = 1024


def is_raw_name(name: str | os.PathLike) -> bool:
    return os.path.splitext(os.fspath(name))[1].lower() in RAW_EXTENSIONS


def embed_refusal(photo: str | os.PathLike) -> str | None:
    """Why keywords must not be written into this photo's own file; None when they may be."""
    extension = os.path.splitext(os.fspath(photo))[1].lower()
    if extension not in RAW_EXTENSIONS or extension in WRITABLE_RAW_EXTENSIONS:
        return None
    return (f"not written into: {extension[1:].upper()} is a proprietary RAW format, never modified; "
            "use --write xmp for a sidecar that Lightroom, darktable and digiKam read")


def open_raw(path: str | os.PathLike, min_side: int | None = None, max_pixels: int = MAX_PIXELS,
             use_preview: bool = True) -> Image.Image:
    """A RAW photo upright in RGB: the embedded preview when both its sides are at least
    `min_side` (and `use_preview`), else a half-size demosaic. Raises ImageError."""
    try:
        import rawpy
    except ImportError:
        raise ImageError(path, INSTALL_HINT) from None
    size = os.stat(path).st_size  # a missing or unreadable file raises the OSError callers map
    if size == 0:
        raise ImageError(path, "empty file (0 bytes)")
    try:
        with rawpy.imread(os.fspath(path)) as raw:
            sizes = raw.sizes
            if sizes.raw_width * sizes.raw_height > max_pixels:
                raise ImageError(path, f"RAW image is {sizes.raw_width}x{sizes.raw_height} pixels, over the "
                                       f"{max_pixels:,}-pixel limit")
            if use_preview:
                preview = _preview(raw, path, min_side or _DEFAULT_MIN_PREVIEW_SIDE, max_pixels)
                if preview is not None:
                    orientation = _FLIP_TO_ORIENTATION.get(sizes.flip, 1)
                    if orientation in _UPRIGHT:
                        preview = preview.transpose(_UPRIGHT[orientation])
                    return to_rgb(preview)
            # LibRaw applies the file's orientation itself here (user_flip defaults to the file's).
            pixels = raw.postprocess(half_size=True, use_camera_wb=True, output_bps=8)
    except rawpy.LibRawError as exc:
        raise ImageError(path, _reason(rawpy, exc)) from None
    return Image.fromarray(np.ascontiguousarray(pixels), "RGB")


def _preview(raw, path, min_side: int, max_pixels: int) -> Image.Image | None:
    """The embedded preview, decoded at the smallest DCT scale that keeps `min_side`; None when the
    file has none, or one too small for the model or unreadable (the caller then demosaics)."""
    import rawpy

    try:
        thumb = raw.extract_thumb()
    except (rawpy.LibRawNoThumbnailError, rawpy.LibRawUnsupportedThumbnailError, rawpy.LibRawIOError,
            rawpy.LibRawDataError):
        return None
    if thumb.format == rawpy.ThumbFormat.JPEG and not _ends_in_file(path, thumb.data):
        return None  # a preview cut off with the file: the sensor data decides (and is cut too)
    if thumb.format == rawpy.ThumbFormat.BITMAP:
        height, width = thumb.data.shape[:2]
        if min(width, height) < min_side or thumb.data.ndim != 3 or thumb.data.dtype != np.uint8:
            return None
        return Image.fromarray(np.ascontiguousarray(thumb.data[:, :, :3]), "RGB")
    try:
        img = open_checked(path, min_side, max_pixels, source=io.BytesIO(thumb.data))
    except ImageError:
        raise  # a bomb in the preview is a bomb
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError, struct.error, EOFError):
        return None
    # img.size is already the draft scale, which never goes below min_side on a large enough preview.
    if min(img.size) < min_side:
        img.close()
        return None
    try:
        img.load()
    except (OSError, SyntaxError, ValueError, struct.error, EOFError):
        img.close()
        return None  # a truncated or odd preview: the sensor data may still be whole
    return img


def _ends_in_file(path, data: bytes, tail: int = 256) -> bool:
    """Whether a JPEG preview's last bytes are the file's own. LibRaw returns a preview that runs past
    the end of a cut file padded from memory it does not clear, so right after another RAW photo a cut
    DNG "decoded" into that photo's preview. (The head may differ: LibRaw can put an Exif header in
    front of a preview; the tail is the file's.)"""
    if len(data) > os.path.getsize(path):
        return False
    with open(path, "rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as mm:
        return mm.find(data[-tail:]) >= 0


def _reason(rawpy, exc: Exception) -> str:
    if isinstance(exc, rawpy.LibRawFileUnsupportedError):
        return "not a RAW file LibRaw can read (unknown camera, or a corrupt or truncated file)"
    if isinstance(exc, rawpy.LibRawIOError):
        return "cannot decode RAW: truncated or unreadable sensor data"
    if isinstance(exc, rawpy.LibRawDataError):
        return "cannot decode RAW: corrupt sensor data"
    if isinstance(exc, (rawpy.LibRawUnsufficientMemoryError, rawpy.LibRawTooBigError)):
        return "cannot decode RAW: too large for the memory available"
    text = exc.args[0].decode(errors="replace") if exc.args and isinstance(exc.args[0], bytes) else str(exc)
    return f"cannot decode RAW: {text or type(exc).__name__}"

