"""Keywords in photos and XMP sidecars: which are the user's, which the tagger added, how they merge.

Three fields hold keywords (DESIGN.md §4): XMP dc:subject (flat), XMP lr:hierarchicalSubject
(`Animals|Dog`, every level also in dc:subject) and IPTC Keywords (only in files that already have
IPTC). The tagger records what it added in its own XMP namespace (see tagger.xmp.NS_TAGGER), so it
can later replace or remove exactly that and nothing the user wrote. `read_user_keywords` is the
other direction: the user's own keywords, the training labels of `tagger train`.
"""
from __future__ import annotations

import os
import warnings
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from tagger.atomic import read_sidecar_or_raise
from tagger.errors import TaggerError
from tagger.labels import HIERARCHY_SEP, tag_levels
from tagger.xmp import MAX_XMP_BYTES, NS_DC, NS_LR, NS_TAGGER, XmpError, XmpPacket, parse_xmp

RECORD_VERSION = "1"
IPTC_KEYWORD_BYTES = 64  # IPTC IIM limit for one keyword (dataset 2:25)
NO_IPTC_TYPES = frozenset({"HEIC", "HEIF", "AVIF"})  # ISO-BMFF files hold no IPTC block

# exiftool tag names (`-G1`) the keyword code reads from a photo.
EXIFTOOL_TAGS = ("File:FileType", "XMP-x:XMPToolkit", "XMP-dc:Subject", "XMP-lr:HierarchicalSubject",
                 "IPTC:all", "XMP-tagger:all", "Photoshop:IPTCDigest", "ExifTool:Warning")


@dataclass(frozen=True)
class KeywordFields:
    """The three keyword fields of one file. `iptc` is None where the file has no IPTC block."""

    subject: tuple[str, ...] = ()
    hierarchical: tuple[str, ...] = ()
    iptc: tuple[str, ...] | None = None


@dataclass(frozen=True)
class TaggerRecord:
    """What the tagger's namespace says about its last write to one file."""

    model: str = ""
    model_sha256: str = ""
    keyword_prefix: str = ""
    photo_size: int | None = None  # the photo's size and mtime (ns) right after the tagger's write
    photo_mtime_ns: int | None = None
    added: KeywordFields = field(default_factory=lambda: KeywordFields(iptc=()))

    def is_current(self, stat: os.stat_result, model_sha256: str, keyword_prefix: str | None) -> bool:
        return (self.model_sha256 == model_sha256 and self.photo_size == stat.st_size
                and self.photo_mtime_ns == stat.st_mtime_ns and self.keyword_prefix == (keyword_prefix or ""))


def check_prefix(prefix: str | None) -> str | None:
    """`--keyword-prefix`: a parent keyword (`auto`, or `auto|ml`) or None."""
    if prefix is None or not prefix.strip():
        return None
    levels = [level.strip() for level in prefix.split(HIERARCHY_SEP)]
    if any(not level for level in levels) or any(c in prefix for c in "\r\n"):
        raise TaggerError(None, f"--keyword-prefix {prefix!r}: use a keyword such as 'auto' (levels separated by "
                                f"'{HIERARCHY_SEP}', none empty)")
    return HIERARCHY_SEP.join(levels)


def tag_keywords(tags: Iterable[str], prefix: str | None = None) -> tuple[list[str], list[str]]:
    """(dc:subject entries, lr:hierarchicalSubject entries) for the tagger's tags.

    `Animals|Dog` gives hierarchical `Animals|Dog` and subject `Animals`, `Dog`; a prefix becomes
    the top level of every tag, so flat tags get a hierarchy too (`auto|dog`).
    """
    subject: dict[str, None] = {}
    hierarchical: dict[str, None] = {}
    prefix_levels = tag_levels(prefix) if prefix else []
    for tag in tags:
        levels = prefix_levels + tag_levels(tag)
        if len(levels) > 1:
            hierarchical[HIERARCHY_SEP.join(levels)] = None
        for level in levels:
            subject[level] = None
    return list(subject), list(hierarchical)


def _without(values: Sequence[str], ours: Iterable[str]) -> list[str]:
    """`values` less one occurrence of each of `ours`, taken from the end (where the tagger appends),
    so a keyword the user also typed by hand survives as the user's."""
    kept = list(values)
    for value in ours:
        for i in range(len(kept) - 1, -1, -1):
            if kept[i] == value:
                del kept[i]
                break
    return kept


def strip_keywords(current: KeywordFields, added: KeywordFields) -> KeywordFields:
    """The user's part of a file's keywords: what is there less what the tagger recorded adding."""
    return KeywordFields(
        tuple(_without(current.subject, added.subject)),
        tuple(_without(current.hierarchical, added.hierarchical)),
        None if current.iptc is None else tuple(_without(current.iptc, added.iptc or ())),
    )


def _missing(wanted: Iterable[str], present: Iterable[str]) -> list[str]:
    # Keywords compare case-insensitively, as Lightroom and digiKam do: `Dog` already there means no `dog`.
    have = {value.casefold() for value in present}
    return [value for value in wanted if value.casefold() not in have]


