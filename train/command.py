"""`tagger train`: fine-tune HP-DVAL on the user's tagged photos (DESIGN.md §5).

It lives with the trainer, and tagger/ names it only in its command registry (tagger.cli), so the
runtime and the binary carry no training code. This module imports no torch at load: `tagger --help`
lists it without the training stack; a missing extra is answered by tagger.cli's LazyGroup.
"""
from __future__ import annotations

import sys
from dataclasses import fields, replace
from pathlib import Path

import click

from tagger.errors import EXIT_INTERRUPTED, TaggerError

# TrainConfig field -> the option that sets it, where the names differ (the flags say "no").
_OPTION_OF = {"keywords": "no_keywords", "kd": "no_kd", "augment": "no_augment", "wise_ft": "no_wise_ft"}
# Kept in step with train.losses.LOSSES, train.model.SCORE_NORMS and train.q2l.HEADS by a test (this
# module imports no torch).
LOSS_CHOICES = ("bce", "dbstar", "db", "db-official", "asl")
SCORE_NORM_CHOICES = ("center", "l2", "none")
HEAD_CHOICES = ("dual-view", "q2l")


def _settings(ctx: click.Context, field_names: list[str], saved: dict | None) -> dict:
    """TrainConfig values: the options given on this command line, then (with --resume) the run's
    saved settings. Anything else is left to TrainConfig's own defaults, their one home."""
    values = {}
    for name in field_names:
        option = _OPTION_OF.get(name, name)
        if option in ctx.params and ctx.get_parameter_source(option) == click.core.ParameterSource.COMMANDLINE:
            value = ctx.params[option]
            values[name] = (not value) if option != name else value
        elif saved is not None and name in saved and name != "out":
            values[name] = tuple(saved[name]) if name == "stages" else saved[name]
    return values


def _parse_stages(ctx, param, value: str | None) -> tuple[int, ...] | None:
    if value is None:
        return None
    try:
        stages = tuple(sorted({int(s) for s in value.split(",") if s.strip()}))
    except ValueError:
        stages = ()
    if not stages or any(s not in (1, 2) for s in stages):
        raise click.BadParameter("use 1,2 (both), 1 or 2")
    return stages


@click.command()
@click.option("--labels", "labels", type=click.Path(dir_okay=False), metavar="FILE",
              help="Your tag vocabulary: one tag per line, # comments, Parent|Child allowed.")
@click.option("--data", "data", type=click.Path(file_okay=False), metavar="DIR",
              help="Folder of labelled photos (searched recursively). Untagged photos there are not trained on; "
                   "up to 512 of them carry the thresholds to the refit.")
@click.option("--annotations", type=click.Path(dir_okay=False), metavar="CSV",
              help="CSV rows `path,tag1;tag2`, paths relative to --data. Labels also come from sidecar "
                   "JSON \"labels\" and keywords in the photos.")
@click.option("--no-keywords", is_flag=True, help="Do not read keywords stored in the photos (skips exiftool).")
@click.option("--backbone", default=None, metavar="NAME|CONFIG.json",
              help="open_clip ViT name, JSON model config, local-dir:DIR or hf-hub:ORG/REPO [default: ViT-B-32].")
@click.option("--pretrained", default=None, metavar="TAG|PATH",
              help="open_clip weights tag, or a local checkpoint file; 'none' for random init "
                   "[default: the backbone's LAION-2B weights, laion2b_s34b_b79k for ViT-B-32; none for a "
                   "JSON config].")
@click.option("--out", "out", default="runs/latest", show_default=True, type=click.Path(file_okay=False),
              metavar="RUN_DIR", help="Run folder: checkpoints, metrics.json, config.json.")
@click.option("--device", type=click.Choice(["auto", "cpu", "cuda"]), default=None,
              help="auto uses CUDA (bf16 autocast) when PyTorch sees a GPU [default: auto].")
@click.option("--resume", is_flag=True, help="Continue the run in --out from its last epoch, from the validated pick (not its refit); "
              "only --epochs, --stage2-epochs, --device, --workers and --refit may change (other epochs: no refit).")
