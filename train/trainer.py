"""Two-stage HP-DVAL training (DESIGN.md §5-§6) from labelled photos to a finished run folder.

Stage 1 (dual-view alignment) fine-tunes the student tower against the hand-crafted prompts, with
L_kd pulling its CLS embedding toward the frozen teacher's. Stage 2 (hierarchical prompt tuning)
freezes the student, computes its features once, and learns the global and local contexts with
the semantic-consistency loss L_sc. Validation picks the best epoch across both stages.
"""
from __future__ import annotations

import contextlib
import datetime as _dt
import math
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from tqdm import tqdm

from tagger.errors import TaggerError
from tagger.labels import read_labels
from train import runs
from train.augment import augment
from train.backbone import LoadedClip, load_clip
from train.cache import ImageCache, build_cache
from train.data import LabelledPhotos, collect_labels, histogram_lines
from train.losses import LOSSES, make_loss
from train.metrics import calibrate_thresholds, f1_summary, frequency_group, map_summary
from train.model import HPDVAL, HPDVALConfig, normalize_pixels, standardize
from train.split import stratified_split

Log = Callable[[str], None]


class TrainError(TaggerError):
    """Training cannot start or continue; the message says what to change."""


@dataclass
class TrainConfig:
    labels: str  # mytags.txt
    data: str  # folder of labelled photos
    out: str = "runs/latest"  # run folder
    annotations: str | None = None  # CSV `path,tag1;tag2`, paths relative to `data`
    keywords: bool = True  # also read keywords stored in the photos (exiftool)
    backbone: str = "ViT-B-32"  # open_clip model name or JSON config
    pretrained: str | None = "laion2b_s34b_b79k"  # open_clip tag, checkpoint file, or None (random init)
    device: str = "auto"  # auto | cpu | cuda
    stages: tuple[int, ...] = (1, 2)
    epochs: int = 20  # stage 1 (paper: 20)
    stage2_epochs: int = 10
    batch_size: int = 32  # paper: 32
    lr: float | None = None  # stage 1 AdamW; None: 1e-5 (paper) with pretrained weights, 2e-3 from random init
    stage2_lr: float = 2e-3  # stage 2 AdamW on the contexts only
    weight_decay: float = 1e-4  # paper: 1e-4
    seed: int = 0
    loss: str = "dbstar"  # dbstar | db | asl | bce
    alpha: float = 0.4  # global-view weight
    topk: int | None = None  # local-view pooled patches; None: 16% of the patches
    kd: bool = True  # L_kd in stage 1
    kd_weight: float = 1.0
    sc: bool = True  # L_sc in stage 2
    sc_weight: float = 1.0
    sc_branch: str = "global"  # which learned prompts L_sc ties to P_H: global (paper) | local (code)
    ema: float = 0.0  # EMA decay of the student in stage 1 (0: off; the official code uses 0.998)
    train_blocks: int = 0  # stage 1 trains only the last N transformer blocks (0: all)
    augment: bool = True
    drop_empty: bool = False  # drop tags with no positive photo instead of stopping
    val_fraction: float = 0.2
    workers: int = 4  # decoding threads
    name: str | None = None  # model name; default: the labels file's stem


@dataclass
class TrainResult:
    run_dir: Path
    metrics: dict
    elapsed_s: float
    history: list[dict] = field(default_factory=list)


def pick_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise TrainError(None, "--device cuda: no CUDA GPU is available to PyTorch (use --device cpu)")
    if name not in ("cpu", "cuda"):
        raise TrainError(None, f"--device must be auto, cpu or cuda, not {name!r}")
    return torch.device(name)


