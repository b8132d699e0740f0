"""What a training run is asked to do: `TrainConfig`, its checks, and the defaults that depend on it.

One home for every training default: the `tagger train` command passes only the options a user gave,
so the values below are the ones that ship (their reasons are in docs/quality.md).
"""
from __future__ import annotations

import contextlib
import math
from dataclasses import asdict, dataclass, replace
from typing import Callable

import torch

from tagger.errors import TaggerError
from train.augment import CROP_AREA
from train.losses import LOSSES
from train.model import SCORE_NORMS
from train.q2l import HEADS

Log = Callable[[str], None]

DEVICES = ("auto", "cpu", "cuda")
RANDOM_INIT_LR = 2e-3  # a randomly initialised tower learns nothing in 20 epochs at the paper's 1e-5
PRETRAINED_LR = 1e-5  # the paper's and the official code's rate for CLIP ViT-B (width 768)
REFERENCE_WIDTH = 768
LR_RANGE = (1e-6, 3e-3)


def pretrained_lr(width: int) -> float:
    """Stage 1's rate for a pretrained tower of this width: the paper's 1e-5 at ViT-B's 768, scaled by
    (768 / width)². Narrow towers need far larger steps to move: the quality benchmark's width-64
    stand-in validated best between 1e-3 and 3e-3 (this gives 1.4e-3); ViT-L (1024) gets 5.6e-6."""
    lr = PRETRAINED_LR * (REFERENCE_WIDTH / max(width, 1)) ** 2
    return float(min(max(lr, LR_RANGE[0]), LR_RANGE[1]))


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
    epochs: int | None = None  # stage 1; None: from the number of training photos (`data_defaults`)
    stage2_epochs: int | None = None  # None: from the number of training photos
    batch_size: int | None = None  # None: 32 (the paper's), fewer for a few dozen photos
    lr: float | None = None  # stage 1 AdamW; None: `pretrained_lr(width)` scaled down for small data
    stage2_lr: float = 2e-3  # stage 2 AdamW on the contexts and the tag bias
    weight_decay: float = 1e-4  # paper: 1e-4
    seed: int = 0
    loss: str = "bce"  # one of train.losses.LOSSES
    score_norm: str = "center"  # per-photo normalisation of the scores: center | l2 | none (train.model)
    head: str = "q2l"  # + a Query2Label head's residual logit (train.q2l), trained in stage 1; "dual-view": none
    head_lr: float = 1e-3  # AdamW rate of the q2l head (a new module: it starts from zero, not from CLIP)
    alpha: float = 1.0  # global-view weight (paper 0.4; the local view lost on both benchmark tasks)
    topk: int | None = None  # local-view pooled patches; None: 16% of the patches
    kd: bool = True  # L_kd in stage 1
    kd_weight: float = 0.3  # paper 1: at 1 L_kd dominated stage 1 and the tower barely learned (docs/training.md)
    # L_sc in stage 2 (the paper's guard on the learned prompts): off. Over 10 paired seeds it cost task A
    # 0.4 mAP at 5 photos per tag and moved nothing else by more than 0.1 (docs/training.md).
    sc: bool = False
    sc_weight: float = 1.0
    sc_branch: str = "global"  # which learned prompts L_sc ties to P_H: global (paper) | local (code)
    wise_ft: bool = True  # after stage 1, also try the student mixed with the pretrained one (WiSE-FT)
    ema: float = 0.0  # EMA decay of the student in stage 1 (0: off; the official code uses 0.998)
    # After selection, train the picked recipe again on the training and validation photos together
    # (train.trainer.refit): task A +0.8 mAP, task B +0.4 on the quality benchmark (docs/training.md).
    refit: bool = True
    select_window: int = 2  # an epoch is selected on the mean validation mAP of it and the one before (1: its own)
    train_blocks: int = 0  # stage 1 trains only the last N transformer blocks (0: all)
    # The tower's last N blocks get a second copy that L_kd does not hold, the logits the mean of both
    # copies' (train.free_branch); None: picked from the tower (`tower_defaults`), 0: none.
    free_blocks: int | None = None
    augment: bool = True
    crop_area: float = CROP_AREA  # the smallest stage 1 crop, a fraction of the photo's area (train.augment)
    drop_empty: bool = False  # drop tags with no positive photo instead of stopping
    val_fraction: float = 0.2
    workers: int = 4  # decoding threads
    name: str | None = None  # model name; default: the labels file's stem


