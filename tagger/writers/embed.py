"""Keywords inside the photo (`--write embed`), through one persistent exiftool process.

Only the keyword fields and the tagger's own XMP namespace change. The keyword lists are edited in
place (`-=` the tagger's previous keywords, `+=` the new ones), so the user's entries are never sent
back through exiftool, which would trim spaces, drop empty items, cut IPTC at 64 bytes. exiftool
writes a temporary copy that replaces the photo in one rename (tagger.exiftool.ExifTool.write),
so a crash or Ctrl-C never leaves half a photo; callers hold the photo's lock (tagger.locking).
The record holds the photo's size *after* the tagger's write, so a re-run recognises its own work:
the size is only known once written, so it goes in as a fixed-width placeholder and is filled in
by a second, same-length write. The modification time is restored to the nanosecond (`-P` alone
keeps whole seconds).
"""
from __future__ import annotations

import os
import stat as stat_module
from pathlib import Path

from tagger.errors import TaggerError, WriteError
from tagger.exiftool import ExifTool
from tagger.keywords import (EXIFTOOL_TAGS, RECORD_VERSION, KeywordFields, TaggerRecord, check_prefix,
                             exiftool_fields, exiftool_record, iptc_fits, merge_keywords, strip_keywords)
from tagger.labels import has_control
from tagger.raw import embed_refusal
from tagger.writers.base import ModelRef, PhotoResult
from tagger.writers.xmp_sidecar import checked_stat

_SIZE_WIDTH = 12  # digits: photos up to 1 TB; fixed so that filling it in does not change the size
_NOTHING = KeywordFields(iptc=())


# IPTC datasets IIM calls mandatory: exiftool adds them to every IPTC record it rewrites. One the
# file did not have is removed again, so the file gains nothing but keywords.
_IPTC_MANDATORY = ("IPTC:EnvelopeRecordVersion", "IPTC:ApplicationRecordVersion")


def _assignment(tag: str, op: str, value: str) -> str | None:
    """One argument-file line setting `value`, exactly: exiftool strips a space after `=`, and an
    empty `-TAG=` clears a whole list, so a value with spaces at either end goes in a C-style line
    (`#[CSTR]`). None for a value no line can carry (empty, control characters)."""
    if value and value == value.strip() and not has_control(value):
        return f"-{tag}{op}{value}"
    if value.strip() and not has_control(value.replace("\t", " ")):
        escaped = value.replace("\\", "\\\\").replace("\t", "\\t")
        return f"#[CSTR]-{tag}{op}{escaped}"
    return None


def _list_edits(photo: Path, tag: str, current: tuple[str, ...], ours_before: tuple[str, ...],
                add: tuple[str, ...]) -> list[str]:
    """Edit one list in place: take out the tagger's previous keywords, append `add`. The user's
    entries are never sent back to exiftool, so they stay byte for byte (empty ones, spaces,
    over 64 bytes in IPTC, more than 1,000 of them)."""
    args: list[str] = []
    for value in dict.fromkeys(ours_before):
        present = current.count(value)
        ours = min(ours_before.count(value), present)
        if not ours:
            continue
        line = _assignment(tag, "-=", value)
        if line is None:
            raise WriteError(photo, f"the tagger's record holds a keyword exiftool cannot be given ({value!r}); "
                                    f"not changed")
        # `-=` takes out every copy: the user's own copies of the same word go back in.
        args += [line] + [_assignment(tag, "+=", value)] * (present - ours)
    for value in add:
        line = _assignment(tag, "+=", value)
        if line is None:
            raise WriteError(photo, f"keyword {value!r} cannot be written (empty or control characters)")
        args.append(line)
    return args


def _field_edits(photo: Path, current: KeywordFields, previous: KeywordFields, new: KeywordFields,
                 added: KeywordFields) -> list[str]:
    """exiftool arguments turning `current` into `new`: the previous record's keywords out, the user's
    IPTC keywords copied into an empty XMP list (see merge_keywords), the new ones in."""
    user = strip_keywords(current, previous)
    copied = tuple(v for v in new.subject[len(user.subject):len(new.subject) - len(added.subject)]
                   if _assignment("XMP-dc:Subject", "+=", v) is not None)
    args = _list_edits(photo, "XMP-dc:Subject", current.subject, previous.subject, copied + added.subject)
    args += _list_edits(photo, "XMP-lr:HierarchicalSubject", current.hierarchical, previous.hierarchical,
                        added.hierarchical)
    if current.iptc is not None:
        args += _list_edits(photo, "IPTC:Keywords", current.iptc, previous.iptc or (), added.iptc or ())
    return args


