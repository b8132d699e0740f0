"""`tagger untag PATH...`: remove the keywords the tagger added, and nothing else."""
from __future__ import annotations

import os
import sys
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path

import click

from tagger.commands.options import photo_paths
from tagger.discover import iter_photos
from tagger.exiftool import ExifToolMissing
from tagger.errors import EXIT_INTERRUPTED, EXIT_SOME_FAILED, TaggerError, WriteError, describe, printable

_BATCH = 64  # photos per exiftool read


@dataclass
class _Summary:
    files: int = 0  # sidecars and photos changed (or, with --dry-run, that would be)
    keywords: int = 0
    photos: int = 0
    failed: list[TaggerError] = field(default_factory=list)
    embedded_unchecked: str | None = None

    def lines(self, dry_run: bool) -> list[str]:
        verb = "would be untagged" if dry_run else "untagged"
        lines = [f"{self.photos} photos looked at, {self.files} files {verb} ({self.keywords} keywords), "
                 f"{len(self.failed)} failed"]
        if self.embedded_unchecked:
            lines.append(f"keywords inside photos were not checked: {self.embedded_unchecked}")
        return lines + [f"  failed: {error}" for error in self.failed]


@click.command()
@photo_paths
@click.option("--embedded/--no-embedded", default=True, show_default=True,
              help="Also remove them from inside the photos (needs exiftool).")
@click.option("--backup", is_flag=True, help="Keep each changed photo's original as FILE_original.")
@click.option("--dry-run", is_flag=True, help="Change nothing; list what would be removed.")
@click.option("--verbose", "-v", is_flag=True, help="Name every file changed.")
def untag(paths, exclude, embedded, backup, dry_run, verbose) -> None:
    """Remove the keywords `tagger tag --write xmp|embed` added under PATH..., and its record.

    Only keywords the tagger recorded adding go: keywords you typed yourself stay (also when a
    model suggested the same word later). XMP sidecars (IMG.jpg.xmp, IMG.xmp) are cleaned, and a
    sidecar left empty is deleted; with exiftool installed, keywords embedded in the photos are
    removed too. JSON sidecars are left alone. Exit status: 0 done, 1 fatal, 3 some files failed.
    """
    for path in paths:
        if not os.path.lexists(path):
            raise click.ClickException(f"{path}: no such file or folder")
    from tagger.writers.xmp_sidecar import untag_sidecars

    summary = _Summary()
    embed = _open_embed(backup, summary) if embedded else None
    say = (lambda line: click.echo(line)) if (verbose or dry_run) else (lambda line: None)
    batch: list[Path] = []
    try:
        for item in iter_photos(paths, exclude):
            if isinstance(item, TaggerError):
                summary.failed.append(item)
                continue
            summary.photos += 1
            try:
                with _lock(item, dry_run):
                    for sidecar, removed in untag_sidecars(item, dry_run=dry_run):
                        summary.files += 1
                        summary.keywords += removed
                        say(f"{printable(str(sidecar))}\t{removed} keywords")
            except TaggerError as exc:
                summary.failed.append(exc)
            except (OSError, UnicodeError, RecursionError, ValueError) as exc:
                summary.failed.append(WriteError(item, f"sidecars not untagged: {describe(exc)}"))
            if embed is not None:
                batch.append(item)
                if len(batch) >= _BATCH:
                    _untag_embedded(embed, batch, dry_run, summary, say)
                    batch = []
        if embed is not None and batch:
            _untag_embedded(embed, batch, dry_run, summary, say)
    except ExifToolMissing as exc:  # it died and could not be started again
        for line in summary.lines(dry_run):
            click.echo(line, err=True)
        raise click.ClickException(str(exc)) from None
    except KeyboardInterrupt:
        for line in summary.lines(dry_run):
            click.echo(line, err=True)
        click.echo("Interrupted: run the same command again to finish.", err=True)
        sys.exit(EXIT_INTERRUPTED)
    finally:
        if embed is not None:
            embed.close()
    for line in summary.lines(dry_run):
        click.echo(line, err=True)
    if summary.failed:
        sys.exit(EXIT_SOME_FAILED)


def _open_embed(backup: bool, summary: _Summary):
    from tagger.exiftool import ExifToolMissing
    from tagger.writers.embed import EmbedWriter

    try:
        return EmbedWriter(backup=backup)
    except ExifToolMissing as exc:
        # Sidecars can still be cleaned; say plainly what was not done.
        summary.embedded_unchecked = str(exc)
        return None


def _lock(photo: Path, dry_run: bool):
    from tagger.locking import photo_lock

    return nullcontext() if dry_run else photo_lock(photo)


def _untag_embedded(embed, photos: list[Path], dry_run: bool, summary: _Summary, say) -> None:
    # One read for the batch finds the photos holding a record; each of those is read again under
    # its lock, so a run writing it meanwhile is waited for, not undone.
    for photo, entry in embed.tool.read(photos, ("XMP-tagger:TaggerVersion",)).items():
        if isinstance(entry, TaggerError):
            summary.failed.append(entry)
            continue
        if not entry:
            continue
        try:
            with _lock(photo, dry_run):
                removed = embed.untag(photo, dry_run=dry_run)
        except TaggerError as exc:
            summary.failed.append(exc)
            continue
        if removed is not None:
            summary.files += 1
            summary.keywords += removed
            say(f"{printable(str(photo))}\t{removed} keywords")
