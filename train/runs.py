"""The run folder `tagger train --out RUN_DIR` leaves, and `load_run` for `tagger export`.

    RUN_DIR/config.json     the training config, the backbone's architecture and preprocessing
    RUN_DIR/dataset.json    labels, the train/validation split (photos and tags), what was skipped
    RUN_DIR/best.pt         the model to export (weights without the teacher): validation's pick, or
                            its recipe trained again on every labelled photo (the refit, train.trainer)
    RUN_DIR/validated.pt    validation's pick itself, trained on the training split, kept after a refit:
                            the model the thresholds and validation figures belong to
    RUN_DIR/last.pt         the latest epoch, optimizer included: what --resume continues from
    RUN_DIR/metrics.json    validation mAP total/head/medium/tail, per-tag AP/F1/threshold, history
    RUN_DIR/val_scores.npy  the best checkpoint's validation scores [N_val, C] (for report.html)
    RUN_DIR/report.html     per-tag table, plots and thumbnails (train.report)
    RUN_DIR/cache/          decoded training pixels (uint8 memmap), reused by --resume and export
"""
from __future__ import annotations

import datetime as _dt
import json
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from tagger.atomic import write_atomic
from tagger.errors import ImageError, ModelError
from tagger.images import Preprocess, load_image
from train.backbone import LoadedClip, build_clip, tokenizer_for
from train.cache import open_cache
from train.model import ExportParts, HPDVAL, HPDVALConfig
from train.split import spread

CONFIG = "config.json"
DATASET = "dataset.json"
METRICS = "metrics.json"
BEST = "best.pt"
LAST = "last.pt"
VALIDATED = "validated.pt"
CACHE_DIR = "cache"
VAL_SCORES = "val_scores.npy"  # the best model's scores on the validation photos, dataset.json "val" order
REPORT = "report.html"
RUN_FORMAT = 2  # 2: per-photo score normalisation, learned tag bias, reference prompt


class RunError(ModelError):
    """A run folder that is missing, incomplete or not a tagger run."""


def write_json(path: Path, data: dict) -> None:
    try:
        text = json.dumps(data, indent=2, ensure_ascii=False).encode("utf-8")
    except UnicodeEncodeError:  # a file name with undecodable bytes (surrogates): escape it instead
        text = json.dumps(data, indent=2).encode("ascii")
    write_atomic(path, text + b"\n")


def read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise RunError(path, "missing from the run folder") from None
    except (OSError, ValueError) as exc:
        raise RunError(path, f"cannot read: {exc}") from None


def save_val_scores(run_dir: Path, scores: np.ndarray) -> None:
    tmp = run_dir / f".{VAL_SCORES}.tmp"
    with open(tmp, "wb") as fh:
        np.save(fh, np.asarray(scores, dtype=np.float32))
    os.replace(tmp, run_dir / VAL_SCORES)


def save_checkpoint(path: Path, payload: dict) -> None:
    """torch.save through a temporary file: a Ctrl-C mid-save leaves the previous checkpoint intact."""
    tmp = path.with_name(f".{path.name}.tmp")
    torch.save(payload, tmp)
    os.replace(tmp, path)


def validated_checkpoint(run_dir: Path) -> Path:
    """The checkpoint the validation figures and thresholds belong to: validated.pt after a refit,
    else best.pt (validation's pick is then the model itself)."""
    validated = Path(run_dir) / VALIDATED
    return validated if validated.is_file() else Path(run_dir) / BEST


def undo_refit(run_dir: Path) -> bool:
    """Put the validated pick back as best.pt (a resumed run goes on from it, and refits at its end);
    True if there was a refit (or a refit cut short) to undo."""
    validated = Path(run_dir) / VALIDATED
    if not validated.is_file():
        return False
    os.replace(validated, Path(run_dir) / BEST)
    return True


