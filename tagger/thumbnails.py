"""Small JPEG previews of photos for the training report and the review page.

They go through `tagger.images.open_oriented`, the decoder tagging uses, so a preview shows the photo
the way the model saw it (EXIF orientation applied, every mode to RGB, the same decompression-bomb
limit, RAW through the same path), and a photo that cannot be tagged cannot be previewed either.
"""
from __future__ import annotations

import io
import os
from collections import OrderedDict
from pathlib import Path
from threading import Lock

from PIL import Image

from tagger.images import open_oriented


def make_thumbnail(path: str | os.PathLike, size: int = 256, quality: int = 80) -> bytes:
    """JPEG bytes of the upright photo, its longer side at most `size` pixels. Raises ImageError."""
    # Draft-mode decoding at twice the target keeps a 24 MP JPEG cheap without visible softening.
    img = open_oriented(path, min_side=min(2 * size, 1024))
    img.thumbnail((size, size), Image.Resampling.LANCZOS, reducing_gap=2.0)
    out = io.BytesIO()
    img.save(out, "JPEG", quality=quality, optimize=True)
    return out.getvalue()


class ThumbnailCache:
    """Thumbnails in memory, keyed by path and the file's size and mtime, so an edited photo is redone.

    Bounded (least recently used first out): a long review session stays at a few tens of MB.
    """

    def __init__(self, size: int = 320, max_items: int = 512):
        self.size = size
        self.max_items = max_items
        self._items: OrderedDict[tuple, bytes] = OrderedDict()
        self._lock = Lock()  # the web server may answer from several threads

    def get(self, path: Path) -> bytes:
        stat = path.stat()
        key = (str(path), stat.st_size, stat.st_mtime_ns)
        with self._lock:
            if key in self._items:
                self._items.move_to_end(key)
                return self._items[key]
        data = make_thumbnail(path, self.size)
        with self._lock:
            self._items[key] = data
            while len(self._items) > self.max_items:
                self._items.popitem(last=False)
        return data
