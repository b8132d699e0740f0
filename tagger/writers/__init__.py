"""Output writers: sidecar JSON, XMP sidecars, keywords embedded in the photo (`--write`)."""
from __future__ import annotations

from tagger.writers.base import ModelRef, PhotoResult, Writer

WRITER_NAMES = ("json", "xmp", "embed")


def create_writer(name: str, *, xmp_name: str = "extension", keyword_prefix: str | None = None,
                  backup: bool = False) -> Writer:
    """The writer for one `--write` name; xmp and embed load only when asked for."""
    if name == "json":
        from tagger.writers.json_sidecar import JsonWriter

        return JsonWriter()
    if name == "xmp":
        from tagger.writers.xmp_sidecar import XmpWriter

        return XmpWriter(xmp_name=xmp_name, keyword_prefix=keyword_prefix)
    if name == "embed":
        from tagger.writers.embed import EmbedWriter

        return EmbedWriter(keyword_prefix=keyword_prefix, backup=backup)
    raise ValueError(f"unknown writer {name!r}; choose from {', '.join(WRITER_NAMES)}")


__all__ = ["ModelRef", "PhotoResult", "Writer", "WRITER_NAMES", "create_writer"]