def check_config(cfg: TrainConfig) -> None:
    if cfg.loss not in LOSSES:
        raise TrainError(None, f"--loss must be one of {', '.join(LOSSES)}")
    if cfg.select_window not in (1, 2):
        raise TrainError(None, "--select-window must be 1 (each epoch on its own) or 2 (with the epoch before)")
    if cfg.score_norm not in SCORE_NORMS:
        raise TrainError(None, f"--score-norm must be one of {', '.join(SCORE_NORMS)}")
    if cfg.head not in HEADS:
        raise TrainError(None, f"--head must be one of {', '.join(HEADS)}")
    if not cfg.stages or any(s not in (1, 2) for s in cfg.stages):
        raise TrainError(None, "--stages must be 1,2 or 1 or 2")
    if cfg.sc_branch not in ("global", "local"):
        raise TrainError(None, "--sc-branch must be global or local")
    if not 0.0 <= cfg.alpha <= 1.0:
        raise TrainError(None, "--alpha must be between 0 and 1")
    if not 0.0 < cfg.crop_area <= 1.0:
        raise TrainError(None, "--crop-area must be above 0 and at most 1")
    if not 0.0 < cfg.val_fraction < 1.0:
        raise TrainError(None, "--val-fraction must be between 0 and 1")
    if (cfg.batch_size is not None and cfg.batch_size < 1) or (cfg.epochs or 0) < 0 or (cfg.stage2_epochs or 0) < 0:
        raise TrainError(None, "--batch-size must be positive and epochs not negative")
    if cfg.free_blocks is not None and cfg.free_blocks < 0:
        raise TrainError(None, "--free-blocks must be 0 (no free branch) or more")
    if cfg.device not in DEVICES:
        raise TrainError(None, f"--device must be {', '.join(DEVICES[:-1])} or {DEVICES[-1]}, not {cfg.device!r}")


def resolve_defaults(cfg: TrainConfig, log: Log) -> TrainConfig:
    """Defaults that depend on whether the backbone has pretrained weights."""
    changes = {}
    if not cfg.pretrained and cfg.kd and 1 in cfg.stages:
        # A random tower knows nothing to distil; L_kd would only pin the student to noise.
        log("random init: no pretrained tower to distil from, L_kd off")
        changes["kd"] = False
    if not cfg.pretrained and cfg.wise_ft:
        changes["wise_ft"] = False  # nothing worth keeping in a random tower
    return replace(cfg, **changes) if changes else cfg


BATCH_SIZE = 32  # the paper's
MIN_BATCH = 8
# Stage 1 epochs: the paper trains 20, its official code up to 50 (best epochs 20-38 in its logs);
# 40 gained about 1 mAP over 20 on both benchmark tasks. Every epoch is a candidate, so more cannot
# hand over a worse model on validation.
MIN_EPOCHS, MIN_STAGE2_EPOCHS = 40, 10
MIN_STEPS, MIN_STAGE2_STEPS = 150, 100  # so a few dozen photos still get enough updates
FULL_LR_PHOTOS = 500  # from this many training photos on, stage 1 runs at the backbone's full rate


