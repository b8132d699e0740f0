"""One persistent exiftool process (`-stay_open`) for reading and writing photo metadata.

Arguments travel through exiftool's argument file (its stdin), one per line, so file names are
passed as raw bytes and any character but a line break is safe; `-charset filename=utf8` makes
Windows read them as UTF-8. Every command's exit status and error output is checked, so a file
exiftool refuses becomes a one-line error for that file, never a crash of the run. The protocol
itself (and noticing a process that died) is tagger.exiftool_process.
"""
from __future__ import annotations

import hashlib
import os
import secrets
import shutil
import tempfile
import unicodedata
from collections.abc import Iterable, Sequence
from pathlib import Path

from tagger.errors import TaggerError, WriteError
from tagger.exiftool_process import ExifToolDied, StayOpenProcess
from tagger.xmp import NS_TAGGER, XmpError, parse_xmp

INSTALL_HINT = ("install it (Debian/Ubuntu: sudo apt install libimage-exiftool-perl; Fedora: sudo dnf install "
                "perl-Image-ExifTool; macOS: brew install exiftool; Windows: https://exiftool.org) or point "
                "TAGGER_EXIFTOOL at it")

# The tagger's namespace as exiftool sees it: group XMP-tagger. Property names carry a `Tagger`
# prefix so that an exiftool without this config, which names unknown properties after their
# element, never mistakes them for Keywords, Subject or Model.
RECORD_PROPERTIES = ("TaggerVersion", "TaggerModel", "TaggerModelSHA256", "TaggerKeywordPrefix",
                     "TaggerPhotoSize", "TaggerPhotoMTime")
RECORD_LISTS = ("TaggerSubject", "TaggerHierarchicalSubject", "TaggerIPTCKeywords")

_CONFIG = """\
%Image::ExifTool::UserDefined = (
    'Image::ExifTool::XMP::Main' => {
        tagger => { SubDirectory => { TagTable => 'Image::ExifTool::UserDefined::tagger' } },
    },
);
%Image::ExifTool::UserDefined::tagger = (
    GROUPS => { 0 => 'XMP', 1 => 'XMP-tagger', 2 => 'Image' },
    NAMESPACE => { 'tagger' => '""" + NS_TAGGER + """' },
    WRITABLE => 'string',
""" + "".join(f"    {name} => {{ }},\n" for name in RECORD_PROPERTIES) + "".join(
    f"    {name} => {{ List => 'Bag' }},\n" for name in RECORD_LISTS) + """\
);
1;
"""


class ExifToolMissing(TaggerError):
    """exiftool is not installed (or too old): fatal for `--write embed`, not a per-photo error."""


MIN_VERSION = (12, 15)  # ${status} in -echo4 and `-api` options used here


def find_exiftool() -> str:
    """The exiftool executable: $TAGGER_EXIFTOOL, else the one on PATH."""
    override = os.environ.get("TAGGER_EXIFTOOL")
    if override:
        if not Path(override).is_file():
            raise ExifToolMissing(override, f"TAGGER_EXIFTOOL names no file; {INSTALL_HINT}")
        return override
    found = shutil.which("exiftool")
    if not found:
        raise ExifToolMissing(None, f"exiftool is needed to read or write keywords inside photos but was not "
                                    f"found on PATH: {INSTALL_HINT}")
    return found


def _argument(path: Path) -> bytes:
    """A file name as one argument-file line: absolute (a name starting with '-' is not an option)."""
    raw = os.fsencode(os.path.abspath(path))
    if b"\n" in raw or b"\r" in raw:
        raise TaggerError(path, "file name contains a line break, which exiftool cannot be given; rename it")
    return raw


def _clean_message(line: str, path: Path) -> str:
    """`Error: Not a valid JPEG - /x/a.jpg` -> `Not a valid JPEG`."""
    for head in ("Error: ", "Warning: "):
        if line.startswith(head):
            line = line[len(head):]
    for name in (os.path.abspath(path), str(path)):
        if line.endswith(" - " + name):
            line = line[: -len(name) - 3]
    return line.strip()


