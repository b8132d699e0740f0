"""`tagger tag PATH...`: tag every photo under the given folders."""
from __future__ import annotations

import sys

import click

from tagger.commands.options import model_option, photo_paths
from tagger.exiftool import ExifToolMissing
from tagger.errors import EXIT_INTERRUPTED, EXIT_SOME_FAILED, TaggerError
from tagger.modelfile import DEVICES, cpu_count, open_model
from tagger.tagging import Decision, TagRun
from tagger.writers import WRITER_NAMES, create_writer


def _parse_writers(ctx, param, value: str) -> list[str]:
    names = [name.strip() for name in value.split(",") if name.strip()]
    unknown = [n for n in names if n not in WRITER_NAMES]
    if unknown or not names:
        raise click.BadParameter(f"{', '.join(unknown) or value!r}: choose from {', '.join(WRITER_NAMES)}")
    return list(dict.fromkeys(names))


def _parse_prefix(ctx, param, value: str | None) -> str | None:
    from tagger.keywords import check_prefix

    try:
        return check_prefix(value)
    except TaggerError as exc:
        raise click.BadParameter(exc.reason) from None


def _check_roots(paths: tuple[str, ...]) -> None:
    """A root that is missing or unreadable is fatal (exit 1): nothing useful can happen."""
    import os

    for path in paths:
        if not os.path.lexists(path):
            raise click.ClickException(f"{path}: no such file or folder")
        if os.path.isdir(path) and not os.access(path, os.R_OK | os.X_OK):
            raise click.ClickException(f"{path}: folder not readable (permission denied)")


@click.command()
@photo_paths
@model_option
@click.option("--write", "write", default="json", show_default=True, callback=_parse_writers,
              metavar="json,xmp,embed", help="Where tags go: sidecar JSON, XMP sidecar, inside the photo.")
@click.option("--threshold", type=click.FloatRange(0.0, 1.0), default=None,
              help="One threshold for every tag instead of the model's calibrated per-tag thresholds.")
@click.option("--top-k", type=click.IntRange(min=1), default=None, help="Keep at most K tags per photo.")
@click.option("--batch-size", type=click.IntRange(min=0), default=0, show_default=True,
              help="Photos per model call; 0 picks by device (16 on CPU, 64 on GPU).")
@click.option("--device", type=click.Choice(DEVICES), default="auto", show_default=True, envvar="TAGGER_DEVICE",
              help="Where the model runs.")
@click.option("--precision", type=click.Choice(["auto", "fp32", "int8", "fp16"]), default="auto",
              show_default=True, help="Which stored variant of --model NAME to run; auto takes a validated "
                                      "int8 variant on CPU, fp32 otherwise.")
@click.option("--workers", type=click.IntRange(min=1), default=None,
              help="Decoding threads [default: one per core].")
@click.option("--force", is_flag=True, help="Re-tag photos whose outputs are already up to date.")
@click.option("--dry-run", is_flag=True, help="Write nothing; print each photo's result as a JSON line.")
@click.option("--xmp-name", type=click.Choice(["extension", "basename"]), default="extension", show_default=True,
              help="New XMP sidecars as IMG.jpg.xmp (darktable, digiKam) or IMG.xmp (Lightroom).")
@click.option("--keyword-prefix", default=None, metavar="TEXT", callback=_parse_prefix,
              help="Put the tagger's keywords under this parent (e.g. 'auto'), for --write xmp/embed.")
@click.option("--backup", is_flag=True, help="With --write embed, keep each original as FILE_original.")
@click.option("--ray", "use_ray", is_flag=True,
              help='Run on a Ray cluster: the one RAY_ADDRESS or --ray-address names, else a local Ray '
                   '(pip install "tagger[cluster]"). Photos must be on storage every node sees.')
@click.option("--ray-address", default=None, metavar="ADDRESS", help="The Ray cluster to join (implies --ray).")
@click.option("--quiet", "-q", is_flag=True, help="No progress bar.")
def tag(paths, model_spec, write, threshold, top_k, batch_size, device, precision, workers, exclude, force, dry_run,
        xmp_name, keyword_prefix, backup, use_ray, ray_address, quiet) -> None:
    """Tag every photo under PATH... and write the tags beside them.

    Folders are walked recursively (hidden ones skipped). Photos whose outputs are up to date for
    this model are skipped, so an interrupted run resumes where it stopped. Exit status: 0 all
    tagged, 1 fatal error, 2 usage error, 3 finished but some files failed (listed at the end).
    """
    _check_roots(paths)
    workers = workers or cpu_count()
    cluster = None
    try:
        if use_ray or ray_address:
            from tagger.cluster import Cluster, WriteSettings  # Ray itself is imported only by Cluster.join

            cluster = Cluster.join(ray_address, device)
            model, chosen = open_model(model_spec, *cluster.driver_choice(precision), spinning=False)
        else:
            model, chosen = open_model(model_spec, device=device, precision=precision, spinning=False)
    except TaggerError as exc:
        raise click.ClickException(str(exc)) from None
    where = model.providers[0] if cluster is None else cluster.describe()
    click.echo(f"model {model.info.name} ({chosen}) on {where}", err=True)
    on_gpu = model.providers[0] != "CPUExecutionProvider" if cluster is None else cluster.gpus > 0
    batch_size = batch_size or (64 if on_gpu else 16)

    try:
        writers = [] if dry_run else [create_writer(name, xmp_name=xmp_name, keyword_prefix=keyword_prefix,
                                                    backup=backup) for name in write]
    except TaggerError as exc:  # e.g. exiftool missing for --write embed
        raise click.ClickException(str(exc)) from None

    from tqdm import tqdm

    with tqdm(unit="img", desc=f"tagging ({model.providers[0].removesuffix('ExecutionProvider')})",
              disable=True if quiet else None, file=sys.stderr, dynamic_ncols=True) as bar:
        run = TagRun(model=model, writers=writers, decision=Decision.for_model(model, threshold, top_k),
                     batch_size=batch_size, workers=workers, force=force, dry_run=dry_run,
                     emit=click.echo, progress=bar.update)
        try:
            summary = run.run(paths, exclude) if cluster is None else cluster.tag(
                run, paths, exclude, WriteSettings.for_run(run, write, xmp_name, keyword_prefix, backup))
        except ExifToolMissing as exc:  # exiftool could not be restarted after it died: nothing more can be written
            raise click.ClickException(str(exc)) from None

    for line in summary.lines():
        click.echo(line, err=True)
    if summary.interrupted:
        sys.exit(EXIT_INTERRUPTED)
    if summary.failed:
        sys.exit(EXIT_SOME_FAILED)