def data_defaults(cfg: TrainConfig, n_train: int, width: int, log: Log) -> TrainConfig:
    """Batch size, epochs and the stage 1 rate that were left to the trainer, from the number of
    training photos and the tower's width, printed so a user sees what ran.

    Few photos get small batches and more epochs (a minimum number of updates), and a rate scaled
    down in proportion (n / 500): on the benchmark's 1-shot task the full rate made the tower forget
    what it knew (test mAP below zero-shot) while a tenth of it gained.
    """
    from train.stages import steps_per_epoch  # the batching rule lives with the loop

    changes = {}
    batch = cfg.batch_size or min(BATCH_SIZE, max(MIN_BATCH, n_train // 4))
    if cfg.batch_size is None:
        changes["batch_size"] = batch
    steps = steps_per_epoch(n_train, batch)
    if cfg.epochs is None:
        changes["epochs"] = max(MIN_EPOCHS, math.ceil(MIN_STEPS / steps))
    if cfg.stage2_epochs is None:
        changes["stage2_epochs"] = max(MIN_STAGE2_EPOCHS, math.ceil(MIN_STAGE2_STEPS / steps))
    if cfg.lr is None:
        changes["lr"] = (pretrained_lr(width) * min(1.0, n_train / FULL_LR_PHOTOS) if cfg.pretrained
                         else RANDOM_INIT_LR)
    if changes:
        log("picked for " + f"{n_train} training photos: " + ", ".join(
            f"{k.replace('_', ' ')} {v:.3g}" if isinstance(v, float) else f"{k.replace('_', ' ')} {v}"
            for k, v in changes.items()))
    return replace(cfg, **changes)


def distils(cfg: TrainConfig) -> bool:
    """Whether stage 1 runs with L_kd: it needs the teacher, and it is what the free branch is free of."""
    return cfg.kd and cfg.kd_weight > 0 and 1 in cfg.stages


FREE_SHARE = 1.0  # of the tower's blocks in the free branch, when left to the trainer (docs/training.md)


def tower_defaults(cfg: TrainConfig, layers: int) -> TrainConfig:
    """The free branch's size (train.free_branch) for a tower of `layers` blocks: FREE_SHARE of them,
    rounded up, where L_kd holds the tower in stage 1; none otherwise (without L_kd both copies would
    learn alike). A size given by the user is kept, if the tower has that many blocks."""
    if cfg.free_blocks is not None:
        if cfg.free_blocks > layers:
            raise TrainError(None, f"--free-blocks {cfg.free_blocks}: this tower has {layers} blocks")
        return cfg
    return replace(cfg, free_blocks=math.ceil(FREE_SHARE * layers) if distils(cfg) else 0)


# Settings --resume may change: where and how long it runs, not what it trains.
# The refit too: a resumed run puts the validated pick back first (runs.undo_refit) and refits, or not, at the end.
RESUMABLE = {"device", "workers", "out", "epochs", "stage2_epochs", "refit"}


def check_same_setup(saved: dict, cfg: TrainConfig) -> None:
    """--resume must continue the same experiment; only where and how fast it runs may change."""
    changed = [k for k, v in asdict(cfg).items() if k not in RESUMABLE and k in saved
               and (list(v) if isinstance(v, tuple) else v) != saved[k]]
    if changed:
        raise TrainError(None, f"--resume: these settings differ from the run's config.json: {', '.join(changed)}; "
                               "resume with the same settings or start a new --out")


def pick_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise TrainError(None, "--device cuda: no CUDA GPU is available to PyTorch (use --device cpu)")
    if name not in DEVICES:
        raise TrainError(None, f"--device must be auto, cpu or cuda, not {name!r}")
    return torch.device(name)


def autocast(device: torch.device):
    """bf16 autocast on CUDA (DESIGN.md §5); full precision on the CPU."""
    if device.type == "cuda":
        return torch.autocast(device_type="cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def precision(device: torch.device, exact: bool):
    """The arithmetic of a scoring pass. `exact`: float32 as the exported model computes it, for the
    scores thresholds are calibrated on and metrics.json reports (under bf16 a CUDA run's validation
    mAP was 0.1 off the exported model's, and its thresholds were cut on scores ONNX never gives).
    Otherwise the device's training precision, which is enough to rank checkpoints."""
    return _float32(device) if exact else autocast(device)


@contextlib.contextmanager
def _float32(device: torch.device):
    """No autocast (also inside a caller's), and no TF32 either: cuDNN allows it for convolutions (the
    patch embedding) by default."""
    if device.type != "cuda":
        yield
        return
    saved = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    try:
        with torch.autocast(device_type="cuda", enabled=False):
            yield
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved
