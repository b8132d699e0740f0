"""XMP sidecars (`--write xmp`): keywords where darktable, digiKam and Lightroom look for them.

Naming (DESIGN.md §4): every sidecar that already exists is updated (`IMG.jpg.xmp` and `IMG.xmp`);
otherwise `IMG.jpg.xmp` is created, or `IMG.xmp` with `--xmp-name basename`. `IMG.xmp` is never
used for a photo whose name stem another file shares (`IMG.CR2` + `IMG.JPG`): it would mix the two
photos' keywords, so the extension form is used and the user is told.
"""
from __future__ import annotations

import os
import sys
from collections.abc import Callable
from pathlib import Path

from tagger.atomic import refuse_read_only, write_atomic
from tagger.errors import WriteError, printable
from tagger.keywords import (TaggerRecord, check_prefix, merge_keywords, packet_fields, packet_record,
                             read_sidecar_packet, set_packet_keywords, set_packet_record, sidecar_names,
                             strip_keywords)
from tagger.writers.base import ModelRef, PhotoResult
from tagger.xmp import XmpError, XmpPacket, new_xmp

XMP_NAMES = ("extension", "basename")
# Files sharing a photo's stem that do not make IMG.xmp ambiguous: sidecars, exiftool's backups
# and the temporary file of an interrupted exiftool write.
_NOT_SIBLINGS = (".xmp", ".json", "_original", "_exiftool_tmp")


def _tqdm_write(message: str) -> None:
    from tqdm import tqdm

    tqdm.write(message, file=sys.stderr)  # prints above a progress bar instead of through it


class _Siblings:
    """Which name stems in a folder belong to more than one file. Photos arrive folder by folder,
    so only the current folder's listing is kept."""

    def __init__(self) -> None:
        self._folder: Path | None = None
        self._stems: dict[str, list[str]] = {}

    def others(self, photo: Path) -> list[str]:
        folder = photo.parent
        if folder != self._folder:
            self._folder, self._stems = folder, {}
            try:
                names = os.listdir(folder)
            except OSError:
                names = []
            for name in names:
                lower = name.lower()
                if lower.endswith(_NOT_SIBLINGS):
                    continue
                self._stems.setdefault(Path(name).stem.casefold(), []).append(name)
        return sorted(n for n in self._stems.get(photo.stem.casefold(), []) if n != photo.name)


def checked_stat(result: PhotoResult) -> os.stat_result:
    try:
        stat = result.path.stat()
    except OSError as exc:
        raise WriteError(result.path, f"photo not readable any more: {exc.strerror or exc}") from None
    if stat.st_mtime != result.mtime:
        raise WriteError(result.path, "photo changed while it was being tagged; run again to tag the new version")
    return stat


class XmpWriter:
    name = "xmp"
    changes_photo = False

    def __init__(self, xmp_name: str = "extension", keyword_prefix: str | None = None,
                 notify: Callable[[str], None] | None = None):
        if xmp_name not in XMP_NAMES:
            raise ValueError(f"xmp_name must be one of {XMP_NAMES}, not {xmp_name!r}")
        self.xmp_name = xmp_name
        self.keyword_prefix = check_prefix(keyword_prefix)
        self.notify = notify or _tqdm_write
        self._siblings = _Siblings()

    def sidecars(self, photo: Path, announce: bool = False) -> list[Path]:
        """The sidecars this photo's keywords go to."""
        extension_form, basename_form = sidecar_names(photo)
        shared = self._siblings.others(photo)
        targets = [extension_form] if extension_form.exists() else []
        if basename_form.exists() and not shared:
            targets.append(basename_form)
        if not targets:
            targets = [basename_form if self.xmp_name == "basename" and not shared else extension_form]
        if announce and shared and (self.xmp_name == "basename" or basename_form.exists()):
            self.notify(printable(f"{photo}: {basename_form.name} would be shared with {', '.join(shared)}; "
                                  f"using {extension_form.name}"))
        return targets

    def is_current(self, photo: Path, stat: os.stat_result, model: ModelRef) -> bool:
        for sidecar in self.sidecars(photo):
            try:
                packet = read_sidecar_packet(sidecar)
            except XmpError:
                return False  # write() reports it
            record = None if packet is None else packet_record(packet)
            if record is None or not record.is_current(stat, model.sha256, self.keyword_prefix):
                return False
        return True

    def write(self, result: PhotoResult) -> None:
        stat = checked_stat(result)
        tags = [tag for tag, _score in result.tags]
        for sidecar in self.sidecars(result.path, announce=True):
            packet = _load(sidecar)
            previous, current = packet_record(packet), packet_fields(packet)
            new, added = merge_keywords(current, previous.added if previous else _NOTHING, tags, self.keyword_prefix)
            set_packet_keywords(packet, new, current)
            set_packet_record(packet, TaggerRecord(
                model=result.model.name, model_sha256=result.model.sha256, keyword_prefix=self.keyword_prefix or "",
                photo_size=stat.st_size, photo_mtime_ns=stat.st_mtime_ns, added=added))
            write_atomic(sidecar, packet.to_bytes())

    def close(self) -> None:
        pass


_NOTHING = TaggerRecord().added


def _load(sidecar: Path) -> XmpPacket:
    try:
        packet = read_sidecar_packet(sidecar)
    except XmpError as exc:
        raise WriteError(sidecar, f"{exc.reason}; not overwritten (fix or move it to tag this photo)") from None
    if packet is None:
        return new_xmp()
    refuse_read_only(sidecar)
    return packet


def untag_sidecars(photo: Path, dry_run: bool = False) -> list[tuple[Path, int]]:
    """Remove the tagger's keywords and record from both sidecar forms of one photo.

    Returns (sidecar, keywords removed) for each sidecar that held a tagger record. A sidecar left
    with no properties at all (one the tagger created) is deleted. Raises WriteError.
    """
    done = []
    for sidecar in dict.fromkeys(sidecar_names(photo)):
        try:
            packet = read_sidecar_packet(sidecar)
        except XmpError as exc:
            raise WriteError(sidecar, f"{exc.reason}; left as it is") from None
        record = None if packet is None else packet_record(packet)
        if record is None:
            continue
        fields = packet_fields(packet)
        user = strip_keywords(fields, record.added)
        removed = len(fields.subject) - len(user.subject) + len(fields.hierarchical) - len(user.hierarchical)
        done.append((sidecar, removed))
        if dry_run:
            continue
        refuse_read_only(sidecar)
        set_packet_keywords(packet, user, fields)
        set_packet_record(packet, None)
        if packet.is_empty():
            try:
                sidecar.unlink()
            except OSError as exc:
                raise WriteError(sidecar, f"cannot remove: {exc.strerror or exc}") from None
        else:
            write_atomic(sidecar, packet.to_bytes())
    return done