def load_checkpoint(path: Path) -> dict:
    try:
        return torch.load(path, map_location="cpu", weights_only=False)
    except FileNotFoundError:
        raise RunError(path, "checkpoint missing from the run folder") from None
    except Exception as exc:  # unpickling a damaged file raises many types
        raise RunError(path, f"cannot read checkpoint: {type(exc).__name__}: {exc}") from None


def is_run(run_dir: str | Path) -> bool:
    return (Path(run_dir) / CONFIG).is_file()


@dataclass
class LoadedRun:
    run_dir: Path
    model: HPDVAL  # eval mode, CPU, no teacher
    parts: ExportParts
    labels: list[str]
    thresholds: list[float]  # calibrated max-F1 per tag on validation
    preprocess: Preprocess
    summary: dict  # the model file's `tagger.model` metadata
    config: dict
    dataset: dict

    def validation_images(self) -> np.ndarray:
        """uint8 [N, S, S, 3]: the validation photos' pixels (from the cache, else decoded again)."""
        return self._images([Path(p["path"]) for p in self.dataset["val"]])

    def calibration_images(self, n: int) -> np.ndarray:
        """uint8 [≤n, S, S, 3]: up to n training photos, spread evenly over the training set."""
        train = [Path(p["path"]) for p in self.dataset["train"]]
        if n <= 0 or not train:
            return np.zeros((0, self.preprocess.size, self.preprocess.size, 3), np.uint8)
        return self._images([train[i] for i in spread(len(train), n)])

    def _images(self, paths: list[Path]) -> np.ndarray:
        size = self.preprocess.size
        cache = open_cache(self.run_dir / CACHE_DIR, self.preprocess)
        if cache is not None:
            row_of = {str(p): i for i, p in enumerate(cache.paths)}
            if all(str(p) in row_of for p in paths):
                return cache.get([row_of[str(p)] for p in paths]) if paths else np.zeros((0, size, size, 3), np.uint8)
        out = np.zeros((len(paths), size, size, 3), np.uint8)
        for i, path in enumerate(paths):
            try:
                out[i] = load_image(path, self.preprocess)
            except ImageError as exc:
                raise RunError(self.run_dir, f"the run's cache is gone and a photo cannot be decoded again: {exc}") from None
        return out


