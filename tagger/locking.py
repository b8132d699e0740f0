"""One writer per photo at a time, across processes: two `tagger tag` (or `untag`) runs on the
same folder take turns on each photo instead of writing over each other.

The lock is an advisory lock on the photo file itself (flock on POSIX), so it needs no lock
files beside the photos, is shared by every path that reaches the photo (a symlink, a second
root) and is released by the operating system when a run dies. Writers replace the photo with a
new file (a rename), so after waiting a run checks that it locked the file now at the path.
"""
from __future__ import annotations

import hashlib
import os
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from tagger.errors import WriteError

LOCK_TIMEOUT_S = 120.0  # longer than any one photo's write; a run stuck longer is named, not waited on
_POLL_S = 0.02

try:
    import fcntl
except ImportError:  # Windows
    fcntl = None


def _try_lock(fd: int) -> bool:
    if fcntl is not None:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return False
        return True
    import msvcrt

    try:
        msvcrt.locking(fd, msvcrt.LK_NBLCK, 1)
    except OSError:
        return False
    return True


def _open_for_lock(photo: Path) -> tuple[int, Path]:
    """A descriptor to lock, and what it must still be at the end: the photo on POSIX; on Windows,
    where a lock on the photo would stop exiftool reading it, a lock file named after its real path."""
    if fcntl is not None:
        flags = os.O_RDONLY | getattr(os, "O_CLOEXEC", 0) | getattr(os, "O_NONBLOCK", 0)
        try:
            return os.open(photo, flags), photo
        except PermissionError:
            # A photo the user may not read can still have sidecars to write or clean: every run
            # that meets it locks its folder instead.
            return os.open(photo.parent, flags), photo.parent
    key = hashlib.sha256(os.fsencode(os.path.realpath(photo))).hexdigest()[:32]
    folder = Path(tempfile.gettempdir()) / "tagger-locks"
    folder.mkdir(exist_ok=True)
    lock = folder / f"{key}.lock"
    return os.open(lock, os.O_RDWR | os.O_CREAT, 0o600), lock


def _same_file(fd: int, path: Path) -> bool:
    try:
        now, held = os.stat(path), os.fstat(fd)
    except OSError:
        return False
    return (now.st_dev, now.st_ino) == (held.st_dev, held.st_ino)


@contextmanager
def photo_lock(photo: Path, timeout: float = LOCK_TIMEOUT_S) -> Iterator[None]:
    """Hold the photo's lock for the block; waits for another run's write to finish. Raises WriteError
    when the photo cannot be opened or another run holds it longer than `timeout`."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            fd, locked = _open_for_lock(photo)
        except OSError as exc:
            raise WriteError(photo, f"cannot open to lock it for writing: {exc.strerror or exc}") from None
        if _try_lock(fd):
            if _same_file(fd, locked):
                break
            # Replaced (by the run we waited for) while we waited: lock the new file instead.
        os.close(fd)
        if time.monotonic() > deadline:
            raise WriteError(photo, f"another tagger run has been writing this photo for over {timeout:.0f} s; "
                                    f"not changed (run again when it has finished)")
        time.sleep(_POLL_S)
    try:
        yield
    finally:
        os.close(fd)  # closing the descriptor releases the lock
