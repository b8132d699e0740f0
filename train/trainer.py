"""`tagger train` from settings to a finished run folder (DESIGN.md §5-§6).

The pieces live by what they hold: settings and defaults in train.config, the data in train.prepare,
the stages and checkpoints in train.stages, validation in train.evaluate. This module wires them:
prepare the data, build the model and the loss, validate the untrained model, run the stages, then
reload the best candidate, calibrate one threshold per tag and write metrics.json, and last train the
picked recipe again on every labelled photo (the refit, `refit`).
"""
from __future__ import annotations

import datetime as _dt
import gc
import os
import shutil
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np
import torch

from tagger.errors import TaggerError
from train import distributed, runs
from train.backbone import LoadedClip, load_clip
from train.config import (Log, TrainConfig, TrainError, check_config, check_same_setup, data_defaults,
                          distils, pick_device, resolve_defaults, tower_defaults)
from train.cache import ImageCache, build_cache
from train.evaluate import cache_scores, evaluate, photo_scores
from train.losses import make_loss
from train.metrics import calibrated_thresholds, carried_thresholds, f1_summary, frequency_group, precision_recall
from train.model import HPDVAL, HPDVALConfig
from train.prepare import Prepared, prepare_data
from train.stages import Trainer, load_model_state

__all__ = ["TrainConfig", "TrainError", "TrainResult", "build_model", "finish", "run_config", "train"]


@dataclass
class TrainResult:
    run_dir: Path
    metrics: dict
    elapsed_s: float
    history: list[dict] = field(default_factory=list)
    report: Path | None = None  # report.html, when it could be made
    rank: int = 0  # under torchrun: only rank 0's result holds the metrics


def run_config(cfg: TrainConfig, clip: LoadedClip, model: HPDVAL, name: str) -> dict:
    """config.json: the settings, and what `runs.rebuild_model` needs to rebuild the architecture."""
    return {
        "format": runs.RUN_FORMAT,
        "name": name,
        "train": {**asdict(cfg), "stages": list(cfg.stages)},
        "model": {"clip_config": clip.config, "mean": list(clip.mean), "std": list(clip.std),
                  "preprocess": clip.preprocess.to_dict(), "alpha": model.alpha, "topk": model.topk,
                  "ctx_init": model.config.ctx_init, "score_norm": model.score_norm,
                  "head": model.config.head, "head_layers": model.config.head_layers,
                  "free_blocks": model.config.free_blocks},
    }


def build_model(cfg: TrainConfig, clip: LoadedClip, data: Prepared, device: torch.device) -> tuple[HPDVAL, torch.nn.Module]:
    """The model and its loss for this data: class bias υ from the loss, tag bias at the tags' priors."""
    train_counts = data.targets[data.train_idx].sum(axis=0)
    loss_fn = make_loss(cfg.loss, train_counts, len(data.train_idx)).to(device)
    torch.manual_seed(cfg.seed)
    model = HPDVAL(clip, data.labels, class_bias=loss_fn.class_bias.cpu(),
                   config=HPDVALConfig(alpha=cfg.alpha, topk=cfg.topk, score_norm=cfg.score_norm, head=cfg.head,
                                       free_blocks=cfg.free_blocks or 0),
                   teacher=distils(cfg))
    model.init_tag_bias(train_counts, len(data.train_idx))
    return model.to(device), loss_fn


def train(cfg: TrainConfig, resume: bool = False, log: Log = print, progress: bool = True) -> TrainResult:
    """Run (or continue) training into `cfg.out` and return the final validation metrics.

    Under torchrun (WORLD_SIZE set) every rank calls this: train.distributed says how they share it."""
    dist = distributed.from_environment()
    log, progress = distributed.quiet(dist, log, progress)
    try:
        return _train(cfg, resume, log, progress, dist)
    finally:
        dist.close()


