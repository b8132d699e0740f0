"""The two training stages of HP-DVAL and the checkpoints between them (DESIGN.md §6).

Stage 1 (dual-view alignment) fine-tunes the student tower against the hand-crafted prompts, with
L_kd pulling its CLS embedding toward the frozen teacher's, then tries the student mixed back toward
the pretrained tower (WiSE-FT). Stage 2 (hierarchical prompt tuning) freezes the student, computes
its features once, and learns the global and local contexts with L_sc. Every epoch, every mix and the
untrained model are candidates: validation mAP picks `best.pt`, so training never hands over a model
that validates worse than the one it started from.
"""
from __future__ import annotations

import contextlib
import math
import time
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from train import runs
from train.augment import AugmentConfig, augment
from train.config import Log, TrainConfig, TrainError, autocast
from train.distributed import Single
from train.evaluate import evaluate, extract_features
from train.free_branch import free_branch
from train.model import HPDVAL, normalize_pixels, standardize
from train.prepare import Prepared
from train.split import spread

WISE_FT_MIXES = (0.25, 0.5, 0.75)  # weight of the fine-tuned student; 0 and 1 are candidates already
BIAS_SAMPLE = 512  # training photos whose mean logit starts the tag bias (one inference pass)


def make_optimizer(params: list[torch.nn.Parameter], lr: float, weight_decay: float,
                   own_rates: dict[int, float] | None = None) -> torch.optim.AdamW:
    """AdamW at `lr`, except parameters whose id() is in own_rates (a new head trains faster than a
    pretrained tower). No decay on gains, biases, γ or the tag bias: only on matrices."""
    own_rates = own_rates or {}
    groups: dict[tuple[float, bool], list[torch.nn.Parameter]] = {}
    for p in params:
        groups.setdefault((own_rates.get(id(p), lr), p.ndim >= 2), []).append(p)
    # foreach: one kernel per step for all tensors instead of one per tensor; the same numbers bit for
    # bit, and the step about 1.4x faster on CPU, where torch would not choose it by itself.
    return torch.optim.AdamW([{"params": ps, "lr": rate, "weight_decay": weight_decay if decays else 0.0}
                              for (rate, decays), ps in groups.items()], lr=lr, foreach=True)


def epoch_rng(seed: int, stage: int, epoch: int) -> tuple[np.random.Generator, torch.Generator]:
    """The batch order and augmentation draws of one epoch, the same on every device and on resume."""
    key = [seed, stage, epoch]
    gen = torch.Generator().manual_seed(int(np.random.SeedSequence(key).generate_state(1)[0]))
    return np.random.default_rng(key), gen


