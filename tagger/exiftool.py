"""One persistent exiftool process (`-stay_open`) for reading and writing photo metadata.

Arguments travel through exiftool's argument file (its stdin), one per line, so file names are
passed as raw bytes and any character but a line break is safe; `-charset filename=utf8` makes
Windows read them as UTF-8. Every command's exit status and error output is checked, so a file
exiftool refuses becomes a one-line error for that file, never a crash of the run.
"""
from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterable, Sequence
from pathlib import Path

from tagger.errors import TaggerError, WriteError
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
    """A running exiftool. Start it once per run; `close()` (or `with`) ends it."""

    def __init__(self, executable: str | None = None):
        import exiftool as pyexiftool  # PyExifTool

        self._pyexiftool = pyexiftool
        self.executable = executable or find_exiftool()
        self._process = None
        self._start()

    def _start(self) -> None:
        fd, config = tempfile.mkstemp(prefix="tagger-exiftool-", suffix=".config")
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(_CONFIG)
        process = self._pyexiftool.ExifTool(executable=self.executable, config_file=config, encoding="utf-8",
                                            common_args=["-charset", "filename=utf8"])
        try:
            process.run()
        except self._pyexiftool.exceptions.ExifToolVersionError:
            raise ExifToolMissing(self.executable, "exiftool is older than 12.15; " + INSTALL_HINT) from None
        except (OSError, RuntimeError) as exc:
            raise ExifToolMissing(self.executable, f"exiftool did not start ({exc}); {INSTALL_HINT}") from None
        finally:
            os.unlink(config)  # read once at start-up
        self._process = process

    def close(self) -> None:
        process, self._process = self._process, None
        if process is not None and process.running:
            try:
                process.terminate()
            except Exception:  # a dead process cannot be stopped twice; nothing is left to clean up
                pass

    def __enter__(self) -> "ExifTool":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _execute(self, args: Sequence[str | bytes]) -> tuple[int, str, str]:
        if self._process is None or not self._process.running:
            self._start()
        try:
            stdout = self._process.execute(*args, raw_bytes=True)
        except (OSError, ValueError, self._pyexiftool.exceptions.ExifToolException) as exc:
            # The process died or its output lost sync: start a fresh one for the next file.
            self.close()
            raise TaggerError(None, f"exiftool stopped unexpectedly ({exc})") from None
        stderr = self._process.last_stderr
        return (self._process.last_status, stdout.decode("utf-8", "replace"), stderr.decode("utf-8", "replace"))

    def read(self, paths: Sequence[Path], tags: Iterable[str], fast: bool = False
             ) -> dict[Path, dict | TaggerError]:
        """The requested tags of each photo, keyed `Group:Tag` (family 1, e.g. `XMP-dc:Subject`):
        a list for list tags, else a string. A photo that cannot be read maps to its error."""
        tags = list(tags)
        results: dict[Path, dict | TaggerError] = {}
        by_name: dict[str, Path] = {}
        for path in paths:
            try:
                raw = _argument(path)
            except TaggerError as exc:
                results[path] = exc
                continue
            by_name[raw.decode("utf-8", "replace")] = path
        if not by_name:
            return results
        try:
            found, stderr = self._read_xml(list(by_name.values()), tags, fast)
        except TaggerError as exc:
            if len(by_name) > 1:  # one odd file must not cost the batch: ask file by file
                for path in by_name.values():
                    results.update(self.read([path], tags, fast))
            else:
                path = next(iter(by_name.values()))
                results[path] = TaggerError(path, exc.reason)
            return results
        single = len(by_name) == 1
        errors = [line for line in stderr.splitlines() if line.startswith("Error")]
        for name, path in by_name.items():
            entry = next(iter(found.values()), None) if single else found.get(name)
            error = next((line for line in errors if single or line.endswith(" - " + name)), None)
            if entry is not None and "ExifTool:Error" in entry:
                results[path] = TaggerError(path, str(entry["ExifTool:Error"]))
            elif error is not None or entry is None:
                results[path] = TaggerError(path, _clean_message(error, path) if error
                                            else "exiftool could not read this file")
            else:
                results[path] = entry
        return results

    def _read_xml(self, paths: list[Path], tags: list[str], fast: bool) -> tuple[dict[str, dict], str]:
        # RDF/XML output rather than -j: exiftool's JSON turns a keyword `True` into `true` and
        # `1.50` into a number, while XML keeps every value exactly as stored.
        args: list[str | bytes] = ["-X"] + (["-fast"] if fast else []) + [f"-{tag}" for tag in tags]
        args += [_argument(path) for path in paths]
        status, stdout, stderr = self._execute(args)
        if not stdout.strip():
            return {}, stderr
        try:
            packet = parse_xmp(stdout.encode("utf-8", "replace"), "exiftool output")
        except XmpError as exc:
            raise TaggerError(None, f"exiftool output not readable ({exc.reason})") from None
        return {about: values for about, values in packet.descriptions()}, stderr

    def read_one(self, path: Path, tags: Iterable[str], fast: bool = False) -> dict:
        """Like read() for one file; its error is raised as a WriteError (callers are writers)."""
        result = self.read([path], tags, fast=fast)[path]
        if isinstance(result, TaggerError):
            raise WriteError(path, result.reason)
        return result

    def write(self, path: Path, assignments: Sequence[str], backup: bool = False) -> None:
        """Apply `-TAG=VALUE` assignments to one file, keeping its modification time (`-P`).

        exiftool writes a temporary file and renames it over the photo, so the photo is never
        half-written; `backup` keeps the first original as `FILE_original`.
        """
        try:
            raw = _argument(path)
        except TaggerError as exc:
            raise WriteError(path, exc.reason) from None
        for value in assignments:
            if "\n" in value or "\r" in value:
                raise WriteError(path, f"a keyword contains a line break: {value!r}")
        args: list[str | bytes] = ["-P"] + ([] if backup else ["-overwrite_original"]) + list(assignments) + [raw]
        try:
            status, stdout, stderr = self._execute(args)
        except TaggerError as exc:
            raise WriteError(path, exc.reason) from None
        errors = [line for line in stderr.splitlines() if line.startswith("Error")]
        if status != 0 or errors or "1 image files updated" not in stdout and "1 image files unchanged" not in stdout:
            reason = _clean_message(errors[0], path) if errors else (stderr.strip().splitlines() or [""])[0]
            raise WriteError(path, _explain(reason or f"exiftool failed (status {status})", path))


def _explain(reason: str, path: Path) -> str:
    """exiftool's words, plus what to do where the fix is on the user's side."""
    lower = reason.lower()
    if "not yet supported" in lower or "can't currently write" in lower or "not supported" in lower:
        kind = path.suffix.lstrip(".").upper() or "these"
        return f"exiftool cannot write keywords into {kind} files ({reason}); use --write xmp for them"
    return f"exiftool refused to write: {reason}"
