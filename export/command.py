"""`tagger export`: a training run (or plain CLIP, zero-shot) to one self-describing `.onnx` model.

It lives with the exporter, and tagger/ names it only in its command registry (tagger.cli): torch,
open_clip and the rest of `export` load inside the command, and a missing extra is answered there.
"""
from __future__ import annotations

from pathlib import Path

import click

from tagger.errors import TaggerError

CALIBRATION_IMAGES = 64  # static int8 only


@click.command()
@click.argument("run_dir", required=False, type=click.Path(file_okay=False, path_type=Path))
@click.option("--out", "out", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Write the model to this .onnx file instead of the model store.")
@click.option("--name", default=None, metavar="NAME",
              help="Name in the model store [default: the run's name; with --zero-shot, the labels file's].")
@click.option("--quantize", type=click.Choice(["int8", "fp16"]), default=None,
              help="int8: smaller and ~2x faster on CPU; fp16: for GPUs. Default: fp32.")
@click.option("--int8-method", type=click.Choice(["dynamic", "static"]), default="dynamic", show_default=True,
              help="ONNX Runtime quantization: dynamic (weights only, no calibration) or static "
                   "(weights + activations, calibrated on training images).")
@click.option("--min-agreement", type=click.FloatRange(0.0, 1.0), default=0.99, show_default=True,
              help="Refuse an int8/fp16 model that makes the same tag decision as fp32 less often than this "
                   "on the validation images.")
@click.option("--force", is_flag=True, help="Write a quantized model even below --min-agreement.")
@click.option("--zero-shot", is_flag=True,
              help="No training run: plain CLIP scoring \"a photo of a {tag}.\" (needs --labels, --backbone).")
@click.option("--labels", "labels_file", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="With --zero-shot: the tag vocabulary (one tag per line).")
@click.option("--backbone", default=None, metavar="NAME|CONFIG.json",
              help="With --zero-shot: open_clip model name (e.g. ViT-B-32) or a JSON model config.")
@click.option("--pretrained", default=None, metavar="TAG|PATH",
              help="With --zero-shot: open_clip weights tag or a local checkpoint file "
                   "[default: the backbone's LAION-2B weights].")
@click.option("--alpha", type=click.FloatRange(0.0, 1.0), default=None,
              help="With --zero-shot: weight of the global (CLS) view [default 1: CLIP's own score].")
@click.option("--images", "images_dir", type=click.Path(exists=True, file_okay=False, path_type=Path),
              default=None, help="With --zero-shot: photos to check the export on [default: synthetic scenes].")
def export(run_dir, out, name, quantize, int8_method, min_agreement, force, zero_shot, labels_file, backbone, pretrained,
           alpha, images_dir) -> None:
    """Turn the training run RUN_DIR into one .onnx model that `tagger tag` runs with ONNX Runtime.

    The export checks itself before writing: ONNX Runtime must match PyTorch on the validation
    images (max score difference 1e-4), and an int8 or fp16 model must make the same tag decisions
    as fp32 on at least 99% of them (--force overrides the latter).
    """
    _check_usage(run_dir, out, name, zero_shot, labels_file, backbone, pretrained, alpha, images_dir)
    # Loaded when run, not when listed: these import torch (a missing one: tagger.cli answers).
    from export.build import ExportSettings
    from export.jobs import export_run, export_zero_shot
    from export.onnx_export import ExportError

    settings = ExportSettings(variant=quantize or "fp32", int8_method=int8_method, min_agreement=min_agreement,
                              force=force)
    try:
        if zero_shot:
            job = export_zero_shot(labels_file, backbone, pretrained, alpha, images_dir, name, out, settings)
        else:
            job = export_run(run_dir, name, out, settings, CALIBRATION_IMAGES)
    except (ExportError, TaggerError) as exc:  # AgreementError included: one line, nothing written
        raise click.ClickException(str(exc)) from None
    for line in job.lines():
        click.echo(line)


def _check_usage(run_dir, out, name, zero_shot, labels_file, backbone, pretrained, alpha, images_dir) -> None:
    if out is not None and name is not None:
        raise click.UsageError("give --out FILE or --name NAME, not both")
    if zero_shot:
        if run_dir is not None:
            raise click.UsageError("--zero-shot builds a model without a training run: drop RUN_DIR")
        missing = [flag for flag, value in (("--labels", labels_file), ("--backbone", backbone)) if value is None]
        if missing:
            raise click.UsageError(f"--zero-shot needs {' and '.join(missing)}")
        return
    if run_dir is None:
        raise click.UsageError("give a training run folder (RUN_DIR), or --zero-shot")
    extra = [flag for flag, value in (("--labels", labels_file), ("--backbone", backbone),
                                      ("--pretrained", pretrained), ("--alpha", alpha), ("--images", images_dir))
             if value is not None]
    if extra:
        raise click.UsageError(f"{', '.join(extra)} only apply with --zero-shot (a run carries its own)")
