"""Real DNG files made from arrays, for the RAW tests and the RAW benchmark (no download needed).

A DNG is a TIFF: IFD 0 holds the camera's preview (a baseline JPEG, as cameras and Adobe's
converter store it), its SubIFD the Bayer mosaic (16-bit, uncompressed, RGGB). The colour matrix
says the sensor records linear sRGB and the white balance is neutral, so LibRaw's demosaic gives
back (after its gamma and auto-brightness) the scene's colours. Without a preview, IFD 0 holds the
mosaic itself, the layout of a minimal DNG.
"""
from __future__ import annotations

import io
import struct
from pathlib import Path

import numpy as np
from PIL import Image

# TIFF field types: (code, struct format of one value)
_BYTE, _ASCII, _SHORT, _LONG, _RATIONAL, _SRATIONAL = 1, 2, 3, 4, 5, 10
_FORMATS = {_BYTE: "B", _ASCII: "B", _SHORT: "H", _LONG: "I", _RATIONAL: "II", _SRATIONAL: "ii"}

# XYZ (D65) -> linear sRGB: as DNG's ColorMatrix1 it makes the "camera" see linear sRGB.
_XYZ_TO_SRGB = ((3.2406, -1.5372, -0.4986), (-0.9689, 1.8758, 0.0415), (0.0557, -0.2040, 1.0570))
WHITE_LEVEL = 4095  # a 12-bit sensor


def _srationals(values) -> list[tuple[int, int]]:
    return [(round(v * 10000), 10000) for v in values]


def _ifd(entries: dict[int, tuple[int, list]], at: int, next_ifd: int = 0) -> bytes:
    """One IFD ({tag: (type, values)}) placed at file offset `at` (even), its long values after it."""
    count = len(entries)
    values_at = at + 2 + 12 * count + 4
    table, values = bytearray(struct.pack("<H", count)), bytearray()
    for tag in sorted(entries):
        kind, items = entries[tag]
        data = b"".join(struct.pack("<" + _FORMATS[kind], *(v if isinstance(v, tuple) else (v,))) for v in items)
        if len(data) <= 4:
            field = data.ljust(4, b"\0")
        else:
            field = struct.pack("<I", values_at + len(values))
            values += data + b"\0" * (len(data) % 2)
        table += struct.pack("<HHI", tag, kind, len(items)) + field
    return bytes(table + struct.pack("<I", next_ifd) + values)


def _placed(ifds: list[dict], blobs: list[bytes], offset_tags: list[tuple[int, int, int]]) -> bytes:
    """A TIFF with the IFDs first (chained through SubIFDs by the caller) and then the blobs, as
    cameras lay files out: the header and tags at the front, image data after them. `offset_tags`
    holds (ifd index, tag, blob index | -1 - ifd index): a tag whose value is that blob's or IFD's offset."""
    def layout(entries_list):
        at, ifd_at = 8, []
        for entries in entries_list:
            ifd_at.append(at)
            at += len(_ifd(entries, at))
            at += at % 2
        blob_at = []
        for blob in blobs:
            blob_at.append(at)
            at += len(blob) + len(blob) % 2
        return ifd_at, blob_at

    ifd_at, blob_at = layout(ifds)  # offsets only change values, never sizes: one pass fixes them
    for index, tag, target in offset_tags:
        kind, _ = ifds[index][tag]
        ifds[index][tag] = (kind, [blob_at[target] if target >= 0 else ifd_at[-1 - target]])
    out = bytearray(b"II*\0" + struct.pack("<I", ifd_at[0]))
    for entries, at in zip(ifds, ifd_at):
        out += _ifd(entries, at)
        out += b"\0" * (len(out) % 2)
    for blob in blobs:
        out += blob + b"\0" * (len(blob) % 2)
    return bytes(out)


def mosaic(rgb: np.ndarray) -> np.ndarray:
    """An sRGB uint8 [H, W, 3] photo as the RGGB sensor would have recorded it (uint16, linear)."""
    linear = (rgb.astype(np.float64) / 255.0) ** 2.2 * WHITE_LEVEL
    height, width = rgb.shape[0] & ~1, rgb.shape[1] & ~1
    raw = np.empty((height, width), dtype=np.uint16)
    raw[0::2, 0::2] = linear[0:height:2, 0:width:2, 0]
    raw[0::2, 1::2] = linear[0:height:2, 1:width:2, 1]
    raw[1::2, 0::2] = linear[1:height:2, 0:width:2, 1]
    raw[1::2, 1::2] = linear[1:height:2, 1:width:2, 2]
    return raw


