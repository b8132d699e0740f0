"""Decoded training pixels, cached once: a uint8 [N, S, S, 3] memmap in the run folder.

Decoding uses `tagger.images.load_image`, the function `tagger tag` uses, so training sees exactly
the pixels the runtime will. An index beside the array records each file's size and mtime; a later
run (or `--resume`) with the same photos reuses the array without decoding anything.
"""
from __future__ import annotations

import json
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tqdm import tqdm

from tagger.atomic import write_atomic
from tagger.errors import ImageError
from tagger.images import Preprocess, load_image


@dataclass
class ImageCache:
    array: np.ndarray  # uint8 [rows, S, S, 3], memory-mapped read-only; rows of failed photos unused
    rows: np.ndarray  # int64 [N]: array row of each decoded photo
    paths: list[Path]  # the photos that decoded, in the order asked for
    failed: list[str]  # "path: reason" for each photo that did not decode (skipped)

    def __len__(self) -> int:
        return len(self.paths)

    def get(self, indices) -> np.ndarray:
        """uint8 [len(indices), S, S, 3] for decoded-photo indices (a copy, in that order)."""
        return np.ascontiguousarray(self.array[self.rows[np.asarray(indices, dtype=np.int64)]])


def _paths_for(folder: Path, preprocess: Preprocess) -> tuple[Path, Path]:
    tag = f"{preprocess.size}-{preprocess.resize}-{preprocess.interpolation}"
    return folder / f"images-{tag}.npy", folder / f"images-{tag}.json"


def _stamp(path: Path) -> list:
    try:
        info = os.stat(path)
        return [str(path), info.st_size, info.st_mtime_ns]
    except OSError:
        return [str(path), None, None]


def build_cache(paths: list[Path], preprocess: Preprocess, folder: str | Path, workers: int = 4,
                progress: bool = True) -> ImageCache:
    """Decode `paths` into `folder` (or reuse what is there); corrupt photos are skipped and listed."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    array_path, index_path = _paths_for(folder, preprocess)
    entries = [_stamp(p) for p in paths]
    reused = _reuse(array_path, index_path, entries)
    if reused is not None:
        return reused

    size = preprocess.size
    tmp_path = array_path.with_name(array_path.name + ".partial")
    array = np.lib.format.open_memmap(tmp_path, mode="w+", dtype=np.uint8, shape=(len(paths), size, size, 3))
    ok = np.zeros(len(paths), dtype=bool)
    failed: list[str] = []

    def decode(i: int):
        try:
            return i, load_image(paths[i], preprocess), None
        except ImageError as exc:
            return i, None, str(exc)

    # Pillow releases the GIL while decoding and resizing, so threads decode in parallel.
    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        results = tqdm(pool.map(decode, range(len(paths))), total=len(paths), desc="decoding photos",
                       unit="photo", disable=None if progress else True, leave=False)
        for i, pixels, error in results:
            if error is None:
                array[i] = pixels
                ok[i] = True
            else:
                failed.append(error)
    array.flush()
    del array
    os.replace(tmp_path, array_path)
    index = {"entries": entries, "ok": ok.tolist(), "failed": failed}
    write_atomic(index_path, json.dumps(index).encode("utf-8"))
    return _open(array_path, entries, ok, failed)


def _open(array_path: Path, entries: list, ok, failed: list[str]) -> ImageCache:
    ok = np.asarray(ok, dtype=bool)
    rows = np.flatnonzero(ok)
    return ImageCache(np.load(array_path, mmap_mode="r"), rows, [Path(entries[i][0]) for i in rows], failed)


def _reuse(array_path: Path, index_path: Path, entries: list) -> ImageCache | None:
    try:
        index = json.loads(index_path.read_text(encoding="utf-8"))
        if index.get("entries") != entries or not array_path.is_file():
            return None
        return _open(array_path, entries, index["ok"], index["failed"])
    except (OSError, ValueError, KeyError):
        return None


def open_cache(folder: str | Path, preprocess: Preprocess) -> ImageCache | None:
    """The cache a run left in `folder`, whatever photos it holds; None when there is none."""
    array_path, index_path = _paths_for(Path(folder), preprocess)
    try:
        index = json.loads(index_path.read_text(encoding="utf-8"))
        return _open(array_path, index["entries"], index["ok"], index["failed"])
    except (OSError, ValueError, KeyError):
        return None