def _autocast(device: torch.device):
    if device.type == "cuda":
        return torch.autocast(device_type="cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def _check_config(cfg: TrainConfig) -> None:
    if cfg.loss not in LOSSES:
        raise TrainError(None, f"--loss must be one of {', '.join(LOSSES)}")
    if not cfg.stages or any(s not in (1, 2) for s in cfg.stages):
        raise TrainError(None, "--stages must be 1,2 or 1 or 2")
    if cfg.sc_branch not in ("global", "local"):
        raise TrainError(None, "--sc-branch must be global or local")
    if not 0.0 <= cfg.alpha <= 1.0:
        raise TrainError(None, "--alpha must be between 0 and 1")
    if not 0.0 < cfg.val_fraction < 1.0:
        raise TrainError(None, "--val-fraction must be between 0 and 1")
    if cfg.batch_size < 1 or cfg.epochs < 0 or cfg.stage2_epochs < 0:
        raise TrainError(None, "--batch-size must be positive and epochs not negative")


# -- data ------------------------------------------------------------------------------------------

@dataclass
class Prepared:
    labels: list[str]
    cache: ImageCache
    targets: np.ndarray  # uint8 [N, C] for cache rows
    train_idx: np.ndarray
    val_idx: np.ndarray
    dataset: dict  # what dataset.json holds


def _report_sources(photos: LabelledPhotos, labels_file: str, log: Log) -> None:
    parts = [f"{n} from {src}" for src, n in sorted(photos.sources.items())]
    log(f"{len(photos.paths)} labelled photos ({', '.join(parts) or 'no label source'})"
        + (f"; {photos.unlabelled} photos without labels ignored" if photos.unlabelled else ""))
    if photos.ignored:
        top = ", ".join(f"{t!r} ({n})" for t, n in photos.ignored.most_common(10))
        more = len(photos.ignored) - 10
        log(f"ignored {len(photos.ignored)} tags not in {Path(labels_file).name}: {top}"
            + (f" and {more} more" if more > 0 else ""))
    for line in photos.warnings[:20]:
        log(f"warning: {line}")
    if len(photos.warnings) > 20:
        log(f"warning: ... and {len(photos.warnings) - 20} more")


def _handle_empty(photos: LabelledPhotos, cfg: TrainConfig, log: Log, when: str) -> LabelledPhotos:
    empty = [i for i, n in enumerate(photos.counts) if n == 0]
    if not empty:
        return photos
    names = ", ".join(repr(photos.labels[i]) for i in empty)
    if not cfg.drop_empty:
        raise TrainError(cfg.labels, f"no positive photo {when} for {names}: label some photos with "
                                     f"{'it' if len(empty) == 1 else 'them'}, remove "
                                     f"{'it' if len(empty) == 1 else 'them'} from the labels file, "
                                     "or pass --drop-empty")
    log(f"dropping {len(empty)} tags with no positive photo {when}: {names}")
    photos = photos.drop_tags(empty)
    if not photos.labels:
        raise TrainError(cfg.labels, "no tag has a positive photo: nothing to train")
    return photos


def prepare_data(cfg: TrainConfig, clip: LoadedClip, run_dir: Path, log: Log, progress: bool,
                 saved: dict | None = None) -> Prepared:
    labels = read_labels(cfg.labels) if saved is None else None
    photos = collect_labels(cfg.data, labels or saved["labels"], cfg.annotations, cfg.keywords) \
        if saved is None else None
    if photos is not None:
        _report_sources(photos, cfg.labels, log)
        if not photos.paths:
            raise TrainError(cfg.data, "no labelled photos: give --annotations CSV, sidecar JSON \"labels\" "
                                       "or keywords in the photos")
        photos = _handle_empty(photos, cfg, log, "in the labelled photos")
        paths = photos.paths
    else:  # --resume: the photos asked of the cache the first time, so it is reused as it is
        paths = [Path(p) for p in saved["photos"]]

    cache = build_cache(paths, clip.preprocess, run_dir / runs.CACHE_DIR, cfg.workers, progress)
    if cache.failed:
        log(f"skipped {len(cache.failed)} photos that could not be decoded:")
        for line in cache.failed[:20]:
            log(f"  {line}")
        if len(cache.failed) > 20:
            log(f"  ... and {len(cache.failed) - 20} more")

    if saved is not None:
        labels = list(saved["labels"])
        index = {t: i for i, t in enumerate(labels)}
        row_of = {str(p): r for r, p in enumerate(cache.paths)}
        targets = np.zeros((len(cache.paths), len(labels)), np.uint8)
        for entry in saved["train"] + saved["val"]:
            if entry["path"] not in row_of:
                raise TrainError(entry["path"], "--resume: this photo of the run can no longer be decoded "
                                                "(moved or changed?); start a new run")
            targets[row_of[entry["path"]], [index[t] for t in entry["tags"]]] = 1
        train_idx = np.array([row_of[e["path"]] for e in saved["train"]], dtype=np.int64)
        val_idx = np.array([row_of[e["path"]] for e in saved["val"]], dtype=np.int64)
        return Prepared(labels, cache, targets, train_idx, val_idx, saved)

    row_of = {p: i for i, p in enumerate(photos.paths)}
    photos = photos.subset(np.array([row_of[p] for p in cache.paths], dtype=np.int64))
    photos = _handle_empty(photos, cfg, log, "that could be decoded")
    if len(photos.paths) < 2:
        raise TrainError(cfg.data, "need at least 2 decodable labelled photos (training and validation)")
    train_idx, val_idx = stratified_split(photos.targets, cfg.val_fraction, cfg.seed)
    if len(train_idx) == 0 or len(val_idx) == 0:
        raise TrainError(cfg.data, "too few photos to split into training and validation; label more photos")
    train_counts = photos.targets[train_idx].sum(axis=0)
    val_counts = photos.targets[val_idx].sum(axis=0)
    for line in histogram_lines(photos.labels, train_counts, val_counts):
        log(line)
    no_val = [t for t, n in zip(photos.labels, val_counts) if n == 0]
    if no_val:
        log(f"note: {len(no_val)} tags have no validation photo (too few photos): {', '.join(no_val)}; "
            "they are trained, but their AP is not measured and their threshold stays 0.5")

    def rows(indices):
        return [{"path": str(photos.paths[i]),
                 "tags": [photos.labels[c] for c in np.flatnonzero(photos.targets[i])]} for i in indices]

    dataset = {"labels": photos.labels, "train": rows(train_idx), "val": rows(val_idx),
               "photos": [str(p) for p in paths],
               "skipped": cache.failed, "ignored": dict(photos.ignored.most_common()),
               "unlabelled": photos.unlabelled, "warnings": photos.warnings}
    return Prepared(photos.labels, cache, photos.targets, train_idx, val_idx, dataset)


# -- evaluation ------------------------------------------------------------------------------------

FEATURE_FP16_BYTES = 1 << 30


@torch.no_grad()
def extract_features(model: HPDVAL, cache: ImageCache, indices: np.ndarray, batch_size: int,
                     device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """The student's (f_cls [N, D], f_patch [N, P, D]) on CPU for un-augmented cached photos.

    Patch features of many photos are large (10,000 photos of ViT-B/16: 4 GB in float32), so past
    FEATURE_FP16_BYTES they are kept in float16 and cast back per batch.
    """
    model.eval()
    n_patches = model.student.grid_size[0] * model.student.grid_size[1]
    half = len(indices) * n_patches * model.text_hand.shape[1] * 4 > FEATURE_FP16_BYTES
    cls_parts, patch_parts = [], []
    for start in range(0, len(indices), batch_size):
        chunk = indices[start:start + batch_size]
        pixels = normalize_pixels(torch.from_numpy(cache.get(chunk)).to(device), model.mean, model.std)
        with _autocast(device):
            f_cls, f_patch, _ = model.encode(pixels)
        cls_parts.append(f_cls.float().cpu())
        patch_parts.append(f_patch.to(torch.float16 if half else torch.float32).cpu())
    d = model.text_hand.shape[1]
    if not cls_parts:
        return torch.zeros(0, d), torch.zeros(0, 1, d)
    return torch.cat(cls_parts), torch.cat(patch_parts)


@torch.no_grad()
def scores_from_features(model: HPDVAL, f_cls: torch.Tensor, f_patch: torch.Tensor, device: torch.device,
                         batch_size: int = 256) -> np.ndarray:
    P_G, P_L = model.text_features()
    out = []
    for start in range(0, len(f_cls), batch_size):
        z = model.logits(f_cls[start:start + batch_size].to(device), f_patch[start:start + batch_size].to(device),
                         P_G, P_L)
        out.append(torch.sigmoid(z + model.class_bias).cpu())
    return torch.cat(out).numpy() if out else np.zeros((0, len(model.labels)), np.float32)


def evaluate(model: HPDVAL, data: Prepared, device: torch.device, batch_size: int,
             features: tuple[torch.Tensor, torch.Tensor] | None = None) -> tuple[dict, np.ndarray]:
    """Validation mAP summary and the scores [N_val, C]."""
    if features is None:
        features = extract_features(model, data.cache, data.val_idx, batch_size, device)
    scores = scores_from_features(model, *features, device)
    summary = map_summary(scores, data.targets[data.val_idx], data.targets[data.train_idx].sum(axis=0))
    return summary, scores


# -- the training loops ----------------------------------------------------------------------------

class EMA:
    """Exponential moving average of a module's floating-point state, swapped in for evaluation."""

    def __init__(self, module: torch.nn.Module, decay: float):
        self.decay = decay
        self.shadow = {k: v.detach().clone() for k, v in module.state_dict().items() if v.is_floating_point()}

    @torch.no_grad()
    def update(self, module: torch.nn.Module) -> None:
        for k, v in module.state_dict().items():
            if k in self.shadow:
                self.shadow[k].mul_(self.decay).add_(v.detach(), alpha=1 - self.decay)

    @contextlib.contextmanager
    def applied(self, module: torch.nn.Module):
        saved = {k: v.detach().clone() for k, v in module.state_dict().items() if k in self.shadow}
        module.load_state_dict(self.shadow, strict=False)
        try:
            yield
        finally:
            module.load_state_dict(saved, strict=False)


def _optimizer(params: list[torch.nn.Parameter], lr: float, weight_decay: float) -> torch.optim.AdamW:
    # No decay on gains, biases, embeddings' scale parameters or γ: only on matrices.
    decay = [p for p in params if p.ndim >= 2]
    rest = [p for p in params if p.ndim < 2]
    groups = [{"params": decay, "weight_decay": weight_decay}, {"params": rest, "weight_decay": 0.0}]
    return torch.optim.AdamW([g for g in groups if g["params"]], lr=lr)


def _epoch_rng(cfg: TrainConfig, stage: int, epoch: int) -> tuple[np.random.Generator, torch.Generator]:
    seed = [cfg.seed, stage, epoch]
    gen = torch.Generator().manual_seed(int(np.random.SeedSequence(seed).generate_state(1)[0]))
    return np.random.default_rng(seed), gen


def _batches(n: int, batch_size: int, rng: np.random.Generator) -> list[np.ndarray]:
    order = rng.permutation(n)
    # A last batch of one image would give a noisy step; fold it into the previous batch.
    batches = [order[i:i + batch_size] for i in range(0, n, batch_size)]
    if len(batches) > 1 and len(batches[-1]) < max(2, batch_size // 4):
        batches[-2] = np.concatenate([batches[-2], batches.pop()])
    return batches


class Trainer:
    def __init__(self, cfg: TrainConfig, model: HPDVAL, loss_fn: torch.nn.Module, data: Prepared,
                 device: torch.device, run_dir: Path, log: Log, progress: bool):
        self.cfg, self.model, self.loss_fn, self.data = cfg, model, loss_fn, data
        self.device, self.run_dir, self.log, self.progress = device, run_dir, log, progress
        self.history: list[dict] = []
        self.best: dict = {"mAP": -math.inf, "stage": None, "epoch": None}
        self.before: dict | None = None
        self.state: dict = {"stage": 0, "epoch": 0}  # last completed (stage, epoch)
        self.timings: dict = {}
        self.train_targets = torch.from_numpy(data.targets[data.train_idx].astype(np.float32))

    # checkpoints
    def _save(self, stage: int, epoch: int, optimizer, scheduler, ema: EMA | None, summary: dict) -> bool:
        model_state = self.model.inference_state_dict()
        if ema is not None:  # the averaged student is the one validated and kept
            model_state.update({f"student.{k}": v for k, v in ema.shadow.items()})
        m = summary.get("mAP")
        score = -math.inf if m is None else m
        improved = score > self.best["mAP"] or self.best["stage"] is None
        if improved:
            self.best = {"mAP": score, "stage": stage, "epoch": epoch}
            runs.save_checkpoint(self.run_dir / runs.BEST, {"model": model_state, "stage": stage, "epoch": epoch,
                                                            "val": summary})
        self.state = {"stage": stage, "epoch": epoch}
        runs.save_checkpoint(self.run_dir / runs.LAST, {
            "model": model_state, "stage": stage, "epoch": epoch,
            "optimizer": optimizer.state_dict() if optimizer else None,
            "scheduler": scheduler.state_dict() if scheduler else None,
            "ema": ema.shadow if ema else None,
            "best": self.best, "history": self.history, "before": self.before,
        })
        return improved

    def restore(self, payload: dict) -> dict:
        load_model_state(self.model, payload["model"])
        self.best, self.history, self.before = payload["best"], payload["history"], payload["before"]
        self.state = {"stage": payload["stage"], "epoch": payload["epoch"]}
        return payload

    def _log_epoch(self, stage: int, epoch: int, total: int, loss: float, summary: dict, improved: bool,
                   seconds: float, images: int) -> None:
        def fmt(v):
            return "-" if v is None else f"{v:.1f}"
        self.log(f"stage {stage} epoch {epoch}/{total}: loss {loss:.4f}, val mAP {fmt(summary['mAP'])} "
                 f"(head {fmt(summary['mAP_head'])} / medium {fmt(summary['mAP_medium'])} / "
                 f"tail {fmt(summary['mAP_tail'])}), {images / max(seconds, 1e-9):.1f} img/s"
                 + (" *" if improved else ""))

    def _record(self, stage, epoch, loss, summary, seconds, images):
        row = {"stage": stage, "epoch": epoch, "loss": loss, "seconds": round(seconds, 3),
               "images_per_s": round(images / max(seconds, 1e-9), 2)}
        row.update({k: v for k, v in summary.items() if k != "ap"})
        self.history.append(row)

    # stage 1
    def stage1(self, resume: dict | None) -> None:
        cfg, model, device = self.cfg, self.model, self.device
        params = model.set_stage(1)
        if cfg.train_blocks > 0:
            params = self._last_blocks_only(cfg.train_blocks)
        optimizer = _optimizer(params, cfg.lr, cfg.weight_decay)
        steps_per_epoch = len(_batches(len(self.data.train_idx), cfg.batch_size, np.random.default_rng(0)))
        scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=max(1, cfg.epochs * steps_per_epoch))
        ema = EMA(model.student, cfg.ema) if cfg.ema > 0 else None
        start = 1
        if resume is not None and resume["stage"] == 1:
            optimizer.load_state_dict(resume["optimizer"])
            scheduler.load_state_dict(resume["scheduler"])
            if ema is not None and resume.get("ema"):
                ema.shadow = resume["ema"]
            start = resume["epoch"] + 1
        use_kd = cfg.kd and model.teacher is not None and cfg.kd_weight > 0
        for epoch in range(start, cfg.epochs + 1):
            rng, gen = _epoch_rng(cfg, 1, epoch)
            model.train()
            if model.teacher is not None:
                model.teacher.eval()
            started, total, count = time.perf_counter(), 0.0, 0
            batches = _batches(len(self.data.train_idx), cfg.batch_size, rng)
            bar = tqdm(batches, desc=f"stage 1 epoch {epoch}/{cfg.epochs}", unit="batch", leave=False,
                       disable=None if self.progress else True)
            for batch in bar:
                images = torch.from_numpy(self.data.cache.get(self.data.train_idx[batch]))
                loss = self.stage1_step(images, self.train_targets[batch], gen, optimizer, use_kd)
                scheduler.step()
                if ema is not None:
                    ema.update(model.student)
                total += loss * len(batch)
                count += len(batch)
                bar.set_postfix(loss=f"{total / count:.4f}")
            seconds = time.perf_counter() - started
            with ema.applied(model.student) if ema is not None else contextlib.nullcontext():
                summary, _ = evaluate(model, self.data, device, max(cfg.batch_size, 64))
            self._record(1, epoch, total / max(count, 1), summary, seconds, count)
            improved = self._save(1, epoch, optimizer, scheduler, ema, summary)
            self._log_epoch(1, epoch, cfg.epochs, total / max(count, 1), summary, improved, seconds, count)
        if ema is not None:  # stage 2 starts from the averaged student
            model.student.load_state_dict(ema.shadow, strict=False)

    def stage1_step(self, images: torch.Tensor, targets: torch.Tensor, gen: torch.Generator,
                    optimizer: torch.optim.Optimizer, use_kd: bool) -> float:
        """One stage 1 update on a uint8 [B, S, S, 3] batch; returns the loss."""
        cfg, model, device = self.cfg, self.model, self.device
        images, targets = images.to(device), targets.to(device)
        if cfg.augment:
            pixels = standardize(augment(images, gen), model.mean, model.std)
        else:
            pixels = normalize_pixels(images, model.mean, model.std)
        with _autocast(device):
            f_cls, f_patch, pooled = model.encode(pixels)
            logits = model.logits(f_cls, f_patch, model.text_hand, model.text_hand)
            loss = self.loss_fn(logits.float(), targets)
            if use_kd:
                with torch.no_grad():
                    _, _, teacher_pooled = model.encode(pixels, tower="teacher")
                loss = loss + cfg.kd_weight * (pooled.float() - teacher_pooled.float()).abs().mean()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        return float(loss.detach())

    def _last_blocks_only(self, n: int) -> list[torch.nn.Parameter]:
        student = self.model.student
        student.requires_grad_(False)
        blocks = student.transformer.resblocks
        keep = [*blocks[max(0, len(blocks) - n):].parameters(), *student.ln_post.parameters(), student.proj]
        for p in keep:
            p.requires_grad_(True)
        return [*keep, self.model.logit_scale]

    # stage 2
    def stage2(self, resume: dict | None) -> None:
        cfg, model, device = self.cfg, self.model, self.device
        start = resume["epoch"] + 1 if resume is not None and resume["stage"] == 2 else 1
        if start > cfg.stage2_epochs:
            return
        batch = max(cfg.batch_size, 64)
        self.log("stage 2: computing the frozen student's features once")
        started = time.perf_counter()
        train_features = extract_features(model, self.data.cache, self.data.train_idx, batch, device)
        val_features = extract_features(model, self.data.cache, self.data.val_idx, batch, device)
        n_photos, seconds = len(self.data.train_idx) + len(self.data.val_idx), time.perf_counter() - started
        self.timings["stage2_features_images_per_s"] = round(n_photos / max(seconds, 1e-9), 2)
        self.log(f"stage 2: features of {n_photos} photos in {seconds:.1f}s")
        params = model.set_stage(2)
        optimizer = _optimizer(params, cfg.stage2_lr, 0.0)
        steps_per_epoch = len(_batches(len(self.data.train_idx), cfg.batch_size, np.random.default_rng(0)))
        scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=max(1, cfg.stage2_epochs * steps_per_epoch))
        if start > 1:
            optimizer.load_state_dict(resume["optimizer"])
            scheduler.load_state_dict(resume["scheduler"])
        f_cls_all, f_patch_all = train_features
        use_sc = cfg.sc and cfg.sc_weight > 0
        for epoch in range(start, cfg.stage2_epochs + 1):
            rng, _ = _epoch_rng(cfg, 2, epoch)
            model.train()
            started, total, count = time.perf_counter(), 0.0, 0
            batches = _batches(len(self.data.train_idx), cfg.batch_size, rng)
            bar = tqdm(batches, desc=f"stage 2 epoch {epoch}/{cfg.stage2_epochs}", unit="batch", leave=False,
                       disable=None if self.progress else True)
            for idx in bar:
                targets = self.train_targets[idx].to(device)
                with _autocast(device):
                    P_G, P_L = model.text_features()
                    logits = model.logits(f_cls_all[idx].to(device), f_patch_all[idx].to(device), P_G, P_L)
                    loss = self.loss_fn(logits.float(), targets)
                    if use_sc:
                        loss = loss + cfg.sc_weight * model.consistency_loss(P_G, P_L, cfg.sc_branch)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                scheduler.step()
                total += float(loss.detach()) * len(idx)
                count += len(idx)
                bar.set_postfix(loss=f"{total / count:.4f}")
            seconds = time.perf_counter() - started
            summary, _ = evaluate(model, self.data, device, batch, features=val_features)
            self._record(2, epoch, total / max(count, 1), summary, seconds, count)
            improved = self._save(2, epoch, optimizer, scheduler, None, summary)
            self._log_epoch(2, epoch, cfg.stage2_epochs, total / max(count, 1), summary, improved, seconds, count)


def load_model_state(model: HPDVAL, state: dict) -> None:
    """Load a checkpoint saved without the teacher into a model that may have one."""
    missing, unexpected = model.load_state_dict(state, strict=False)
    missing = [k for k in missing if not k.startswith("teacher.")]
    if missing or unexpected:
        raise TrainError(None, f"checkpoint does not fit the model (missing {missing[:3]}, unexpected {unexpected[:3]})")


# -- the whole run ---------------------------------------------------------------------------------

def _run_config(cfg: TrainConfig, clip: LoadedClip, model: HPDVAL, name: str) -> dict:
    return {
        "format": runs.RUN_FORMAT,
        "name": name,
        "train": {**asdict(cfg), "stages": list(cfg.stages)},
        "model": {"clip_config": clip.config, "mean": list(clip.mean), "std": list(clip.std),
                  "preprocess": clip.preprocess.to_dict(), "alpha": model.alpha, "topk": model.topk,
                  "ctx_init": model.config.ctx_init},
    }


def _same_setup(saved: dict, cfg: TrainConfig) -> None:
    """--resume must continue the same experiment; only where and how fast it runs may change."""
    free = {"device", "workers", "out", "epochs", "stage2_epochs"}
    changed = [k for k, v in asdict(cfg).items() if k not in free and k in saved
               and (list(v) if isinstance(v, tuple) else v) != saved[k]]
    if changed:
        raise TrainError(None, f"--resume: these settings differ from the run's config.json: {', '.join(changed)}; "
                               "resume with the same settings or start a new --out")


RANDOM_INIT_LR = 2e-3  # a randomly initialised tower learns nothing in 20 epochs at the paper's 1e-5
PRETRAINED_LR = 1e-5


def resolve_defaults(cfg: TrainConfig, log: Log) -> TrainConfig:
    """Defaults that depend on whether the backbone has pretrained weights."""
    changes = {}
    if cfg.lr is None:
        changes["lr"] = PRETRAINED_LR if cfg.pretrained else RANDOM_INIT_LR
    if not cfg.pretrained and cfg.kd and 1 in cfg.stages:
        # A random tower knows nothing to distil; L_kd would only pin the student to noise.
        log("random init: no pretrained tower to distil from, L_kd off")
        changes["kd"] = False
    return replace(cfg, **changes) if changes else cfg


def train(cfg: TrainConfig, resume: bool = False, log: Log = print, progress: bool = True) -> TrainResult:
    """Run (or continue) training into `cfg.out` and return the final validation metrics."""
    started = time.perf_counter()
    _check_config(cfg)
    cfg = resolve_defaults(cfg, log)
    run_dir = Path(cfg.out)
    saved_config = saved_dataset = None
    if resume:
        if not runs.is_run(run_dir):
            raise TrainError(run_dir, "--resume: not a run folder (no config.json); start without --resume")
        saved_config = runs.read_json(run_dir / runs.CONFIG)
        _same_setup(saved_config["train"], cfg)
        saved_dataset = runs.read_json(run_dir / runs.DATASET)
    elif runs.is_run(run_dir):
        raise TrainError(run_dir, "already holds a training run: continue it with --resume, or choose another --out")
    run_dir.mkdir(parents=True, exist_ok=True)

    torch.manual_seed(cfg.seed)
    device = pick_device(cfg.device)
    log(f"backbone {cfg.backbone} ({cfg.pretrained or 'random init'}) on {device.type}"
        + (" with bf16 autocast" if device.type == "cuda" else ""))
    clip = load_clip(cfg.backbone, cfg.pretrained, device="cpu")
    data = prepare_data(cfg, clip, run_dir, log, progress, saved_dataset)
    train_counts = data.targets[data.train_idx].sum(axis=0)
    loss_fn = make_loss(cfg.loss, train_counts, len(data.train_idx)).to(device)
    torch.manual_seed(cfg.seed)
    model = HPDVAL(clip, data.labels, class_bias=loss_fn.class_bias.cpu(),
                   config=HPDVALConfig(alpha=cfg.alpha, topk=cfg.topk),
                   teacher=1 in cfg.stages and cfg.kd and cfg.kd_weight > 0).to(device)
    name = cfg.name or Path(cfg.labels).stem
    if saved_config is None:
        runs.write_json(run_dir / runs.CONFIG, _run_config(cfg, clip, model, name))
        runs.write_json(run_dir / runs.DATASET, data.dataset)

    trainer = Trainer(cfg, model, loss_fn, data, device, run_dir, log, progress)
    payload = None
    if resume and (run_dir / runs.LAST).is_file():
        payload = trainer.restore(runs.load_checkpoint(run_dir / runs.LAST))
        log(f"resuming after stage {payload['stage']} epoch {payload['epoch']}")
    if trainer.before is None:
        trainer.before, _ = evaluate(model, data, device, max(cfg.batch_size, 64))
        m = trainer.before["mAP"]
        log(f"before training: val mAP {'-' if m is None else f'{m:.1f}'}")

    stages = sorted(set(cfg.stages))
    for stage in stages:
        done = trainer.state["stage"]
        if done > stage:
            continue
        if stage == 2 and 1 in stages and (run_dir / runs.BEST).is_file() and done < 2:
            # Stage 2 tunes prompts for the student that validated best in stage 1.
            load_model_state(model, runs.load_checkpoint(run_dir / runs.BEST)["model"])
        resume_from = payload if payload is not None and payload["stage"] == stage else None
        if stage == 1 and cfg.epochs > 0:
            trainer.stage1(resume_from)
        elif stage == 2 and cfg.stage2_epochs > 0:
            trainer.stage2(resume_from)

    if not (run_dir / runs.BEST).is_file():  # no epoch ran (epochs 0): keep the model as it is
        runs.save_checkpoint(run_dir / runs.BEST, {"model": model.inference_state_dict(), "stage": 0,
                                                   "epoch": 0, "val": trainer.before})
    metrics = finish(cfg, model, data, trainer, device, run_dir, time.perf_counter() - started)
    for line in summary_lines(metrics):
        log(line)
    return TrainResult(run_dir, metrics, time.perf_counter() - started, trainer.history)


def finish(cfg: TrainConfig, model: HPDVAL, data: Prepared, trainer: Trainer, device: torch.device,
           run_dir: Path, elapsed: float) -> dict:
    """Reload the best checkpoint, calibrate thresholds on validation and write metrics.json."""
    best = runs.load_checkpoint(run_dir / runs.BEST)
    load_model_state(model, best["model"])
    summary, scores = evaluate(model, data, device, max(cfg.batch_size, 64))
    val_targets = data.targets[data.val_idx]
    thresholds, _ = calibrate_thresholds(scores, val_targets)
    f1 = f1_summary(scores, val_targets, thresholds)
    train_counts = data.targets[data.train_idx].sum(axis=0)
    val_counts = val_targets.sum(axis=0)
    tags = [{"tag": tag, "group": frequency_group(int(n)), "train_positives": int(n), "val_positives": int(v),
             "ap": ap, "f1": f, "threshold": round(float(t), 6)}
            for tag, n, v, ap, f, t in zip(data.labels, train_counts, val_counts, summary["ap"], f1["f1"], thresholds)]
    metrics = {
        "val": {k: summary[k] for k in ("mAP", "mAP_head", "mAP_medium", "mAP_tail")}
        | {"f1_macro": f1["f1_macro"], "f1_micro": f1["f1_micro"]},
        "before_training": {k: trainer.before[k] for k in ("mAP", "mAP_head", "mAP_medium", "mAP_tail")},
        "best": {"stage": best["stage"], "epoch": best["epoch"]},
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
    val, before = metrics["val"], metrics["before_training"]
    return [
        f"best: stage {metrics['best']['stage']} epoch {metrics['best']['epoch']}; validation mAP "
        f"{fmt(val['mAP'])} (head {fmt(val['mAP_head'])} / medium {fmt(val['mAP_medium'])} / "
        f"tail {fmt(val['mAP_tail'])}), before training {fmt(before['mAP'])}",
        f"F1 at calibrated thresholds: macro {fmt(val['f1_macro'])}, micro {fmt(val['f1_micro'])}",
    ]
