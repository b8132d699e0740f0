"""`tagger train`: fine-tune HP-DVAL on the user's tagged photos (DESIGN.md §5).

This module imports no torch: `tagger --help` lists it without loading the training stack.
"""
from __future__ import annotations

import sys
from dataclasses import fields, replace
from pathlib import Path

import click

from tagger.errors import TaggerError

EXTRAS_HINT = 'training needs the training extras: pip install "tagger[train]"'


# TrainConfig field -> the option that sets it, where the names differ.
_OPTION_OF = {"keywords": "no_keywords", "kd": "no_kd", "sc": "no_sc", "augment": "no_augment"}


def _resumed_config(ctx: click.Context, cfg, saved: dict):
    """The run's saved settings, except options given on this command line (checked by the trainer)."""
    values = {}
    for f in fields(cfg):
        option = _OPTION_OF.get(f.name, f.name)
        given = ctx.get_parameter_source(option) == click.core.ParameterSource.COMMANDLINE
        if not given and f.name in saved and f.name != "out":
            values[f.name] = tuple(saved[f.name]) if f.name == "stages" else saved[f.name]
    return replace(cfg, **values)


def _parse_stages(ctx, param, value: str) -> tuple[int, ...]:
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
              help="Folder of labelled photos (searched recursively).")
@click.option("--annotations", type=click.Path(dir_okay=False), metavar="CSV",
              help="CSV rows `path,tag1;tag2`, paths relative to --data. Labels also come from sidecar "
                   "JSON \"labels\" and keywords in the photos.")
@click.option("--no-keywords", is_flag=True, help="Do not read keywords stored in the photos (skips exiftool).")
@click.option("--backbone", default="ViT-B-32", show_default=True, metavar="NAME|CONFIG.json",
              help="open_clip ViT name, JSON model config, local-dir:DIR or hf-hub:ORG/REPO.")
@click.option("--pretrained", default=None, metavar="TAG|PATH",
              help="open_clip weights tag, or a local checkpoint file; 'none' for random init "
                   "[default: the backbone's LAION-2B weights, laion2b_s34b_b79k for ViT-B-32; none for a "
                   "JSON config].")
@click.option("--out", "out", default="runs/latest", show_default=True, type=click.Path(file_okay=False),
              metavar="RUN_DIR", help="Run folder: checkpoints, metrics.json, config.json.")
@click.option("--device", type=click.Choice(["auto", "cpu", "cuda"]), default="auto", show_default=True,
              help="auto uses CUDA (bf16 autocast) when PyTorch sees a GPU.")
@click.option("--resume", is_flag=True, help="Continue the run in --out from its last epoch.")
@click.option("--stages", default="1,2", show_default=True, callback=_parse_stages,
              help="1: dual-view alignment of the image tower; 2: prompt tuning on frozen features.")
@click.option("--epochs", type=click.IntRange(min=0), default=20, show_default=True, help="Stage 1 epochs.")
@click.option("--stage2-epochs", type=click.IntRange(min=0), default=10, show_default=True, help="Stage 2 epochs.")
@click.option("--batch-size", type=click.IntRange(min=1), default=32, show_default=True)
@click.option("--lr", type=click.FloatRange(min=0, min_open=True), default=None,
              help="Stage 1 learning rate (AdamW) [default: 1e-5 with pretrained weights (paper), "
                   "2e-3 from random init].")
@click.option("--stage2-lr", type=click.FloatRange(min=0, min_open=True), default=2e-3, show_default=True,
              help="Stage 2 learning rate (AdamW on the prompt contexts).")
@click.option("--weight-decay", type=click.FloatRange(min=0), default=1e-4, show_default=True)
@click.option("--seed", type=int, default=0, show_default=True, help="Split, order and augmentation seed.")
@click.option("--loss", type=click.Choice(["dbstar", "db", "asl", "bce"]), default="dbstar", show_default=True,
              help="Classification loss (the others are ablation baselines).")
@click.option("--alpha", type=click.FloatRange(0.0, 1.0), default=0.4, show_default=True,
              help="Weight of the global (CLS) view against the local (patch) view.")