class ExifTool:
    """A running exiftool. Start it once per run; `close()` (or `with`) ends it. A process that dies
    mid-command costs that one photo (its error says so) and is started afresh for the next."""

    def __init__(self, executable: str | None = None):
        self.executable = executable or find_exiftool()
        self._process: StayOpenProcess | None = None
        self._start()

    def _start(self) -> None:
        fd, config = tempfile.mkstemp(prefix="tagger-exiftool-", suffix=".config")
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(_CONFIG)
        try:
            process = StayOpenProcess(self.executable, config, ["-charset", "filename=utf8"])
            try:
                status, stdout, _stderr = process.execute(["-ver"], timeout=60)  # also: the config is read
            except ExifToolDied as exc:
                raise ExifToolMissing(self.executable, f"exiftool did not start ({exc}); {INSTALL_HINT}") from None
        except OSError as exc:
            raise ExifToolMissing(self.executable, f"exiftool did not start ({exc.strerror or exc}); "
                                                   f"{INSTALL_HINT}") from None
        finally:
            os.unlink(config)
        try:
            version = tuple(int(part) for part in stdout.decode().strip().split(".")[:2])
        except ValueError:
            version = (0, 0)
        if version < MIN_VERSION:
            process.close()
            raise ExifToolMissing(self.executable, f"exiftool is older than {'.'.join(map(str, MIN_VERSION))}; "
                                                   + INSTALL_HINT)
        self._process = process

    @property
    def pid(self) -> int | None:
        return None if self._process is None else self._process.pid

    def close(self) -> None:
        process, self._process = self._process, None
        if process is not None:
            process.close()

    def __enter__(self) -> "ExifTool":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _execute(self, args: Sequence[str | bytes]) -> tuple[int, str, str]:
        if self._process is None or not self._process.running:
            self.close()
            self._start()
        try:
            status, stdout, stderr = self._process.execute(args)
        except ExifToolDied as exc:
            self.close()  # the next command starts a fresh process
            raise TaggerError(None, f"{exc}; it is restarted for the next photo") from None
        return status, stdout.decode("utf-8", "replace"), stderr.decode("utf-8", "replace")

    def read(self, paths: Sequence[Path], tags: Iterable[str], fast: bool = False
             ) -> dict[Path, dict | TaggerError]:
        """The requested tags of each photo, keyed `Group:Tag` (family 1, e.g. `XMP-dc:Subject`):
        a list for list tags, else a string. A photo that cannot be read maps to its error.

        Photos whose names exiftool prints exactly (valid UTF-8, no control characters) are read
        in one command and matched by name; any other photo, and any name that does not come back
        exactly once, is read on its own, so one photo's keywords never land on another."""
        tags = list(tags)
        results: dict[Path, dict | TaggerError] = {}
        by_name: dict[str, Path] = {}
        alone: list[Path] = []
        for path in paths:
            try:
                raw = _argument(path)
            except TaggerError as exc:
                results[path] = exc
                continue
            name = _printable_name(raw)
            if name is None or name in by_name:
                alone.append(path)
            else:
                by_name[name] = path
        if len(by_name) > 1:
            try:
                found, stderr = self._read_xml(list(by_name.values()), tags, fast)
            except ExifToolMissing:
                raise
            except TaggerError:
                found, stderr = {}, ""  # one odd file must not cost the batch: ask file by file
            for name, path in by_name.items():
                entries = found.get(name, [])
                if len(entries) == 1 and not any(line.endswith(" - " + name) for line in stderr.splitlines()):
                    results[path] = _entry_or_error(path, entries[0])
                else:
                    alone.append(path)
        else:
            alone.extend(by_name.values())
        for path in alone:
            results[path] = self._read_single(path, tags, fast)
        return {path: results[path] for path in paths if path in results}

    def _read_single(self, path: Path, tags: list[str], fast: bool) -> dict | TaggerError:
        try:
            found, stderr = self._read_xml([path], tags, fast)
        except ExifToolMissing:
            raise  # it died and cannot be started again: no photo can be read
        except TaggerError as exc:
            return TaggerError(path, exc.reason)
        entries = [entry for group in found.values() for entry in group]
        error = next((line for line in stderr.splitlines() if line.startswith("Error")), None)
        if error is not None:
            return TaggerError(path, _clean_message(error, path))
        if len(entries) != 1:
            return TaggerError(path, "exiftool could not read this file")
        return _entry_or_error(path, entries[0])

    def _read_xml(self, paths: list[Path], tags: list[str], fast: bool) -> tuple[dict[str, list[dict]], str]:
        # RDF/XML output rather than -j: exiftool's JSON turns a keyword `True` into `true` and
        # `1.50` into a number, while XML keeps every value exactly as stored. -m: lists longer
        # than 1,000 items are read whole (without it exiftool stops at 1,000, and a rewrite
        # would drop the rest).
        args: list[str | bytes] = ["-X", "-m"] + (["-fast"] if fast else []) + [f"-{tag}" for tag in tags]
        args += [_argument(path) for path in paths]
        _status, stdout, stderr = self._execute(args)
        if not stdout.strip():
            return {}, stderr
        try:
            packet = parse_xmp(stdout.encode("utf-8", "replace"), "exiftool output")
        except XmpError as exc:
            raise TaggerError(None, f"exiftool output not readable ({exc.reason})") from None
        found: dict[str, list[dict]] = {}
        for about, values in packet.descriptions():
            found.setdefault(about, []).append(values)
        return found, stderr

    def read_one(self, path: Path, tags: Iterable[str], fast: bool = False) -> dict:
        """Like read() for one file; its error is raised as a WriteError (callers are writers)."""
        result = self._read_single(path, list(tags), fast)
        if isinstance(result, TaggerError):
            raise WriteError(path, result.reason)
        return result

    def write(self, path: Path, assignments: Sequence[str], backup: bool = False) -> None:
        """Apply `-TAG=VALUE` assignments to one file, keeping its modification time.

        exiftool writes the edited photo to a new temporary file of the tagger's own (`-o`),
        which then replaces the photo in one rename: exiftool never deletes or renames the photo
        itself, a failed or killed write leaves the photo as it was, and a temporary file left by
        a killed run never blocks the next one (it is removed then). A symbolic link is written
        through: its target is updated and the link stays. `backup` keeps the first original as
        `FILE_original`. Callers hold the photo's lock (tagger.locking).
        """
        for value in assignments:
            if "\n" in value or "\r" in value:
                raise WriteError(path, f"a keyword contains a line break: {value!r}")
        target = Path(os.path.realpath(path))
        try:
            raw = _argument(target)
            before = target.stat()
        except TaggerError as exc:
            raise WriteError(path, exc.reason) from None
        except OSError as exc:
            raise WriteError(path, f"cannot read: {exc.strerror or exc}") from None
        if before.st_nlink > 1:
            raise WriteError(path, f"photo has {before.st_nlink} hard links, which a rewrite would separate; "
                                   f"not changed (use --write xmp for it)")
        remove_stale_temporaries(target)
        temporary = target.with_name(f"{_temporary_prefix(target)}{secrets.token_hex(4)}.tmp")
        args = ["-P", *assignments, "-o", os.fsencode(temporary), raw]
        try:
            try:
                status, stdout, stderr = self._execute(args)
            except ExifToolMissing:
                raise
            except TaggerError as exc:
                raise WriteError(path, exc.reason) from None
            errors = [line for line in stderr.splitlines() if line.startswith("Error")]
            if status != 0 or errors or not any(f"1 image files {word}" in stdout for word in ("created", "unchanged")):
                reason = _clean_message(errors[0], target) if errors else (stderr.strip().splitlines() or [""])[0]
                raise WriteError(path, _explain(reason or f"exiftool failed (status {status})", path))
            if not temporary.exists():
                return  # nothing to change
            try:
                os.chmod(temporary, before.st_mode & 0o7777)
                os.utime(temporary, ns=(before.st_atime_ns, before.st_mtime_ns))
                if backup:
                    _keep_original(target)
                os.replace(temporary, target)
            except OSError as exc:
                raise WriteError(path, f"cannot replace the photo with its updated copy: {exc.strerror or exc}") from None
        finally:
            try:
                temporary.unlink()
            except FileNotFoundError:
                pass
            except OSError:
                pass  # the next write to this photo removes it