def _iptc_upkeep(entry: dict, edits: list[str]) -> tuple[list[str], list[str]]:
    """Arguments for the write that changes IPTC and for a second pass after it: Photoshop's
    IPTCDigest brought up to date where it was current (MWG readers ignore the XMP when it is
    stale), and the mandatory datasets exiftool adds to every IPTC record it rewrites taken out
    again where the file had none (that takes a second pass, which updates the digest too)."""
    if not any(arg.removeprefix("#[CSTR]").startswith("-IPTC:") for arg in edits):
        return [], []
    digest = ["-Photoshop:IPTCDigest-=old", "-Photoshop:IPTCDigest=new"] if "Photoshop:IPTCDigest" in entry else []
    absent = [f"-{tag}=" for tag in _IPTC_MANDATORY if tag not in entry]
    return digest, (absent + digest if absent else [])


def _list_assignments(tag: str, values: tuple[str, ...]) -> list[str]:
    """The tagger's record lists (its own values only): plain `=` replaces the list, a lone empty
    `=` deletes it."""
    return [f"-{tag}={value}" for value in values] if values else [f"-{tag}="]


def _toolkit(entry: dict) -> str:
    """exiftool stamps its own name into XMP-x:XMPToolkit on every XMP write; keep the photo's."""
    value = str(entry.get("XMP-x:XMPToolkit") or "")
    return (_assignment("XMP-x:XMPToolkit", "=", value) if value else None) or "-XMP-x:XMPToolkit="


def _check_readable_xmp(photo: Path, entry: dict) -> None:
    """exiftool reads what it can of a damaged XMP packet and writes back only that: refuse instead
    of silently dropping the keywords it could not read."""
    warning = str(entry.get("ExifTool:Warning") or "")
    if warning.startswith("XMP format error") or "XMP" in warning and "error" in warning.lower():
        raise WriteError(photo, f"the XMP inside this photo is damaged ({warning}); not changed, as a rewrite "
                                f"would drop what cannot be read (repair it, or use --write xmp)")


def _check_writable(photo: Path, stat: os.stat_result) -> None:
    # Mode bits, not os.access: exiftool (and root) can replace a read-only file in a writable
    # folder, but a read-only photo is the user saying "do not change this one".
    refusal = embed_refusal(photo)
    if refusal:
        raise WriteError(photo, refusal)
    if not stat.st_mode & stat_module.S_IWUSR:
        raise WriteError(photo, "photo is read-only; not changed (make it writable, or use --write xmp)")
    if not os.access(os.path.dirname(os.path.realpath(photo)), os.W_OK | os.X_OK):  # a link: its target's
        raise WriteError(photo, "folder not writable; exiftool needs to write a temporary file beside the photo")