def batches(n: int, batch_size: int, rng: np.random.Generator) -> list[np.ndarray]:
    """Shuffled index batches; a last batch under a quarter of the size joins the one before it
    (a batch of one photo gives a noisy step)."""
    order = rng.permutation(n)
    out = [order[i:i + batch_size] for i in range(0, n, batch_size)]
    if len(out) > 1 and len(out[-1]) < max(2, batch_size // 4):
        last = out.pop()
        out[-1] = np.concatenate([out[-1], last])
    return out


def steps_per_epoch(n: int, batch_size: int) -> int:
    return len(batches(n, batch_size, np.random.default_rng(0)))


def load_model_state(model: HPDVAL, state: dict) -> None:
    """Load a checkpoint saved without the teacher into a model that may have one."""
    missing, unexpected = model.load_state_dict(state, strict=False)
    missing = [k for k in missing if not k.startswith("teacher.")]
    if missing or unexpected:
        raise TrainError(None, f"checkpoint does not fit the model (missing {missing[:3]}, unexpected {unexpected[:3]})")


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


class Trainer:
    """Runs the stages on one model and dataset, validating and checkpointing every candidate."""

    def __init__(self, cfg: TrainConfig, model: HPDVAL, loss_fn: torch.nn.Module, data: Prepared,
                 device: torch.device, run_dir: Path, log: Log, progress: bool, dist: Single | None = None):
        self.cfg, self.model, self.loss_fn, self.data = cfg, model, loss_fn, data
        self.dist = dist or Single()  # under torchrun: this rank's share of each batch; rank 0 saves
        self.augment_config = AugmentConfig(scale=(cfg.crop_area, 1.0))
        self.stage1_forward = self.stage1_loss
        self.device, self.run_dir, self.log, self.progress = device, run_dir, log, progress
        self.history: list[dict] = []
        # The selected candidate: its selection score (`_trajectory_score`) and its own validation mAP.
        self.best: dict = {"score": -math.inf, "mAP": None, "stage": None, "epoch": None}
        self.before: dict | None = None
        self.stage2_from: dict | None = None  # the candidate stage 2 started from (what a refit retraces)
        self.state: dict = {"stage": 0, "epoch": 0}  # last completed (stage, epoch)
        self.timings: dict = {}
        self.train_targets = torch.from_numpy(data.targets[data.train_idx].astype(np.float32))
        # The starting weights of what stage 1 trains, for WiSE-FT (kept on the CPU): the pretrained
        # tower, and the q2l head at its start (zero residual).
        self.mixed = {"student": model.student} | ({"head": model.head} if model.head is not None else {})
        self.starts = {name: {k: v.detach().cpu().clone() for k, v in module.state_dict().items()}
                       for name, module in self.mixed.items()}

    # -- checkpoints -------------------------------------------------------------------------------
    def _consider(self, stage: int, epoch: int, summary: dict, model_state: dict, score: float | None = None,
                  **extra) -> bool:
        """Keep `model_state` as best.pt when its score (its validation mAP unless given) beats every
        candidate's so far."""
        m = summary.get("mAP")
        score = m if score is None else score
        score = -math.inf if score is None else score
        improved = score > self.best["score"] or self.best["stage"] is None
        if improved:
            self.best = {"score": score, "mAP": m, "stage": stage, "epoch": epoch, **extra}
            if self.dist.is_main:
                runs.save_checkpoint(self.run_dir / runs.BEST, {"model": model_state, "stage": stage, "epoch": epoch,
                                                                "val": summary, **extra})
        return improved

    def start(self) -> None:
        """Start the tag bias at the tags' priors, then validate the untrained model: the first
        candidate for best.pt (stage 0)."""
        self.init_tag_bias()
        self.before, _ = evaluate(self.model, self.data, self.device, self._eval_batch())
        self._consider(0, 0, self.before, self.model.inference_state_dict())

    @torch.no_grad()
    def init_tag_bias(self, max_photos: int = BIAS_SAMPLE) -> None:
        """`HPDVAL.init_tag_bias` with each tag's mean logit over (up to max_photos) training photos."""
        model, train_idx = self.model, self.data.train_idx
        counts = self.data.targets[train_idx].sum(axis=0)
        sample = train_idx[spread(len(train_idx), max_photos)]
        f_cls, f_patch = extract_features(model, self.data.cache, np.unique(sample), self._eval_batch(), self.device)
        P_G, P_L = model.text_features()
        total = torch.zeros(len(model.labels), device=self.device)
        for start in range(0, len(f_cls), 256):
            z = model.logits(f_cls[start:start + 256].to(self.device), f_patch[start:start + 256].to(self.device),
                             P_G, P_L) - model.tag_bias
            total += z.sum(dim=0)
        model.init_tag_bias(counts, len(train_idx), total / max(len(f_cls), 1))

    def _save(self, stage: int, epoch: int, optimizer, scheduler, ema: EMA | None, summary: dict) -> bool:
        model_state = self.model.inference_state_dict()
        if ema is not None:  # the averaged student is the one validated and kept
            model_state.update({f"student.{k}": v for k, v in ema.shadow.items()})
        improved = self._consider(stage, epoch, summary, model_state, score=self._trajectory_score(stage, epoch, summary))
        self.state = {"stage": stage, "epoch": epoch}
        if not self.dist.is_main:
            return improved
        runs.save_checkpoint(self.run_dir / runs.LAST, {
            "model": model_state, "stage": stage, "epoch": epoch,
            "optimizer": optimizer.state_dict() if optimizer else None,
            "scheduler": scheduler.state_dict() if scheduler else None,
            "ema": ema.shadow if ema else None,
            "best": self.best, "history": self.history, "before": self.before, "stage2_from": self.stage2_from,
        })
        return improved

    def _trajectory_score(self, stage: int, epoch: int, summary: dict) -> float | None:
        """An epoch's selection score: with `select_window` 2, the mean validation mAP of it and the epoch
        before it in its stage (before the first: the model the stage started from); with 1, its own.

        With 2 to 4 validation photos for a rare tag, one epoch's mAP jumps by several points on noise
        alone; consecutive epochs are nearly the same model, so a real optimum shows in its neighbours and
        a lucky draw does not. A run on a task A variant picked stage 1 epoch 4 of 40 on a one-epoch spike
        (49.2 between 43.6 and 44.2) and tested 5 points below its other seeds (docs/training.md, "Selection").
        """
        m = summary.get("mAP")
        if m is None or self.cfg.select_window <= 1:
            return m
        done = {r["epoch"]: r["mAP"] for r in self.history
                if r["stage"] == stage and isinstance(r["epoch"], int) and "wise_ft" not in r and r["mAP"] is not None}
        # Before a stage's first epoch: the model it started from (stage 2 starts from the best so far).
        before = done.get(epoch - 1, self.before["mAP"] if stage == 1 else self.best["mAP"])
        return m if before is None else (before + m) / 2

    def restore(self, payload: dict) -> dict:
        load_model_state(self.model, payload["model"])
        self.best, self.history, self.before = payload["best"], payload["history"], payload["before"]
        self.stage2_from = payload.get("stage2_from")
        self.best.setdefault("score", self.best["mAP"])  # a run from before selection had a score of its own
        self.state = {"stage": payload["stage"], "epoch": payload["epoch"]}
        return payload

    def _eval_batch(self) -> int:
        return max(self.cfg.batch_size, 64)

    def _log_epoch(self, stage: int, epoch, total: int, loss: float | None, summary: dict, improved: bool,
                   seconds: float, images: int) -> None:
        def fmt(v):
            return "-" if v is None else f"{v:.1f}"
        what = f"stage {stage} epoch {epoch}/{total}: loss {loss:.4f}" if loss is not None else f"stage {stage} {epoch}:"
        self.log(f"{what}, val mAP {fmt(summary['mAP'])} "
                 f"(head {fmt(summary['mAP_head'])} / medium {fmt(summary['mAP_medium'])} / "
                 f"tail {fmt(summary['mAP_tail'])})"
                 + (f", {images / max(seconds, 1e-9):.1f} img/s" if images else "")
                 + (" *" if improved else ""))

    def _record(self, stage, epoch, loss, summary, seconds, images, **extra):
        row = {"stage": stage, "epoch": epoch, "loss": loss, "seconds": round(seconds, 3),
               "images_per_s": round(images / max(seconds, 1e-9), 2), **extra}
        row.update({k: v for k, v in summary.items() if k != "ap"})
        self.history.append(row)

    # -- stage 1 -------------------------------------------------------------------------------------
    def stage1(self, resume: dict | None) -> None:
        cfg, model, device = self.cfg, self.model, self.device
        optimizer, scheduler, ema, use_kd = self._stage1_setup()
        start = 1
        if resume is not None and resume["stage"] == 1:
            optimizer.load_state_dict(resume["optimizer"])
            scheduler.load_state_dict(resume["scheduler"])
            if ema is not None and resume.get("ema"):
                ema.shadow = resume["ema"]
            start = resume["epoch"] + 1
        for epoch in range(start, cfg.epochs + 1):
            loss, count, seconds = self._stage1_epoch(epoch, optimizer, scheduler, ema, use_kd)
            with ema.applied(model.student) if ema is not None else contextlib.nullcontext():
                summary, _ = evaluate(model, self.data, device, self._eval_batch())
            self._record(1, epoch, loss, summary, seconds, count)
            improved = self._save(1, epoch, optimizer, scheduler, ema, summary)
            self._log_epoch(1, epoch, cfg.epochs, loss, summary, improved, seconds, count)
        if ema is not None:  # stage 2 and the mixes start from the averaged student
            model.student.load_state_dict(ema.shadow, strict=False)
        if cfg.wise_ft and cfg.epochs > 0:
            self.wise_ft()

    def _stage1_setup(self):
        """(optimizer, scheduler, EMA or None, whether L_kd is on) for stage 1, its parameters unfrozen."""
        cfg, model = self.cfg, self.model
        params = model.set_stage(1)
        if cfg.train_blocks > 0:
            params = self._last_blocks_only(cfg.train_blocks)
        head = [p for h in model.heads() if h is not None for p in h.parameters()]
        optimizer = make_optimizer(params, cfg.lr, cfg.weight_decay, {id(p): cfg.head_lr for p in head})
        total_steps = cfg.epochs * steps_per_epoch(len(self.data.train_idx), cfg.batch_size)
        scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=max(1, total_steps))
        ema = EMA(model.student, cfg.ema) if cfg.ema > 0 else None
        use_kd = cfg.kd and model.teacher is not None and cfg.kd_weight > 0
        self.stage1_forward = self.dist.wrap(model, self.stage1_loss)
        return optimizer, scheduler, ema, use_kd

    def _stage1_epoch(self, epoch: int, optimizer, scheduler, ema: EMA | None, use_kd: bool) -> tuple[float, int, float]:
        """One pass over the training photos; returns (mean loss, photos, seconds)."""
        cfg, model = self.cfg, self.model
        rng, gen = epoch_rng(cfg.seed, 1, epoch)
        model.train()
        if model.teacher is not None:
            model.teacher.eval()
        started, total, count = time.perf_counter(), 0.0, 0
        bar = tqdm(batches(len(self.data.train_idx), cfg.batch_size, rng), desc=f"stage 1 epoch {epoch}/{cfg.epochs}",
                   unit="batch", leave=False, disable=None if self.progress else True)
        for batch in bar:
            mine, offset = self.dist.shard(batch)  # all of it in one process
            images = torch.from_numpy(self.data.cache.get(self.data.train_idx[mine]))
            loss = self.stage1_step(images, self.train_targets[mine], gen, optimizer, use_kd,
                                    part=(offset, len(batch)))
            scheduler.step()
            if ema is not None:
                ema.update(model.student)
            total += loss * len(mine)
            count += len(mine)
            bar.set_postfix(loss=f"{total / count:.4f}")
        total, count = self.dist.sum(total), int(self.dist.sum(count))
        return total / max(count, 1), count, time.perf_counter() - started

    def stage1_loss(self, pixels: torch.Tensor, targets: torch.Tensor, use_kd: bool) -> dict[str, torch.Tensor]:
        """The stage 1 loss terms on normalized pixels: L_cls against P_H in both views, and L_kd."""
        model = self.model
        f_cls, f_patch, pooled = model.encode(pixels)
        # One loss per branch (train.free_branch), not one on their mean: each branch learns to tag on its
        # own, and L_kd holds only the first, so the two stay different and their mean gains from both.
        held, *free = model.branch_logits(f_cls, f_patch, model.text_hand, model.text_hand)
        terms = {"cls": self.loss_fn(held.float(), targets)}
        if free:
            terms["cls_free"] = self.loss_fn(free[0].float(), targets)
        if use_kd:
            with torch.no_grad():
                _, _, teacher_pooled = model.encode(pixels, tower="teacher")
            terms["kd"] = self.cfg.kd_weight * (pooled.float() - teacher_pooled.float()).abs().mean()
        return terms

    def stage1_step(self, images: torch.Tensor, targets: torch.Tensor, gen: torch.Generator,
                    optimizer: torch.optim.Optimizer, use_kd: bool, part: tuple[int, int] | None = None) -> float:
        """One stage 1 update on a uint8 [B, S, S, 3] batch; returns the loss. Under torchrun the
        batch is rows `part` = (offset, total) of the global batch."""
        cfg, model, device = self.cfg, self.model, self.device
        images, targets = images.to(device), targets.to(device)
        if cfg.augment:
            pixels = standardize(augment(images, gen, self.augment_config, part=part), model.mean, model.std)
        else:
            pixels = normalize_pixels(images, model.mean, model.std)
        with autocast(device):
            loss = sum(self.stage1_forward(pixels, targets, use_kd).values())
        optimizer.zero_grad(set_to_none=True)
        weight = self.dist.loss_weight(len(images), part[1]) if part is not None else 1.0
        (loss * weight if weight != 1.0 else loss).backward()
        optimizer.step()
        return float(loss.detach())

    def _last_blocks_only(self, n: int) -> list[torch.nn.Parameter]:
        student = self.model.student
        student.requires_grad_(False)
        blocks = student.transformer.resblocks
        branch = free_branch(student)  # its copies of the last blocks and its head train too
        keep = [*blocks[max(0, len(blocks) - n):].parameters(), *student.ln_post.parameters(), student.proj,
                *(branch.parameters() if branch is not None else ())]
        for p in keep:
            p.requires_grad_(True)
        head = [] if self.model.head is None else list(self.model.head.parameters())  # still trainable
        return [*keep, self.model.logit_scale, self.model.tag_bias, *head]

    @torch.no_grad()
    def wise_ft(self) -> None:
        """WiSE-FT (Wortsman et al. 2022): θ = (1 − w)·θ_pretrained + w·θ_fine-tuned, each w a candidate.

        Mixing keeps what the pretrained tower knew about tags the few training photos say little
        about; validation picks w (w = 0 is the untrained candidate, w = 1 the last epoch). The
        student is left at the fine-tuned weights; stage 2 starts from best.pt. A q2l head mixes toward
        its start (a zero residual) with the same w.
        """
        tuned = self._tuned()
        try:
            for w in WISE_FT_MIXES:
                self._load_mix(tuned, w)
                started = time.perf_counter()
                summary, _ = evaluate(self.model, self.data, self.device, self._eval_batch())
                improved = self._consider(1, self.cfg.epochs, summary, self.model.inference_state_dict(), wise_ft=w)
                self._record(1, self.cfg.epochs, None, summary, time.perf_counter() - started, 0, wise_ft=w)
                self._log_epoch(1, f"WiSE-FT mix {w:g}", self.cfg.epochs, None, summary, improved, 0.0, 0)
        finally:
            for name, module in self.mixed.items():
                module.load_state_dict(tuned[name])

    def _tuned(self) -> dict[str, dict[str, torch.Tensor]]:
        """A copy of the weights stage 1 trained (the tower, and the head if any)."""
        return {name: {k: v.detach().clone() for k, v in module.state_dict().items()} for name, module in self.mixed.items()}

    @torch.no_grad()
    def _load_mix(self, tuned: dict[str, dict[str, torch.Tensor]], w: float) -> None:
        """θ = (1 − w)·θ_start + w·θ_tuned into the trained modules."""
        for name, module in self.mixed.items():
            module.load_state_dict({k: torch.lerp(self.starts[name][k].to(v.device, v.dtype), v, w)
                                    if v.is_floating_point() else v for k, v in tuned[name].items()})

    # -- stage 2 -------------------------------------------------------------------------------------
    def stage2(self, resume: dict | None) -> None:
        cfg, model, device = self.cfg, self.model, self.device
        start = resume["epoch"] + 1 if resume is not None and resume["stage"] == 2 else 1
        if start > cfg.stage2_epochs:
            return
        batch = self._eval_batch()
        self.log("stage 2: computing the frozen student's features once")
        started = time.perf_counter()
        train_features = extract_features(model, self.data.cache, self.data.train_idx, batch, device)
        val_features = extract_features(model, self.data.cache, self.data.val_idx, batch, device)
        n_photos, seconds = len(self.data.train_idx) + len(self.data.val_idx), time.perf_counter() - started
        self.timings["stage2_features_images_per_s"] = round(n_photos / max(seconds, 1e-9), 2)
        self.log(f"stage 2: features of {n_photos} photos in {seconds:.1f}s")
        optimizer, scheduler = self._stage2_setup()
        if start > 1:
            optimizer.load_state_dict(resume["optimizer"])
            scheduler.load_state_dict(resume["scheduler"])
        for epoch in range(start, cfg.stage2_epochs + 1):
            loss, count, seconds = self._stage2_epoch(epoch, optimizer, scheduler, train_features)
            summary, _ = evaluate(model, self.data, device, batch, features=val_features)
            self._record(2, epoch, loss, summary, seconds, count)
            improved = self._save(2, epoch, optimizer, scheduler, None, summary)
            self._log_epoch(2, epoch, cfg.stage2_epochs, loss, summary, improved, seconds, count)

    def _stage2_setup(self):
        """(optimizer, scheduler) for stage 2, the prompt contexts and the tag bias unfrozen."""
        params = self.model.set_stage(2)
        optimizer = make_optimizer(params, self.cfg.stage2_lr, 0.0)
        total_steps = self.cfg.stage2_epochs * steps_per_epoch(len(self.data.train_idx), self.cfg.batch_size)
        return optimizer, torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=max(1, total_steps))

    def _stage2_epoch(self, epoch: int, optimizer, scheduler, train_features) -> tuple[float, int, float]:
        """One pass over the training photos' cached features; returns (mean loss, photos, seconds)."""
        cfg, model, device = self.cfg, self.model, self.device
        f_cls_all, f_patch_all = train_features
        rng, _ = epoch_rng(cfg.seed, 2, epoch)
        model.train()
        started, total, count = time.perf_counter(), 0.0, 0
        bar = tqdm(batches(len(self.data.train_idx), cfg.batch_size, rng), desc=f"stage 2 epoch {epoch}/{cfg.stage2_epochs}",
                   unit="batch", leave=False, disable=None if self.progress else True)
        for idx in bar:
            targets = self.train_targets[idx].to(device)
            with autocast(device):
                loss = sum(self.stage2_loss(f_cls_all[idx].to(device), f_patch_all[idx].to(device), targets).values())
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            scheduler.step()
            total += float(loss.detach()) * len(idx)
            count += len(idx)
            bar.set_postfix(loss=f"{total / count:.4f}")
        return total / max(count, 1), count, time.perf_counter() - started

    def stage2_loss(self, f_cls: torch.Tensor, f_patch: torch.Tensor, targets: torch.Tensor) -> dict[str, torch.Tensor]:
        """The stage 2 loss terms on cached features: L_cls with the learned prompts (P_G global, P_L
        local), and L_sc tying the configured branch to the hand-crafted prompts."""
        cfg, model = self.cfg, self.model
        P_G, P_L = model.text_features()
        terms = {"cls": self.loss_fn(model.logits(f_cls, f_patch, P_G, P_L).float(), targets)}
        if cfg.sc and cfg.sc_weight > 0:
            terms["sc"] = cfg.sc_weight * model.consistency_loss(P_G, P_L, cfg.sc_branch)
        return terms

    # -- replay ----------------------------------------------------------------------------------------
    def replay_stage1(self, pick: dict, stage2_from: dict | None) -> None:
        """Train a picked candidate's recipe again, validating nothing (the refit on every labelled photo,
        train.trainer), first part: stage 1 up to the picked epoch (every epoch and then the mix, for a
        WiSE-FT pick); for a stage 2 pick, the candidate stage 2 started from. The schedules are the
        validated run's: the same epochs, rates and cosine decay. Under torchrun every rank runs it."""
        first = stage2_from if pick["stage"] == 2 else pick
        if first is None or first["stage"] != 1:
            return
        optimizer, scheduler, ema, use_kd = self._stage1_setup()
        last = self.cfg.epochs if "wise_ft" in first else first["epoch"]
        for epoch in range(1, last + 1):
            loss, count, seconds = self._stage1_epoch(epoch, optimizer, scheduler, ema, use_kd)
            self.log(f"refit stage 1 epoch {epoch}/{last}: loss {loss:.4f}, {count / max(seconds, 1e-9):.1f} img/s")
        if ema is not None:
            self.model.student.load_state_dict(ema.shadow, strict=False)
        if "wise_ft" in first:
            self._load_mix(self._tuned(), first["wise_ft"])

    def replay_stage2(self, pick: dict) -> None:
        """The second part of a replay, on one process: stage 2 up to the picked epoch, for a stage 2 pick."""
        if pick["stage"] != 2:
            return
        features = extract_features(self.model, self.data.cache, self.data.train_idx, self._eval_batch(), self.device)
        optimizer, scheduler = self._stage2_setup()
        for epoch in range(1, pick["epoch"] + 1):
            loss, _, _ = self._stage2_epoch(epoch, optimizer, scheduler, features)
            self.log(f"refit stage 2 epoch {epoch}/{pick['epoch']}: loss {loss:.4f}")