@click.option("--topk", type=click.IntRange(min=1), default=None,
              help="Patches pooled per tag in the local view [default: 16% of the patches].")
@click.option("--no-kd", is_flag=True, help="Stage 1 without knowledge distillation from the frozen tower "
              "(always off from random init).")
@click.option("--no-sc", is_flag=True, help="Stage 2 without the semantic consistency loss.")
@click.option("--sc-branch", type=click.Choice(["global", "local"]), default="global", show_default=True,
              help="Which learned prompts the consistency loss ties to the hand-crafted ones.")
@click.option("--ema", type=click.FloatRange(0.0, 1.0, max_open=True), default=0.0, show_default=True,
              help="EMA decay for the stage 1 student (0 off; 0.998 as the official code).")
@click.option("--train-blocks", type=click.IntRange(min=0), default=0, show_default=True,
              help="Stage 1 trains only the last N transformer blocks (0: all).")
@click.option("--no-augment", is_flag=True, help="No crop/flip/colour augmentation in stage 1.")
@click.option("--drop-empty", is_flag=True, help="Drop tags with no positive photo instead of stopping.")
@click.option("--val-fraction", type=click.FloatRange(0.0, 1.0, min_open=True, max_open=True), default=0.2,
              show_default=True, help="Share of photos held out for validation.")
@click.option("--workers", type=click.IntRange(min=1), default=4, show_default=True,
              help="Threads decoding photos into the cache.")
@click.option("--name", default=None, help="Model name [default: the labels file's name].")
@click.option("--quiet", "-q", is_flag=True, help="No progress bars (epoch summaries are still printed).")
def train(labels, data, annotations, no_keywords, backbone, pretrained, out, device, resume, stages, epochs,
          stage2_epochs, batch_size, lr, stage2_lr, weight_decay, seed, loss, alpha, topk, no_kd, no_sc,
          sc_branch, ema, train_blocks, no_augment, drop_empty, val_fraction, workers, name, quiet) -> None:
    """Fine-tune a tagger on photos you already tagged.

    Labels come from --annotations CSV, sidecar JSON "labels" and keywords in the photos. Prints the
    tag histogram (head >=100, medium 20-99, tail <20 photos), holds out a validation split, trains
    stage 1 and stage 2 of HP-DVAL, and leaves in --out the best checkpoint, metrics.json and the
    per-tag thresholds. Next: `tagger export RUN_DIR`.
    """
    from importlib.util import find_spec

    # Say what to install before anything heavy loads; the binary and runtime-only installs lack these.
    if find_spec("torch") is None or find_spec("open_clip") is None or find_spec("train") is None:
        raise click.ClickException(EXTRAS_HINT)
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
    if pretrained is None:
        pretrained = default_pretrained(backbone)
    elif pretrained.lower() == "none":
        pretrained = None

    cfg = TrainConfig(
        labels=labels, data=data, out=out, annotations=annotations, keywords=not no_keywords,
        backbone=backbone, pretrained=pretrained, device=device, stages=stages, epochs=epochs,
        stage2_epochs=stage2_epochs, batch_size=batch_size, lr=lr, stage2_lr=stage2_lr,
        weight_decay=weight_decay, seed=seed, loss=loss, alpha=alpha, topk=topk, kd=not no_kd,
        sc=not no_sc, sc_branch=sc_branch, ema=ema, train_blocks=train_blocks, augment=not no_augment,
        drop_empty=drop_empty, val_fraction=val_fraction, workers=workers, name=name,
    )
    if saved is not None:
        cfg = _resumed_config(click.get_current_context(), cfg, saved)
    try:
        result = run_training(cfg, resume=resume, log=click.echo, progress=not quiet)
    except TaggerError as exc:
        raise click.ClickException(str(exc)) from None
    except KeyboardInterrupt:
        click.echo(f"\ninterrupted; continue with: tagger train --resume --out {out}", err=True)
        sys.exit(130)
    click.echo(f"run saved in {result.run_dir} ({result.elapsed_s:.0f}s); next: tagger export {result.run_dir}")