class EmbedWriter:
    name = "embed"
    changes_photo = True  # tagger.tagging runs it before the sidecar writers and re-reads the photo's size

    def __init__(self, keyword_prefix: str | None = None, backup: bool = False, exiftool: ExifTool | None = None):
        self.keyword_prefix = check_prefix(keyword_prefix)
        self.backup = backup
        self._tool = exiftool or ExifTool()  # raises ExifToolMissing now, not once per photo

    def is_current(self, photo: Path, stat: os.stat_result, model: ModelRef) -> bool:
        try:
            entry = self._tool.read_one(photo, ("XMP-tagger:all",))
        except TaggerError:
            return False  # write() reports it
        record = exiftool_record(entry)
        return record is not None and record.is_current(stat, model.sha256, self.keyword_prefix)

    def write(self, result: PhotoResult) -> None:
        photo = result.path
        before = checked_stat(result)
        _check_writable(photo, before)
        entry = self._tool.read_one(photo, EXIFTOOL_TAGS)
        _check_readable_xmp(photo, entry)
        current, previous = exiftool_fields(entry), exiftool_record(entry)
        previous_added = previous.added if previous else _NOTHING
        new, added = merge_keywords(current, previous_added, [tag for tag, _score in result.tags],
                                    self.keyword_prefix, iptc_fits(entry.get("IPTC:CodedCharacterSet")))
        record = TaggerRecord(model=result.model.name, model_sha256=result.model.sha256,
                              keyword_prefix=self.keyword_prefix or "", photo_size=0,
                              photo_mtime_ns=before.st_mtime_ns, added=added)
        edits = _field_edits(photo, current, previous_added, new, added)
        digest, second_pass = _iptc_upkeep(entry, edits)
        try:
            self._tool.write(photo, edits + digest + _record_assignments(record) + [_toolkit(entry)],
                             backup=self.backup)
            self._fill_in_size(photo, [_toolkit(entry)] + second_pass)
        finally:
            _restore_mtime(photo, before)

    def _fill_in_size(self, photo: Path, extra: list[str]) -> None:
        written = 0
        for _attempt in range(3):
            size = photo.stat().st_size
            if size == written:
                return
            self._tool.write(photo, [f"-XMP-tagger:TaggerPhotoSize={size:0{_SIZE_WIDTH}d}", *extra])
            extra = [extra[0]]  # the IPTC upkeep is done by the first pass
            written = size
        raise WriteError(photo, "photo size kept changing while its record was written; run again")

    @property
    def tool(self) -> ExifTool:
        return self._tool

    def untag(self, photo: Path, dry_run: bool = False, entry: dict | None = None) -> int | None:
        """Remove the tagger's keywords and record from one photo: the number of keywords removed,
        None when the photo holds no tagger record. `entry` is the photo's EXIFTOOL_TAGS when
        already read (untag reads photos in batches). Raises WriteError."""
        if entry is None:
            entry = self._tool.read_one(photo, EXIFTOOL_TAGS)
        record = exiftool_record(entry)
        if record is None:
            return None
        current = exiftool_fields(entry)
        user = strip_keywords(current, record.added)
        removed = sum(len(a) - len(b) for a, b in ((current.subject, user.subject),
                                                   (current.hierarchical, user.hierarchical),
                                                   (current.iptc or (), user.iptc or ())))
        if dry_run:
            return removed
        try:
            before = photo.stat()
        except OSError as exc:
            raise WriteError(photo, f"cannot read: {exc.strerror or exc}") from None
        _check_writable(photo, before)
        _check_readable_xmp(photo, entry)
        edits = _field_edits(photo, current, record.added, user, _NOTHING)
        digest, second_pass = _iptc_upkeep(entry, edits)
        try:
            self._tool.write(photo, edits + digest + ["-XMP-tagger:all=", _toolkit(entry)], backup=self.backup)
            if second_pass:
                self._tool.write(photo, second_pass + [_toolkit(entry)])
        finally:
            _restore_mtime(photo, before)
        return removed

    def close(self) -> None:
        self._tool.close()


def _record_assignments(record: TaggerRecord) -> list[str]:
    args = [f"-XMP-tagger:TaggerVersion={RECORD_VERSION}", f"-XMP-tagger:TaggerModel={record.model}",
            f"-XMP-tagger:TaggerModelSHA256={record.model_sha256}",
            f"-XMP-tagger:TaggerKeywordPrefix={record.keyword_prefix}",
            f"-XMP-tagger:TaggerPhotoSize={record.photo_size or 0:0{_SIZE_WIDTH}d}",
            f"-XMP-tagger:TaggerPhotoMTime={record.photo_mtime_ns}"]
    args += _list_assignments("XMP-tagger:TaggerSubject", record.added.subject)
    args += _list_assignments("XMP-tagger:TaggerHierarchicalSubject", record.added.hierarchical)
    args += _list_assignments("XMP-tagger:TaggerIPTCKeywords", record.added.iptc or ())
    return args


def _restore_mtime(photo: Path, before: os.stat_result) -> None:
    try:
        now = photo.stat()
        if now.st_mtime_ns != before.st_mtime_ns:
            os.utime(photo, ns=(now.st_atime_ns, before.st_mtime_ns))
    except OSError:
        pass  # the write itself failed; its error is the one worth reporting