def _train(cfg: TrainConfig, resume: bool, log: Log, progress: bool, dist: distributed.Single) -> TrainResult:
    started = time.perf_counter()
    check_config(cfg)
    cfg = resolve_defaults(cfg, log)
    run_dir = Path(cfg.out)
    saved_config = saved_dataset = None
    if resume:
        if not runs.is_run(run_dir):
            raise TrainError(run_dir, "--resume: not a run folder (no config.json); start without --resume")
        saved_config = runs.read_json(run_dir / runs.CONFIG)
        saved_dataset = runs.read_json(run_dir / runs.DATASET)
    elif runs.is_run(run_dir):
        raise TrainError(run_dir, "already holds a training run: continue it with --resume, or choose another --out")
    run_dir.mkdir(parents=True, exist_ok=True)

    torch.manual_seed(cfg.seed)
    device = dist.device(pick_device(cfg.device))
    log(f"backbone {cfg.backbone} ({cfg.pretrained or 'random init'}) on {device.type}"
        + (" with bf16 autocast" if device.type == "cuda" else "")
        + (f", {dist.world_size} processes ({dist.backend})" if dist.world_size > 1 else ""))
    if saved_config is not None:
        check_same_setup(saved_config["train"], cfg)
    clip = load_clip(cfg.backbone, cfg.pretrained, device="cpu")
    data = distributed.prepare_once(dist, lambda saved: prepare_data(cfg, clip, run_dir, log, progress, saved),
                                    saved_dataset)
    cfg = data_defaults(cfg, len(data.train_idx), clip.model.visual.transformer.width, log)
    blocks = len(clip.model.visual.transformer.resblocks)
    cfg = tower_defaults(cfg, blocks)
    dist.check_batches(cfg.batch_size, len(data.train_idx))
    log(f"training: loss {cfg.loss}, scores {cfg.score_norm}, alpha {cfg.alpha:g}, stage 1 lr {cfg.lr:.3g} for "
        f"{cfg.epochs} epochs" + (" + WiSE-FT mixes" if cfg.wise_ft else "") + f", stage 2 lr {cfg.stage2_lr:g} for "
        f"{cfg.stage2_epochs} epochs, batch {cfg.batch_size}, stages {','.join(map(str, cfg.stages))}"
        + (f", free branch over the last {cfg.free_blocks} of {blocks} tower blocks" if cfg.free_blocks else ""))
    model, loss_fn = build_model(cfg, clip, data, device)
    name = cfg.name or Path(cfg.labels).stem
    if saved_config is None and dist.is_main:
        runs.write_json(run_dir / runs.CONFIG, run_config(cfg, clip, model, name))
        runs.write_json(run_dir / runs.DATASET, data.dataset)

    if resume and dist.is_main and runs.undo_refit(run_dir):
        # Training may go on (more epochs) and selection compares with best.pt: the validated pick again.
        log("resume: best.pt is the validated pick again (validated.pt); the refit is redone at the end")
    trainer = Trainer(cfg, model, loss_fn, data, device, run_dir, log, progress, dist)
    payload = None
    if resume and (run_dir / runs.LAST).is_file():
        payload = trainer.restore(runs.load_checkpoint(run_dir / runs.LAST))
        log(f"resuming after stage {payload['stage']} epoch {payload['epoch']}")
    if trainer.before is None:
        trainer.start()
        m = trainer.before["mAP"]
        log(f"before training: val mAP {'-' if m is None else f'{m:.1f}'}")

    stages = sorted(set(cfg.stages))
    for stage in stages:
        if stage == 2 and not dist.is_main:
            break  # rank 0 runs stage 2 alone; the others wait for the refit, which they share
        done = trainer.state["stage"]
        if done > stage:
            continue
        if stage == 2 and done < 2:
            trainer.stage2_from = candidate(trainer.best)
            if 1 in stages:
                # Stage 2 tunes prompts for the student that validated best so far (maybe the untrained one).
                load_model_state(model, runs.load_checkpoint(run_dir / runs.BEST)["model"])
        resume_from = payload if payload is not None and payload["stage"] == stage else None
        if stage == 1 and cfg.epochs > 0:
            trainer.stage1(resume_from)
        elif stage == 2 and cfg.stage2_epochs > 0:
            trainer.stage2(resume_from)

    recipe = before = untagged = None
    if dist.is_main:
        metrics = finish(cfg, model, data, trainer, device, run_dir, time.perf_counter() - started)
        for line in summary_lines(metrics):
            log(line)
        why_not = no_refit_because(cfg, saved_config, metrics["best"], trainer.stage2_from) if cfg.refit else None
        if why_not:
            log(f"no refit: {why_not}")
        elif cfg.refit and metrics["best"]["stage"] != 0 and len(data.val_idx):
            recipe = (metrics["best"], trainer.stage2_from)
            # The validated model's scores of the photos its thresholds are carried by.
            untagged = untagged_cache(cfg, data, clip, run_dir, log, progress)
            before = carry_scores(model, data, untagged, device, max(cfg.batch_size, 64))
    recipe = dist.share(recipe)  # under torchrun every rank takes its share of the refit's stage 1
    history = trainer.history
    if recipe is not None:
        # The refit builds its own model: free the device of this one (the student is clip's own tower).
        del model, trainer, loss_fn, clip, payload
        gc.collect()
        if device.type == "cuda":
            torch.cuda.empty_cache()
        refit_started = time.perf_counter()
        refitted = refit(cfg, data, recipe, device, run_dir, log, progress, dist)
        if refitted is None:  # a rank other than 0: its share is done
            return TrainResult(run_dir, {}, time.perf_counter() - started, history, rank=dist.rank)
        refit_model, processes = refitted
        done = adopt_refit(refit_model, data, untagged, device, max(cfg.batch_size, 64), run_dir, metrics, before, log)
        if done is not None:
            done |= {"seconds": round(time.perf_counter() - refit_started, 1), "processes": processes}
            metrics = metrics | {"thresholds": done.pop("thresholds"), "refit": done,
                                 "elapsed_s": round(time.perf_counter() - started, 2)}
            runs.write_json(run_dir / runs.METRICS, metrics)
            log(refit_line(metrics))
    elif not distributed.alone(dist):
        return TrainResult(run_dir, {}, time.perf_counter() - started, history, rank=dist.rank)
    report = _write_report(run_dir, log)
    return TrainResult(run_dir, metrics, time.perf_counter() - started, history, report=report)


