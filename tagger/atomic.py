"""Sidecar files on disk: atomic replacement (a reader, or a Ctrl-C, never sees half a file) and
bounded reads (a FIFO, a device or a huge file named like a sidecar is refused, never read)."""
from __future__ import annotations

import os
import secrets
import stat as stat_module
from pathlib import Path

from tagger.errors import TaggerError, WriteError

MAX_SIDECAR_BYTES = 32 * 1024 * 1024


class NotASidecar(OSError):
    """A path that is there but is not a regular file of sensible size."""


def read_sidecar_bytes(path: Path, limit: int = MAX_SIDECAR_BYTES) -> bytes | None:
    """The whole file, or None when there is none. Its type and size are checked before a byte is
    read, and the read stops at `limit`, so a FIFO cannot hang the run, a link to /dev/zero cannot
    fill memory and a 3 GB sparse file is not read whole. Raises NotASidecar, or OSError."""
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0))
    except FileNotFoundError:
        if os.path.lexists(path):
            raise NotASidecar(f"broken symbolic link") from None
        return None
    try:
        info = os.fstat(fd)
        if not stat_module.S_ISREG(info.st_mode):
            raise NotASidecar("not a regular file (a folder, FIFO or device has the sidecar's name)")
        if info.st_size > limit:
            raise NotASidecar(f"larger than {limit // (1024 * 1024)} MB")
        chunks, total = [], 0
        while True:
            chunk = os.read(fd, min(1 << 20, limit + 1 - total))
            if not chunk:
                break
            chunks.append(chunk)
            total += len(chunk)
            if total > limit:
                raise NotASidecar(f"larger than {limit // (1024 * 1024)} MB")
        return b"".join(chunks)
    finally:
        os.close(fd)


def read_sidecar_or_raise(path: Path, error: type[TaggerError], what: str, *, limit: int = MAX_SIDECAR_BYTES,
                          consequence: str = "") -> bytes | None:
    """read_sidecar_bytes, its failures raised as `error(path, reason)`: "`what` is <why>`consequence`"
    for a file that is not a sidecar, "cannot read `what`: <why>" for one that cannot be read."""
    try:
        return read_sidecar_bytes(path, limit)
    except NotASidecar as exc:
        raise error(path, f"{what} is {exc}{consequence}") from None
    except OSError as exc:
        raise error(path, f"cannot read {what}: {exc.strerror or exc}") from None


def refuse_read_only(sidecar: Path) -> None:
    """An atomic rename would replace a read-only file anyway; honour the user's "do not touch"."""
    try:
        mode = sidecar.stat().st_mode
    except FileNotFoundError:
        return
    if not mode & stat_module.S_IWUSR:
        raise WriteError(sidecar, "sidecar is read-only; not changed (make it writable to update it)")


def write_atomic(path: Path, data: bytes) -> None:
    """Write to a temporary file in the same folder, fsync, then rename over `path`. A symbolic
    link is written through: its target gets the new content and the link stays a link."""
    if os.path.islink(path):
        path = Path(os.path.realpath(path))
    folder = path.parent
    # The name is chosen before the file exists, so a Ctrl-C at any moment after its creation (even
    # before os.open returns) still finds it in the handler below, which removes it.
    tmp = folder / f".{path.name}.{secrets.token_hex(4)}.tmp"
    try:
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0), 0o600)
        except OSError as exc:
            tmp = None  # not created: nothing to remove
            raise WriteError(path, f"cannot write in {folder}: {exc.strerror or exc}") from None
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        if path.exists():
            # Keep the permissions the user gave the old file instead of 0600.
            os.chmod(tmp, path.stat().st_mode & 0o7777)
        else:
            umask = os.umask(0)
            os.umask(umask)
            os.chmod(tmp, 0o666 & ~umask)
        os.replace(tmp, path)
    except BaseException as exc:  # KeyboardInterrupt included: never leave the temporary behind
        if tmp is not None:
            try:
                os.unlink(tmp)
            except OSError:
                pass
        if isinstance(exc, OSError):
            raise WriteError(path, f"cannot write: {exc.strerror or exc}") from None
        raise