def preview_jpeg(rgb: np.ndarray, quality: int = 90, orientation: int | None = None) -> bytes:
    """A preview as cameras embed it; `orientation` puts a (possibly wrong) EXIF tag inside it."""
    buffer = io.BytesIO()
    img = Image.fromarray(rgb)
    exif = Image.Exif()
    if orientation is not None:
        exif[0x0112] = orientation
    img.save(buffer, "JPEG", quality=quality, exif=exif.tobytes() if orientation is not None else b"")
    return buffer.getvalue()


def write_dng(path: Path, rgb: np.ndarray, *, orientation: int = 1, preview: np.ndarray | bytes | None = None,
              bitmap_preview: bool = False, make: str = "Tagger", model: str = "Test Camera") -> Path:
    """A DNG of the scene `rgb` (uint8 [H, W, 3], as stored by the sensor, before orientation).

    `preview`: an RGB array (saved as a baseline JPEG, or uncompressed with `bitmap_preview`, as
    some older cameras store it) or JPEG bytes for IFD 0; None leaves the file without one. `orientation` is the EXIF orientation (1-8) the camera recorded.
    """
    raw = mosaic(rgb)
    raw_data = raw.astype("<u2").tobytes()
    raw_ifd = {
        254: (_LONG, [0]), 256: (_LONG, [raw.shape[1]]), 257: (_LONG, [raw.shape[0]]), 258: (_SHORT, [16]),
        259: (_SHORT, [1]), 262: (_SHORT, [32803]), 273: (_LONG, [0]), 277: (_SHORT, [1]),
        278: (_LONG, [raw.shape[0]]), 279: (_LONG, [len(raw_data)]), 284: (_SHORT, [1]),
        33421: (_SHORT, [2, 2]), 33422: (_BYTE, [0, 1, 1, 2]), 50710: (_BYTE, [0, 1, 2]), 50711: (_SHORT, [1]),
        50714: (_LONG, [0]), 50717: (_LONG, [WHITE_LEVEL]),
    }
    camera = {
        271: (_ASCII, list(make.encode() + b"\0")), 272: (_ASCII, list(model.encode() + b"\0")),
        274: (_SHORT, [orientation]),
        50706: (_BYTE, [1, 4, 0, 0]), 50707: (_BYTE, [1, 1, 0, 0]),
        50708: (_ASCII, list(f"{make} {model}".encode() + b"\0")),
        50721: (_SRATIONAL, _srationals(v for row in _XYZ_TO_SRGB for v in row)),
        50728: (_RATIONAL, [(1, 1)] * 3), 50778: (_SHORT, [21]),  # neutral white balance, D65
    }
    if preview is None:
        path.write_bytes(_placed([{**raw_ifd, **camera}], [raw_data], [(0, 273, 0)]))
        return path
    if bitmap_preview:  # uncompressed 8-bit RGB strips
        data, (height, width) = np.ascontiguousarray(preview, np.uint8).tobytes(), preview.shape[:2]
        compression, photometric = 1, 2
    else:  # a baseline JPEG (DNG's "JPEG" compression 7, YCbCr)
        data = preview if isinstance(preview, bytes) else preview_jpeg(preview)
        with Image.open(io.BytesIO(data)) as img:
            width, height = img.size
        compression, photometric = 7, 6
    first = {
        **camera,
        254: (_LONG, [1]), 256: (_LONG, [width]), 257: (_LONG, [height]), 258: (_SHORT, [8, 8, 8]),
        259: (_SHORT, [compression]), 262: (_SHORT, [photometric]), 273: (_LONG, [0]), 277: (_SHORT, [3]),
        278: (_LONG, [height]), 279: (_LONG, [len(data)]), 284: (_SHORT, [1]), 330: (_LONG, [0]),
    }
    path.write_bytes(_placed([first, raw_ifd], [data, raw_data], [(0, 273, 0), (0, 330, -2), (1, 273, 1)]))
    return path