def no_refit_because(cfg: TrainConfig, saved_config: dict | None, pick: dict, stage2_from: dict | None) -> str | None:
    """Why the picked recipe cannot be replayed as it was trained, if it cannot."""
    if saved_config is not None and any(saved_config["train"].get(k) != getattr(cfg, k) for k in ("epochs", "stage2_epochs")):
        return ("the run was resumed with other epochs, a schedule the refit cannot retrace; "
                "best.pt is the validated pick")
    if pick["stage"] == 2 and stage2_from is None:
        return "the run began before refits existed and does not record where its stage 2 started"
    return None


def candidate(best: dict) -> dict:
    """A selected candidate's identity (stage, epoch, WiSE-FT mix) without its scores."""
    return {k: best[k] for k in ("stage", "epoch", "wise_ft") if best.get(k) is not None}


def refit(cfg: TrainConfig, data: Prepared, recipe: tuple[dict, dict | None], device: torch.device, run_dir: Path,
          log: Log, progress: bool, dist: distributed.Single) -> tuple[HPDVAL, int] | None:
    """Train the picked recipe (the pick, and the candidate its stage 2 started from) again on every
    labelled photo; returns on rank 0 the model and how many processes shared its stage 1, None on the
    other ranks once their share is done.

    Once validation has chosen, the photos it held out are worth more as training photos: with 2 to 5
    photos of a rare tag, the one in validation is a fifth to a half of all it has. The refit repeats
    the picked candidate's recipe (same epochs, rates and schedule, its WiSE-FT mix or stage 2 epoch;
    the batches are those of the larger set) on training and validation photos together, as a grid
    search refits its winner. Under torchrun its stage 1 is shared by the ranks as the first one was
    (the same global batches: one process's math); stage 2 runs on rank 0. `adopt_refit` makes it
    best.pt. Measured on the quality benchmark: docs/training.md, "The refit".
    """
    pick, stage2_from = recipe
    everything = replace(data, train_idx=labelled(data))
    log(f"refit: the picked recipe ({describe(pick)}) again on all {len(everything.train_idx)} labelled photos"
        + (f", {dist.world_size} processes" if dist.world_size > 1 else ""))
    validated = run_dir / runs.VALIDATED
    if dist.is_main and not validated.is_file():
        # Before best.pt changes: a run stopped mid-refit resumes from the validated pick.
        tmp = validated.with_name(f".{validated.name}.tmp")
        shutil.copyfile(run_dir / runs.BEST, tmp)
        os.replace(tmp, validated)
    # The backbone again: the first model trained its tower in place.
    model, loss_fn = build_model(cfg, load_clip(cfg.backbone, cfg.pretrained, device="cpu"), everything, device)
    replayer = Trainer(cfg, model, loss_fn, everything, device, run_dir, log, progress, dist)
    replayer.init_tag_bias()
    replayer.replay_stage1(pick, stage2_from)
    if not distributed.alone(dist):
        return None
    replayer.replay_stage2(pick)
    return model, replayer.dist.world_size


