"""`tagger bench [--model M] [FOLDER]`: decode, model and end-to-end speed on this machine."""
from __future__ import annotations

import json
import tempfile
from pathlib import Path

import click

from tagger.commands.options import model_option
from tagger.errors import ModelError
from tagger.modelfile import DEVICE_PROVIDERS, TaggerModel, cpu_count
from tagger.store import resolve_model

BATCH_SIZES = (1, 8, 16, 32, 64)


@click.command()
@click.argument("folder", required=False, type=click.Path(exists=True, file_okay=False, path_type=Path))
@model_option
@click.option("--photos", type=click.IntRange(min=1), default=32, show_default=True,
              help="Without FOLDER: how many 12 MP photos to generate (in a temporary folder).")
@click.option("--batch-size", "batch_sizes", type=click.IntRange(min=1), multiple=True,
              help=f"Batch sizes to try (repeatable) [default: {', '.join(map(str, BATCH_SIZES))}].")
@click.option("--seconds", type=click.FloatRange(min=0.5), default=3.0, show_default=True,
              help="Time spent on each model-only measurement.")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object instead of a table.")
def bench(folder, model_spec, photos, batch_sizes, seconds, as_json) -> None:
    """Measure decode, model and end-to-end photos/s for each available provider and batch size.

    FOLDER is read but nothing is written to it (the end-to-end run is a dry run). Without FOLDER,
    camera-sized JPEGs are generated in a temporary folder.
    """
    import onnxruntime as ort

    from tagger.benchmark import (Bound, cpu_name, decode_rate, end_to_end_rate, model_rate, photo_folder,
                                  raw_decode_rates)
    from tagger.images import is_image_name
    from tagger.raw import is_raw_name

    try:
        model_path = resolve_model(model_spec)
    except ModelError as exc:
        raise click.ClickException(str(exc)) from None
    workers = cpu_count()
    available = ort.get_available_providers()
    devices = [device for device, providers in DEVICE_PROVIDERS.items() if set(providers) <= set(available)]
    with tempfile.TemporaryDirectory(prefix="tagger-bench-") as scratch:
        if folder is None:
            click.echo(f"Generating {photos} photos of 4000x3000 ...", err=True)
            paths = photo_folder(Path(scratch), photos)
            roots = [Path(scratch)]
        else:
            paths = sorted(p for p in folder.rglob("*") if p.is_file() and is_image_name(p.name))[:500]
            if not paths:
                raise click.ClickException(f"{folder}: no photos found")
            roots = paths
        report = {"machine": f"{cpu_name()}, {workers} cores", "model": model_path.name,
                  "photos": len(paths), "devices": {}}
        for device in devices:
            try:
                model = TaggerModel(model_path, device=device, spinning=False)
            except ModelError as exc:
                report["devices"][device] = {"error": exc.reason}
                continue
            click.echo(f"[{device}] decoding ...", err=True)
            decode = decode_rate(paths, model, workers)
            raw_paths = [p for p in paths if is_raw_name(p)]
            if raw_paths and "raw" not in report:  # decoding runs on the CPU whatever the device: once
                click.echo(f"[{device}] decoding RAW files two ways ...", err=True)
                report["raw"] = {"files": len(raw_paths),
                                 **raw_decode_rates(raw_paths, model.info.preprocess, workers)}
            models = {}
            for size in batch_sizes or BATCH_SIZES:
                click.echo(f"[{device}] model, batch {size} ...", err=True)
                models[size] = model_rate(model, size, seconds)
            best = max(models, key=models.get)
            click.echo(f"[{device}] end to end, batch {best} ...", err=True)
            e2e, _ = end_to_end_rate(roots, model, best, workers)
            bound = Bound(decode, models[best])
            report["devices"][device] = {"provider": model.providers[0], "decode": decode, "model": models,
                                         "best_batch": best, "end_to_end": e2e, "bound": bound.rate,
                                         "fraction_of_bound": e2e / bound.rate}
    if as_json:
        click.echo(json.dumps(report))
        return
    click.echo(f"{report['machine']}; model {report['model']}; {report['photos']} photos")
    if "raw" in report:
        raw = report["raw"]
        line = (f"RAW files ({raw['files']}), decode only: {raw['as_tagged']:.1f} photos/s as tagged "
                f"(embedded preview where usable)")
        if raw["demosaic"]:  # 0 when none of the first few could be decoded
            line += (f", {raw['demosaic']:.1f} photos/s by half-size demosaic "
                     f"({raw['as_tagged'] / raw['demosaic']:.1f}x)")
        click.echo(line)
    for device, row in report["devices"].items():
        if "error" in row:
            click.echo(f"{device:8s} unavailable: {row['error']}")
            continue
        click.echo(f"{device:8s} ({row['provider']})")
        click.echo(f"  decode only        {row['decode']:8.1f} photos/s ({workers} threads)")
        for size, rate in row["model"].items():
            click.echo(f"  model, batch {size:<4d}  {rate:8.1f} photos/s")
        click.echo(f"  end to end         {row['end_to_end']:8.1f} photos/s (batch {row['best_batch']}; "
                   f"{row['fraction_of_bound']:.0%} of the {row['bound']:.1f} photos/s bound)")