def load_run(run_dir: str | Path, checkpoint: str = BEST) -> LoadedRun:
    """A finished run's model to export (best.pt; `checkpoint` names another, validated.pt say), ready
    for export; a clear RunError for anything else."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise RunError(run_dir, "run folder not found")
    if not is_run(run_dir):
        raise RunError(run_dir, f"not a training run (no {CONFIG}); make one with `tagger train --out {run_dir}`")
    config = read_json(run_dir / CONFIG)
    if config.get("format") != RUN_FORMAT:
        raise RunError(run_dir / CONFIG, f"run format {config.get('format')!r} is not supported (expected {RUN_FORMAT})")
    if not (run_dir / METRICS).is_file() or not (run_dir / BEST).is_file():
        raise RunError(run_dir, "training has not finished (no best.pt/metrics.json); "
                                "continue it with `tagger train --resume --out RUN_DIR`")
    dataset = read_json(run_dir / DATASET)
    metrics = read_json(run_dir / METRICS)
    check_aligned(run_dir, dataset["labels"], metrics)
    model = rebuild_model(config, dataset["labels"])
    state = load_checkpoint(run_dir / checkpoint)
    if state.get("refit") and "refit" not in metrics:
        # best.pt is the refit but metrics.json still holds the validated model's thresholds.
        raise RunError(run_dir, "the refit was cut short before metrics.json was written; "
                                "finish it with `tagger train --resume --out RUN_DIR`")
    try:
        model.load_state_dict(state["model"], strict=True)
    except (KeyError, RuntimeError) as exc:
        raise RunError(run_dir / checkpoint, f"checkpoint does not match the run's config: {str(exc).splitlines()[0]}") from None
    model.eval().requires_grad_(False)
    preprocess = Preprocess.from_dict(config["model"]["preprocess"])
    # metrics.json's thresholds are the exported model's (carried to the refit); validated.pt has its own.
    thresholds = metrics["thresholds"] if checkpoint != VALIDATED else \
        metrics.get("refit", {}).get("validated_thresholds", metrics["thresholds"])
    return LoadedRun(run_dir=run_dir, model=model, parts=model.export_parts(), labels=list(dataset["labels"]),
                     thresholds=[float(t) for t in thresholds], preprocess=preprocess,
                     summary=model_summary(config, dataset, metrics), config=config, dataset=dataset)


def check_aligned(run_dir: Path, labels: list[str], metrics: dict) -> None:
    """The labels (dataset.json) and the thresholds (metrics.json) are joined by position: refuse a run
    whose files do not line up (edited by hand, or mixed from two runs) instead of exporting a model that
    tags with another tag's threshold. The checkpoint's own tag count is checked by its strict load."""
    thresholds, tags = metrics.get("thresholds"), metrics.get("tags")
    if not isinstance(thresholds, list) or len(thresholds) != len(labels):
        raise RunError(run_dir / METRICS, f"{len(thresholds) if isinstance(thresholds, list) else 'no'} thresholds "
                                          f"for {len(labels)} tags in {DATASET}: the files come from different runs")
    named = [t.get("tag") if isinstance(t, dict) else None for t in tags] if isinstance(tags, list) else list(labels)
    if len(named) != len(labels):
        raise RunError(run_dir / METRICS, f"{len(named)} tags here, {len(labels)} in {DATASET}: "
                                          "the files come from different runs")
    for i, (here, there) in enumerate(zip(named, labels)):
        if here != there:
            raise RunError(run_dir / METRICS, f"tag {i + 1} is {here!r} here but {there!r} in {DATASET}: "
                                              "the files come from different runs")


def rebuild_model(config: dict, labels: list[str]) -> HPDVAL:
    """The run's architecture with random weights (no download); the caller loads a checkpoint into it."""
    spec = config["model"]
    clip_model = build_clip(spec["clip_config"], name=config["train"]["backbone"])
    clip = LoadedClip(model=clip_model, tokenizer=tokenizer_for(spec["clip_config"]),
                      preprocess=Preprocess.from_dict(spec["preprocess"]), mean=tuple(spec["mean"]),
                      std=tuple(spec["std"]), name=config["train"]["backbone"], config=spec["clip_config"])
    hp = HPDVALConfig(alpha=spec["alpha"], topk=spec["topk"], ctx_init=spec["ctx_init"], score_norm=spec["score_norm"],
                      head=spec.get("head", "dual-view"), head_layers=spec.get("head_layers", 1),
                      free_blocks=spec.get("free_blocks", 0))
    return HPDVAL(clip, labels, class_bias=None, config=hp, teacher=False)


def model_summary(config: dict, dataset: dict, metrics: dict) -> dict:
    """`tagger.model` metadata: what the model is and how well it did on validation."""
    train_cfg = config["train"]
    val = metrics["val"]
    return {
        "name": config["name"],
        "backbone": train_cfg["backbone"],
        "pretrained": train_cfg["pretrained"],
        "created": (metrics.get("finished") or _dt.date.today().isoformat())[:10],
        "method": "HP-DVAL",
        "train_images": len(dataset["train"]),
        **({"refit_images": metrics["refit"]["photos"]} if metrics.get("refit") else {}),
        "val_images": len(dataset["val"]),
        "positives": {t["tag"]: t["train_positives"] for t in metrics["tags"]},
        "val_mAP": {"total": val["mAP"], "head": val["mAP_head"], "medium": val["mAP_medium"],
                    "tail": val["mAP_tail"]},
        "loss": train_cfg["loss"],
        "stages": list(train_cfg["stages"]),
    }