def adopt_refit(model: HPDVAL, data: Prepared, untagged: ImageCache | None, device: torch.device, batch_size: int,
                run_dir: Path, metrics: dict, before: np.ndarray, log: Log) -> dict | None:
    """Make the refit model best.pt and carry the thresholds to it; returns what metrics.json records of
    the refit, the carried thresholds included (None when it diverged and the validated pick stays).

    Nothing can be validated on photos the model has seen, so the validated model stays as validated.pt
    and the validation figures in metrics.json remain its own; each threshold is carried to the refit by
    the share of photos it lets through (`carry_scores`; `before` holds the validated model's), since the
    refit's scores do not sit where the validated model's did."""
    after = carry_scores(model, data, untagged, device, batch_size)
    if not np.isfinite(after).all():
        # Nothing validates the refit; a diverged one must not replace the model that was validated.
        (run_dir / runs.VALIDATED).unlink()
        log("warning: the refit diverged (scores not finite); best.pt stays the validated pick")
        return None
    pick = metrics["best"]
    thresholds = carried_thresholds(np.array(metrics["thresholds"]), before, after)
    runs.save_checkpoint(run_dir / runs.BEST, {"model": model.inference_state_dict(), "stage": pick["stage"],
                                               "epoch": pick["epoch"], "refit": True})
    return {"photos": int(len(labelled(data))),
            "carried_by": {"labelled": int(len(carry_rows(data, untagged))),
                           "untagged": 0 if untagged is None else len(untagged)},
            "thresholds": [round(float(t), 6) for t in thresholds], "validated_thresholds": metrics["thresholds"]}


def labelled(data: Prepared) -> np.ndarray:
    """Every labelled photo, training and validation (sorted rows): what the refit trains on."""
    return np.union1d(data.train_idx, data.val_idx)


def untagged_cache(cfg: TrainConfig, data: Prepared, clip: LoadedClip, run_dir: Path, log: Log,
                   progress: bool) -> ImageCache | None:
    """The sample of untagged photos decoded (cached in the run folder, so a resumed run reuses it);
    None when --data has none. One that cannot be decoded is left out."""
    if not data.untagged:
        return None
    cache = build_cache(data.untagged, clip.preprocess, run_dir / runs.CACHE_DIR / "untagged", cfg.workers, progress)
    if cache.failed:
        log(f"refit: {len(cache.failed)} of {len(data.untagged)} untagged photos could not be decoded; "
            "the thresholds are carried by the others")
    return cache if len(cache) else None


def carry_scores(model: HPDVAL, data: Prepared, untagged: ImageCache | None, device: torch.device,
                 batch_size: int) -> np.ndarray:
    """A model's scores of the photos thresholds are carried to the refit by (`carry_rows` says which).

    Carried by the training photos alone, a threshold moved in steps of a tenth of them with one photo
    per tag, and the refit wrote fewer tags than the validated model. Untagged photos, which neither
    model has seen, are what it will tag; with them the training photos suffice. Without them the
    validation photos double the count, at a cost: the validated model scored them unseen and the refit
    has trained on them, which sets the carried thresholds higher by the gap between the two (small
    with a pretrained prior; docs/training.md, "The refit")."""
    scores = photo_scores(model, data, carry_rows(data, untagged), device, batch_size, exact=True)
    if untagged is None:
        return scores
    return np.vstack([scores, cache_scores(model, untagged, np.arange(len(untagged)), device, batch_size, exact=True)])


def carry_rows(data: Prepared, untagged: ImageCache | None) -> np.ndarray:
    """The labelled photos the carry counts: the training photos beside untagged ones (both models
    score each of them alike: seen by both, or by neither), else every labelled photo."""
    return data.train_idx if untagged is not None else labelled(data)



def describe(best: dict) -> str:
    if best["stage"] == 0:
        return "the untrained model"
    return f"stage {best['stage']} epoch {best['epoch']}" + (
        f" (WiSE-FT mix {best['wise_ft']:g} with the pretrained tower)" if "wise_ft" in best else "")