def _entry_or_error(path: Path, entry: dict) -> dict | TaggerError:
    if "ExifTool:Error" in entry:
        return TaggerError(path, str(entry["ExifTool:Error"]))
    return entry


def _printable_name(raw: bytes) -> str | None:
    """The name as exiftool prints it, when that is exactly the name: valid UTF-8, no control
    characters (exiftool shows those, and invalid bytes, as `?` or `.`)."""
    try:
        name = raw.decode("utf-8")
    except UnicodeDecodeError:
        return None
    if any(unicodedata.category(c) in ("Cc", "Cs") for c in name):
        return None
    return name


def _temporary_prefix(photo: Path) -> str:
    # Hidden (discovery skips it), short (a 250-byte photo name still leaves room) and the same
    # for every write to one photo, so a leftover of a killed run is found and removed.
    key = hashlib.sha1(os.fsencode(photo.name)).hexdigest()[:12]
    return f".tagger-{key}-"


def remove_stale_temporaries(photo: Path) -> None:
    """Temporary copies of this photo left by a run that was killed mid-write (under the photo's lock,
    no other run can be writing one)."""
    prefix = _temporary_prefix(photo)
    try:
        names = [name for name in os.listdir(photo.parent) if name.startswith(prefix) and name.endswith(".tmp")]
    except OSError:
        return
    for name in names:
        try:
            os.unlink(photo.parent / name)
        except OSError:
            pass


def _keep_original(photo: Path) -> None:
    """`FILE_original`, once: the photo as it was before the tagger's first write."""
    original = photo.with_name(photo.name + "_original")
    if os.path.lexists(original):
        return
    try:
        os.link(photo, original)  # the untouched file itself, kept under a second name
    except OSError:
        shutil.copy2(photo, original)


def _explain(reason: str, path: Path) -> str:
    """exiftool's words, plus what to do where the fix is on the user's side."""
    lower = reason.lower()
    if "not yet supported" in lower or "can't currently write" in lower or "not supported" in lower:
        kind = path.suffix.lstrip(".").upper() or "these"
        return f"exiftool cannot write keywords into {kind} files ({reason}); use --write xmp for them"
    return f"exiftool refused to write: {reason}"