def iptc_fits(coded_character_set: str | None) -> Callable[[str], bool]:
    """Whether a keyword can go into IPTC as is: at most 64 bytes in the file's IPTC encoding
    (UTF-8 when CodedCharacterSet says so, else exiftool's default cp1252). A keyword that does
    not fit stays in XMP only; truncating it would make a different keyword."""
    encoding = "utf-8" if (coded_character_set or "").replace("-", "").upper() == "UTF8" else "cp1252"

    def fits(keyword: str) -> bool:
        try:
            return len(keyword.encode(encoding)) <= IPTC_KEYWORD_BYTES
        except UnicodeEncodeError:
            return False

    return fits


def merge_keywords(current: KeywordFields, previous: KeywordFields, tags: Iterable[str], prefix: str | None,
                   fits_iptc: Callable[[str], bool] = lambda k: True) -> tuple[KeywordFields, KeywordFields]:
    """(new field values, what the tagger added) when writing `tags` over a file whose last tagger
    write added `previous`. User keywords keep their order; the tagger's go after them (exiftool
    may put them where the previous ones were: see tagger.writers.embed).

    A file whose user keywords are only in IPTC gets them copied into its new XMP list too:
    readers that follow the MWG rules (Lightroom) read XMP first and would otherwise see only the
    tagger's keywords. A keyword the user has in either field, in any case, is not added again."""
    user = strip_keywords(current, previous)
    subject, hierarchical = tag_keywords(tags, prefix)
    user_subject = user.subject
    if not user_subject and user.iptc:
        user_subject = tuple(dict.fromkeys(k for k in user.iptc if k.strip()))
    have = user_subject + (user.iptc or ())
    add_subject = _missing(subject, have)
    add_hierarchical = _missing(hierarchical, user.hierarchical)
    add_iptc = [] if user.iptc is None else _missing([k for k in subject if fits_iptc(k)], have)
    new = KeywordFields(user_subject + tuple(add_subject), user.hierarchical + tuple(add_hierarchical),
                        None if user.iptc is None else user.iptc + tuple(add_iptc))
    return new, KeywordFields(tuple(add_subject), tuple(add_hierarchical), tuple(add_iptc))


def user_keyword_list(fields: KeywordFields) -> list[str]:
    """Hierarchical keywords first, then flat ones, each once."""
    return list(dict.fromkeys([*fields.hierarchical, *fields.subject, *(fields.iptc or ())]))


# -- the record in a native XMP packet (sidecars) ---------------------------------------------------
def _int_or_none(text: str | None) -> int | None:
    try:
        return int(text) if text is not None else None
    except ValueError:
        return None


def packet_fields(packet: XmpPacket) -> KeywordFields:
    return KeywordFields(tuple(packet.get_list(NS_DC, "subject")),
                         tuple(packet.get_list(NS_LR, "hierarchicalSubject")), None)


def packet_record(packet: XmpPacket) -> TaggerRecord | None:
    if not packet.has_namespace(NS_TAGGER):
        return None
    return TaggerRecord(
        model=packet.get_text(NS_TAGGER, "TaggerModel") or "",
        model_sha256=packet.get_text(NS_TAGGER, "TaggerModelSHA256") or "",
        keyword_prefix=packet.get_text(NS_TAGGER, "TaggerKeywordPrefix") or "",
        photo_size=_int_or_none(packet.get_text(NS_TAGGER, "TaggerPhotoSize")),
        photo_mtime_ns=_int_or_none(packet.get_text(NS_TAGGER, "TaggerPhotoMTime")),
        added=KeywordFields(tuple(packet.get_list(NS_TAGGER, "TaggerSubject")),
                            tuple(packet.get_list(NS_TAGGER, "TaggerHierarchicalSubject")),
                            tuple(packet.get_list(NS_TAGGER, "TaggerIPTCKeywords"))),
    )


def set_packet_keywords(packet: XmpPacket, fields: KeywordFields, current: KeywordFields | None = None) -> None:
    """Set dc:subject and lr:hierarchicalSubject; a field equal to `current` is left byte for byte."""
    if current is None or fields.subject != current.subject:
        packet.set_list(NS_DC, "subject", list(fields.subject))
    if current is None or fields.hierarchical != current.hierarchical:
        packet.set_list(NS_LR, "hierarchicalSubject", list(fields.hierarchical))


def set_packet_record(packet: XmpPacket, record: TaggerRecord | None) -> None:
    """Write the tagger's namespace; None removes it entirely (untag)."""
    packet.remove_namespace(NS_TAGGER, keep_declaration=record is not None)
    if record is None:
        return
    for name, value in (("TaggerVersion", RECORD_VERSION), ("TaggerModel", record.model),
                        ("TaggerModelSHA256", record.model_sha256),
                        ("TaggerKeywordPrefix", record.keyword_prefix or None),
                        ("TaggerPhotoSize", None if record.photo_size is None else str(record.photo_size)),
                        ("TaggerPhotoMTime", None if record.photo_mtime_ns is None else str(record.photo_mtime_ns))):
        packet.set_text(NS_TAGGER, name, value)
    packet.set_list(NS_TAGGER, "TaggerSubject", list(record.added.subject))
    packet.set_list(NS_TAGGER, "TaggerHierarchicalSubject", list(record.added.hierarchical))
    packet.set_list(NS_TAGGER, "TaggerIPTCKeywords", list(record.added.iptc or ()))