def refit_line(metrics: dict) -> str:
    r = metrics["refit"]
    untagged = r.get("carried_by", {}).get("untagged", 0)
    return (f"refit: {describe(metrics['best'])} trained again on all {r['photos']} labelled photos "
            f"({metrics['val_images']} of them validation photos) in {r['seconds']:.0f}s: best.pt, its thresholds "
            f"carried from the validated model's" + (f" (by {untagged} untagged photos too)" if untagged else "")
            + "; the validation figures above are the validated model's (validated.pt)")


def _write_report(run_dir: Path, log: Log) -> Path | None:
    """report.html; a report that cannot be made costs the user the page, never the trained run."""
    from train.report import write_report

    try:
        return write_report(run_dir)
    except (TaggerError, OSError, ValueError) as exc:
        log(f"warning: report.html not written ({exc}); rebuild it with `tagger report {run_dir}`")
        return None


def finish(cfg: TrainConfig, model: HPDVAL, data: Prepared, trainer: Trainer, device: torch.device,
           run_dir: Path, elapsed: float) -> dict:
    """Reload the best checkpoint, calibrate thresholds on validation and write metrics.json."""
    best = runs.load_checkpoint(runs.validated_checkpoint(run_dir))
    load_model_state(model, best["model"])
    summary, scores = evaluate(model, data, device, max(cfg.batch_size, 64), exact=True)  # what export computes
    val_targets = data.targets[data.val_idx]
    train_counts = data.targets[data.train_idx].sum(axis=0)
    thresholds = calibrated_thresholds(scores, val_targets, data.labels, train_counts, seed=cfg.seed)
    f1 = f1_summary(scores, val_targets, thresholds, data.labels)
    precision, recall = precision_recall(scores, val_targets, thresholds, data.labels)
    runs.save_val_scores(run_dir, scores)  # the report's thumbnails and curves: `tagger report` reuses them
    val_counts = val_targets.sum(axis=0)
    tags = [{"tag": tag, "group": frequency_group(int(n)), "train_positives": int(n), "val_positives": int(v),
             "ap": ap, "f1": f, "precision": p, "recall": r, "threshold": round(float(t), 6)}
            for tag, n, v, ap, f, p, r, t in zip(data.labels, train_counts, val_counts, summary["ap"], f1["f1"],
                                                 precision, recall, thresholds)]
    metrics = {
        "val": {k: summary[k] for k in ("mAP", "mAP_head", "mAP_medium", "mAP_tail")}
        | {"f1_macro": f1["f1_macro"], "f1_micro": f1["f1_micro"]},
        "before_training": {k: trainer.before[k] for k in ("mAP", "mAP_head", "mAP_medium", "mAP_tail")},
        "best": candidate(best) | ({"from": trainer.stage2_from} if best["stage"] == 2 and trainer.stage2_from else {}),
        "thresholds": [round(float(t), 6) for t in thresholds],
        "tags": tags,
        "train_images": int(len(data.train_idx)),
        "val_images": int(len(data.val_idx)),
        "skipped_images": len(data.dataset.get("skipped", [])),
        "ignored_tags": data.dataset.get("ignored", {}),
        "history": trainer.history,
        "timings": trainer.timings,
        "elapsed_s": round(elapsed, 2),
        "finished": _dt.datetime.now().astimezone().isoformat(timespec="seconds"),
    }
    runs.write_json(run_dir / runs.METRICS, metrics)
    return metrics


def summary_lines(metrics: dict) -> list[str]:
    def fmt(v):
        return "-" if v is None else f"{v:.1f}"
    val, before, best = metrics["val"], metrics["before_training"], metrics["best"]
    which = describe(best)
    if best["stage"] == 0:
        which += " (no epoch validated better: training did not help on your validation photos)"
    return [
        f"best: {which}; validation mAP {fmt(val['mAP'])} (head {fmt(val['mAP_head'])} / medium "
        f"{fmt(val['mAP_medium'])} / tail {fmt(val['mAP_tail'])}), before training {fmt(before['mAP'])}",
        f"F1 at calibrated thresholds: macro {fmt(val['f1_macro'])}, micro {fmt(val['f1_micro'])}",
    ]