@click.option("--stages", default=None, callback=_parse_stages,
              help="1: dual-view alignment of the image tower; 2: prompt tuning on frozen features [default: 1,2].")
@click.option("--epochs", type=click.IntRange(min=0), default=None, help="Stage 1 epochs [default: from the number of photos, at least 40].")
@click.option("--stage2-epochs", type=click.IntRange(min=0), default=None, help="Stage 2 epochs [default: from the number of photos, at least 10].")
@click.option("--batch-size", type=click.IntRange(min=1), default=None,
              help="[default: 32; fewer (down to 8) for under 128 photos]")
@click.option("--lr", type=click.FloatRange(min=0, min_open=True), default=None,
              help="Stage 1 learning rate (AdamW) [default with pretrained weights: 1e-5 for ViT-B (the "
                   "paper's), scaled by (768/width)^2 for other widths and by N/500 under 500 photos; 2e-3 "
                   "from random init].")
@click.option("--stage2-lr", type=click.FloatRange(min=0, min_open=True), default=None,
              help="Stage 2 learning rate (AdamW on the prompt contexts and the tag bias) [default: 2e-3].")
@click.option("--weight-decay", type=click.FloatRange(min=0), default=None, help="[default: 1e-4]")
@click.option("--seed", type=int, default=None, help="Split, order and augmentation seed [default: 0].")
@click.option("--loss", type=click.Choice(LOSS_CHOICES), default=None,
              help="Classification loss [default: bce; the others are measured in docs/quality.md].")
@click.option("--score-norm", type=click.Choice(SCORE_NORM_CHOICES), default=None,
              help="Per-photo normalisation of each view's tag scores [default: center].")
@click.option("--alpha", type=click.FloatRange(0.0, 1.0), default=None,
              help="Weight of the global (CLS) view against the local (patch) view [default: 1; the paper's 0.4 "
                   "lost on the benchmark].")
@click.option("--head", type=click.Choice(HEAD_CHOICES), default=None,
              help="q2l: the tag prompts against the photo plus a Query2Label head over its patches, started "
                   "at zero-shot [default]; dual-view: the tag prompts alone (docs/training.md).")
@click.option("--head-lr", type=click.FloatRange(min=0.0, min_open=True), default=None,
              help="Stage 1 rate of the q2l head [default: 1e-3].")
@click.option("--topk", type=click.IntRange(min=1), default=None,
              help="Patches pooled per tag in the local view [default: 16% of the patches].")
@click.option("--no-kd", is_flag=True, help="Stage 1 without knowledge distillation from the frozen tower "
              "(always off from random init).")
@click.option("--kd-weight", type=click.FloatRange(min=0), default=None,
              help="Weight of L_kd, the distillation from the frozen tower [default: 0.3; the paper's 1].")
@click.option("--sc/--no-sc", default=False, help="Stage 2 with the paper's semantic consistency loss tying the "
              "learned prompts to the hand ones [default: off; it measured no gain here, docs/training.md].")
@click.option("--sc-weight", type=click.FloatRange(min=0), default=None,
              help="Weight of L_sc when --sc is on [default: 1].")
@click.option("--sc-branch", type=click.Choice(["global", "local"]), default=None,
              help="Which learned prompts the consistency loss ties to the hand-crafted ones [default: global].")
@click.option("--no-wise-ft", is_flag=True, help="Do not try the stage 1 student mixed with the pretrained one.")
@click.option("--ema", type=click.FloatRange(0.0, 1.0, max_open=True), default=None,
              help="EMA decay for the stage 1 student [default: 0, off; 0.998 as the official code].")
@click.option("--refit/--no-refit", default=True, help="After selection, train the picked recipe again on every "
              "labelled photo, validation photos too [default: on; about twice the training time; docs/training.md].")
@click.option("--select-window", type=click.IntRange(1, 2), default=None,
              help="Select an epoch on the mean validation mAP of it and the epoch before (2), or on its own "
                   "(1) [default: 2: one epoch's spike on a few validation photos is not an optimum].")
@click.option("--train-blocks", type=click.IntRange(min=0), default=None,
              help="Stage 1 trains only the last N transformer blocks [default: 0, all].")
