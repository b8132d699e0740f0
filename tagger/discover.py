"""Finding photos: a deterministic, streaming walk that never follows a symlink loop."""
from __future__ import annotations

import fnmatch
import os
from collections.abc import Iterable, Iterator
from pathlib import Path

from tagger.errors import ImageError, TaggerError
from tagger.images import is_image_name


def iter_photos(roots: Iterable[str | os.PathLike], exclude: Iterable[str] = ()) -> Iterator[Path | TaggerError]:
    """Photos under each root in sorted order, and one error item per thing that could not be read.

    A root that is a file is yielded whatever its extension (the user named it). Hidden files and
    folders are skipped: `.thumbnails`, `.git`, macOS `._IMG.jpg` resource forks are never photos.
    """
    patterns = tuple(exclude)
    seen_dirs: set[tuple[int, int]] = set()
    seen_files: set[str] = set()
    for root in roots:
        root = Path(root)
        if root.is_dir():
            yield from _walk(root, root, patterns, seen_dirs, seen_files)
        elif root.is_file():
            if not _excluded(root, root.parent, patterns) and _first_time(root, seen_files):
                yield root
        elif root.is_symlink():
            yield ImageError(root, "broken symbolic link")
        else:
            yield TaggerError(root, "no such file or folder")


def _walk(folder: Path, root: Path, patterns: tuple[str, ...], seen_dirs: set, seen_files: set[str]
          ) -> Iterator[Path | TaggerError]:
    try:
        info = folder.stat()
        key = (info.st_dev, info.st_ino)
        if key in seen_dirs:  # a symlink loop, or the same folder reached twice
            return
        seen_dirs.add(key)
        with os.scandir(folder) as listing:
            entries = sorted(listing, key=lambda e: e.name)
    except PermissionError:
        yield TaggerError(folder, "folder not readable (permission denied)")
        return
    except OSError as exc:
        yield TaggerError(folder, f"folder not readable ({exc.strerror or exc})")
        return

    subfolders = []
    for entry in entries:
        if entry.name.startswith("."):
            continue
        path = Path(entry.path)
        if _excluded(path, root, patterns):
            continue
        try:
            is_dir = entry.is_dir()  # follows symlinks
            is_file = not is_dir and entry.is_file()
        except OSError as exc:
            yield TaggerError(path, f"cannot read ({exc.strerror or exc})")
            continue
        if is_dir:
            subfolders.append(path)
        elif is_file:
            if is_image_name(entry.name) and _first_time(path, seen_files):
                yield path
        elif entry.is_symlink() and is_image_name(entry.name):
            yield ImageError(path, "broken symbolic link")
    # Files first, then subfolders: a folder's photos stay together in the output and progress.
    for sub in subfolders:
        yield from _walk(sub, root, patterns, seen_dirs, seen_files)


def _excluded(path: Path, root: Path, patterns: tuple[str, ...]) -> bool:
    if not patterns:
        return False
    try:
        relative = path.relative_to(root).as_posix()
    except ValueError:
        relative = path.as_posix()
    return any(fnmatch.fnmatch(path.name, p) or fnmatch.fnmatch(relative, p) for p in patterns)


def _first_time(path: Path, seen: set[str]) -> bool:
    """Two roots (or a symlink) can reach the same photo; tag it once."""
    real = os.path.realpath(path)
    if real in seen:
        return False
    seen.add(real)
    return True