# -- the same, as exiftool reports it for a photo ---------------------------------------------------
def _as_list(value) -> tuple[str, ...]:
    if value is None:
        return ()
    if isinstance(value, list):
        return tuple(str(v) for v in value)
    return (str(value),)


def exiftool_fields(entry: dict) -> KeywordFields:
    has_iptc = (any(key.startswith("IPTC:") for key in entry)
                and str(entry.get("File:FileType", "")).upper() not in NO_IPTC_TYPES)
    return KeywordFields(_as_list(entry.get("XMP-dc:Subject")), _as_list(entry.get("XMP-lr:HierarchicalSubject")),
                         _as_list(entry.get("IPTC:Keywords")) if has_iptc else None)


def exiftool_record(entry: dict) -> TaggerRecord | None:
    if not any(key.startswith("XMP-tagger:") for key in entry):
        return None

    def text(name: str) -> str | None:
        value = entry.get(f"XMP-tagger:{name}")
        return None if value is None else str(value)

    return TaggerRecord(
        model=text("TaggerModel") or "", model_sha256=text("TaggerModelSHA256") or "",
        keyword_prefix=text("TaggerKeywordPrefix") or "",
        photo_size=_int_or_none(text("TaggerPhotoSize")), photo_mtime_ns=_int_or_none(text("TaggerPhotoMTime")),
        added=KeywordFields(_as_list(entry.get("XMP-tagger:TaggerSubject")),
                            _as_list(entry.get("XMP-tagger:TaggerHierarchicalSubject")),
                            _as_list(entry.get("XMP-tagger:TaggerIPTCKeywords"))),
    )


# -- sidecar names -----------------------------------------------------------------------------------
def sidecar_names(photo: Path) -> tuple[Path, Path]:
    """(`IMG.jpg.xmp`, `IMG.xmp`): darktable/digiKam style and Lightroom style."""
    return photo.with_name(photo.name + ".xmp"), photo.with_name(photo.stem + ".xmp")


def read_sidecar_packet(path: Path) -> XmpPacket | None:
    """An existing sidecar, parsed; None when absent. Unreadable or unsafe ones raise XmpError."""
    data = read_sidecar_or_raise(path, XmpError, "sidecar", limit=MAX_XMP_BYTES)
    if data is None:
        return None
    return parse_xmp(data, path)


# -- the keyword reader (training labels) -------------------------------------------------------------
class KeywordReadWarning(UserWarning):
    """A photo or sidecar whose keywords could not be read; the others still are."""


def _warn(error: TaggerError) -> None:
    warnings.warn(str(error), KeywordReadWarning, stacklevel=3)


def _users_part(fields: KeywordFields, record: TaggerRecord | None) -> list[str]:
    """A file's keywords less the ones its tagger record says the tagger added."""
    if record is not None:
        fields = strip_keywords(fields, record.added)
    return user_keyword_list(fields)


def read_user_keywords(photos: list[Path], *, embedded: bool = True,
                       on_error: Callable[[TaggerError], None] | None = None,
                       batch_size: int = 64) -> dict[Path, list[str]]:
    """Each photo's own keywords, excluding the ones the tagger added: dc:subject, lr:hierarchicalSubject
    (as `A|B`) and IPTC Keywords, from the photo (via exiftool) and from its XMP sidecars.

    Every photo gets an entry (an empty list when it has no keywords). A photo or sidecar that
    cannot be read is reported to `on_error` (default: a KeywordReadWarning) and contributes
    nothing. Raises ExifToolMissing when `embedded` and exiftool is not installed.
    """
    report = on_error or _warn
    found: dict[Path, list[str]] = {photo: [] for photo in photos}
    if embedded and photos:
        from tagger.exiftool import ExifTool

        with ExifTool() as tool:
            for start in range(0, len(photos), batch_size):
                chunk = photos[start:start + batch_size]
                for photo, entry in tool.read(chunk, EXIFTOOL_TAGS, fast=True).items():
                    if isinstance(entry, TaggerError):
                        report(entry)
                        continue
                    found[photo].extend(_users_part(exiftool_fields(entry), exiftool_record(entry)))
    for photo in photos:
        for sidecar in dict.fromkeys(sidecar_names(photo)):
            try:
                packet = read_sidecar_packet(sidecar)
            except XmpError as exc:
                report(exc)
                continue
            if packet is None:
                continue
            found[photo].extend(_users_part(packet_fields(packet), packet_record(packet)))
    return {photo: list(dict.fromkeys(keywords)) for photo, keywords in found.items()}