@click.option("--free-blocks", type=click.IntRange(min=0), default=None,
              help="The tower's last N blocks get a second copy that L_kd does not hold; the tags are scored by "
                   "the mean of both copies [default: every block while L_kd is on; 0: no copy].")
@click.option("--no-augment", is_flag=True, help="No crop/flip/colour augmentation in stage 1.")
@click.option("--crop-area", type=click.FloatRange(0.0, 1.0, min_open=True), default=None,
              help="Smallest random crop in stage 1, as a fraction of the photo's area [default: 0.8, every "
                   "crop keeps 3/4 of the frame].")
@click.option("--drop-empty", is_flag=True, help="Drop tags with no positive photo instead of stopping.")
@click.option("--val-fraction", type=click.FloatRange(0.0, 1.0, min_open=True, max_open=True), default=None,
              help="Share of photos held out for validation [default: 0.2].")
@click.option("--workers", type=click.IntRange(min=1), default=None, help="Threads decoding photos into the cache [default: 4].")
@click.option("--name", default=None, help="Model name [default: the labels file's name].")
@click.option("--quiet", "-q", is_flag=True, help="No progress bars (epoch summaries are still printed).")
def train(labels, data, out, resume, quiet, **_options) -> None:
    """Fine-tune a tagger on photos you already tagged.

    Labels come from --annotations CSV, sidecar JSON "labels" and keywords in the photos. Prints the
    tag histogram (head >=100, medium 20-99, tail <20 photos), holds out a validation split, trains
    stage 1 and stage 2 of HP-DVAL, and leaves in --out the best checkpoint, metrics.json and the
    per-tag thresholds. Next: `tagger export RUN_DIR`.
    """
    # Lazy by design (DESIGN.md §1): only this command, when run, loads the training package.
    from train.backbone import default_pretrained
    from train.runs import CONFIG, read_json
    from train.trainer import TrainConfig
    from train.trainer import train as run_training

    saved = None
    if resume:
        try:
            saved = read_json(Path(out) / CONFIG)["train"]
        except TaggerError as exc:
            raise click.ClickException(f"--resume: {exc}") from None
    if saved is None and (not labels or not data):
        raise click.UsageError("--labels and --data are required (except with --resume)")
    values = _settings(click.get_current_context(), [f.name for f in fields(TrainConfig)], saved)
    if "pretrained" in values and values["pretrained"] is not None and values["pretrained"].lower() == "none":
        values["pretrained"] = None
    cfg = TrainConfig(**values | {"out": out})
    if "pretrained" not in values:
        cfg = replace(cfg, pretrained=default_pretrained(cfg.backbone))
    try:
        result = run_training(cfg, resume=resume, log=click.echo, progress=not quiet)
    except TaggerError as exc:
        raise click.ClickException(str(exc)) from None
    except KeyboardInterrupt:
        click.echo(f"\ninterrupted; continue with: tagger train --resume --out {out}", err=True)
        sys.exit(EXIT_INTERRUPTED)
    if result.rank == 0:  # under torchrun the other ranks have nothing to add
        click.echo(f"run saved in {result.run_dir} ({result.elapsed_s:.0f}s); next: tagger export {result.run_dir}")
    if result.report is not None:
        click.echo(f"report: {result.report}")


@click.command()
@click.argument("run_dir", metavar="RUN", type=click.Path(file_okay=False))
def report(run_dir: str) -> None:
    """Rebuild RUN/report.html: per-tag table, plots and validation thumbnails of a finished run.

    `tagger train` writes it at the end; run this after moving the photos back, or for a run made
    before reports existed (its validation scores are then recomputed from best.pt).
    """
    from train.report import write_report
    from train.runs import METRICS, is_run

    if not is_run(run_dir) or not (Path(run_dir) / METRICS).is_file():
        raise click.ClickException(f"{run_dir}: not a finished training run (no config.json/metrics.json)")
    try:
        path = write_report(run_dir)
    except TaggerError as exc:
        raise click.ClickException(str(exc)) from None
    click.echo(f"report: {path}")
