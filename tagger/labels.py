"""The user's tag vocabulary (`mytags.txt`): one tag per line, `#` comments, `Parent|Child` allowed."""
from __future__ import annotations

import unicodedata
from pathlib import Path

from tagger.errors import LabelsError

HIERARCHY_SEP = "|"


def has_control(text: str) -> bool:
    """Control characters, line/paragraph separators or lone surrogates: what no keyword field holds."""
    return any(unicodedata.category(c) in ("Cc", "Zl", "Zp", "Cs") for c in text)


def tag_problem(tag: object) -> str | None:
    """Why a tag cannot be a keyword, or None. Keyword fields cannot hold an empty level, spaces
    at either end of one (exiftool and many readers trim them, so the tag would not match itself
    again) or control characters (XML cannot hold most of them; a line break ends an argument)."""
    if not isinstance(tag, str):
        return f"{tag!r} is not a string"
    levels = tag.split(HIERARCHY_SEP)
    if any(not level.strip() for level in levels):
        return f"{tag!r} has an empty level"
    if any(level != level.strip() for level in levels):
        return f"{tag!r} has spaces at the start or end of a level"
    if has_control(tag):
        return f"{tag!r} holds a control or invisible character"
    return None


def check_tags(tags: list, source: object) -> list[str]:
    """A model's or labels file's tags, each a storable keyword and none twice in any case
    (keyword readers compare keywords case-insensitively). Raises LabelsError."""
    seen: dict[str, object] = {}
    for tag in tags:
        first = _admit(tag, seen, tag, source, "label ")
        if first is not None:
            raise LabelsError(source, f"labels {first!r} and {tag!r} differ only in case")
    return list(tags)


def _admit(tag: str, seen: dict[str, object], mark: object, source: object, where: str) -> object | None:
    """Checks that `tag` can be a keyword (else raises LabelsError, `where` + why) and records it in
    `seen` (casefolded -> `mark`, e.g. its line). Returns the mark of an earlier tag equal to it
    ignoring case, without recording (keyword readers compare case-insensitively: the two would be one)."""
    problem = tag_problem(tag)
    if problem:
        raise LabelsError(source, f"{where}{problem}")
    key = tag.casefold()
    if key in seen:
        return seen[key]
    seen[key] = mark
    return None


def parse_labels(text: str, source: str = "<labels>") -> list[str]:
    """Tags in file order. Duplicates and empty hierarchy levels are errors naming the line."""
    tags: list[str] = []
    seen: dict[str, object] = {}
    for lineno, raw in enumerate(text.splitlines(), start=1):
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        levels = [level.strip() for level in line.split(HIERARCHY_SEP)]
        if any(not level for level in levels):
            raise LabelsError(source, f"line {lineno}: empty tag level in {line!r}")
        tag = HIERARCHY_SEP.join(levels)
        first = _admit(tag, seen, lineno, source, f"line {lineno}: ")
        if first is not None:
            raise LabelsError(source, f"line {lineno}: duplicate tag {tag!r} (first on line {first})")
        tags.append(tag)
    if not tags:
        raise LabelsError(source, "no tags in the labels file")
    return tags


def read_text_file(path: str | Path, what: str) -> str:
    """A user's UTF-8 text file (a BOM is fine), or a LabelsError saying which `what` is wrong."""
    path = Path(path)
    try:
        return path.read_text(encoding="utf-8-sig")
    except FileNotFoundError:
        raise LabelsError(path, f"{what} not found") from None
    except UnicodeDecodeError:
        raise LabelsError(path, f"{what} is not UTF-8 text") from None
    except OSError as exc:
        raise LabelsError(path, f"cannot read {what}: {exc.strerror or exc}") from None


def read_labels(path: str | Path) -> list[str]:
    return parse_labels(read_text_file(path, "labels file"), str(path))


def tag_levels(tag: str) -> list[str]:
    """`Animals|Dog` -> ["Animals", "Dog"]; a flat tag is a single level."""
    return tag.split(HIERARCHY_SEP)


def leaf(tag: str) -> str:
    """The most specific level: what a prompt says and what a flat keyword list shows."""
    return tag_levels(tag)[-1]
