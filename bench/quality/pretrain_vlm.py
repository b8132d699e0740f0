"""A stand-in for a web-pretrained CLIP: a tiny open_clip model trained contrastively on captioned scenes.

No real weights can be downloaded here, so the benchmark makes its own vision-language model: a
balanced corpus of generated scenes (every object kind equally often, 1-3 objects each) with
web-like captions naming the objects, their colours, sizes and positions, and a CLIP loss. The
checkpoint is an ordinary open_clip state dict: `tagger train --backbone bench/quality/vlm.json
--pretrained CHECKPOINT` fine-tunes it like any other.

    python -m bench.quality.pretrain_vlm [--quick] [--force]

Everything is seeded; the checkpoint and the corpus are cached under .cache/quality/ keyed by the
settings, so a second call returns at once.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F

from bench.quality import world
from tagger.images import Preprocess, resize_image
from train.backbone import load_clip
from train.metrics import per_tag_ap
from train.model import normalize_pixels
from train.prompts import TextEncoder, prompt_text

HERE = Path(__file__).resolve().parent
VLM_CONFIG = HERE / "vlm.json"
CACHE_ROOT = HERE.parents[1] / ".cache" / "quality"
WORLD_VERSION = 1  # bump when world.py draws or captions differently: invalidates cached corpora

Log = Callable[[str], None]


@dataclass
class PretrainConfig:
    n_scenes: int = 40000  # captioned scenes in the (balanced) corpus
    max_objects: int = 3  # objects per scene: 1..max_objects, kinds drawn uniformly
    epochs: int = 5
    batch_size: int = 64  # small batches: more steps per second of CPU, and CPU caches fit them
    lr: float = 2e-3  # AdamW, from random init
    weight_decay: float = 0.1
    warmup_steps: int = 100
    seed: int = 0
    n_heldout: int = 1000  # held-out scenes for the zero-shot check
    backbone: str = str(VLM_CONFIG)

    def key(self) -> str:
        spec = asdict(self) | {"world": WORLD_VERSION, "config": json.loads(Path(self.backbone).read_text())}
        spec.pop("backbone")
        return hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()[:12]


QUICK = PretrainConfig(n_scenes=12000, epochs=4, n_heldout=400)


@dataclass
class Corpus:
    pixels: np.ndarray  # uint8 [N, S, S, 3]
    captions: list[str]
    targets: np.ndarray  # uint8 [N, C] kinds present, C = len(world.KINDS)


def generate_corpus(n: int, seed: int, size: int, max_objects: int = 3,
                    style: world.SceneStyle = world.PRETRAIN_STYLE, min_objects: int = 1) -> Corpus:
    """n balanced scenes: every kind equally likely, min..max distinct kinds per scene."""
    rng = np.random.default_rng(seed)
    kinds = list(world.KINDS)
    spec = Preprocess(size=size)
    pixels = np.zeros((n, size, size, 3), np.uint8)
    targets = np.zeros((n, len(kinds)), np.uint8)
    captions = []
    for i in range(n):
        count = int(rng.integers(min_objects, max_objects + 1))
        chosen = [kinds[j] for j in rng.choice(len(kinds), size=count, replace=False)]
        scene = world.sample_scene(chosen, rng, style)
        pixels[i] = resize_image(world.render(scene, style), spec)
        captions.append(world.caption(scene, rng))
        targets[i, [kinds.index(k) for k in chosen]] = 1
    return Corpus(pixels, captions, targets)


def _cached_corpus(path: Path, n: int, seed: int, size: int, max_objects: int, log: Log,
                   style: world.SceneStyle = world.PRETRAIN_STYLE) -> Corpus:
    if path.with_suffix(".npy").is_file() and path.with_suffix(".json").is_file():
        meta = json.loads(path.with_suffix(".json").read_text())
        return Corpus(np.load(path.with_suffix(".npy"), mmap_mode="r"), meta["captions"],
                      np.array(meta["targets"], np.uint8))
    started = time.perf_counter()
    corpus = generate_corpus(n, seed, size, max_objects, style)
    path.parent.mkdir(parents=True, exist_ok=True)
    np.save(path.with_suffix(".npy"), corpus.pixels)
    path.with_suffix(".json").write_text(json.dumps({"captions": corpus.captions,
                                                     "targets": corpus.targets.tolist()}))
    log(f"generated {n} captioned scenes in {time.perf_counter() - started:.0f}s")
    return corpus


def clip_loss(image_features: torch.Tensor, text_features: torch.Tensor, logit_scale: torch.Tensor) -> torch.Tensor:
    scale = logit_scale.exp().clamp(max=100)
    logits = scale * F.normalize(image_features, dim=-1) @ F.normalize(text_features, dim=-1).t()
    labels = torch.arange(len(logits))
    return (F.cross_entropy(logits, labels) + F.cross_entropy(logits.t(), labels)) / 2


def encode_captions(clip, text: TextEncoder, token_ids: torch.Tensor) -> torch.Tensor:
    # TextEncoder stops at the longest caption's EOT: ~4x less text work than the full 77 tokens.
    return text(clip.model.token_embedding(token_ids), token_ids)


def pretrain(cfg: PretrainConfig, out_dir: Path, log: Log = print, cache_root: Path = CACHE_ROOT) -> Path:
    """Train the stand-in VLM into out_dir/vlm.pt (open_clip state dict) and return its path."""
    out_dir.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(cfg.seed)
    clip = load_clip(cfg.backbone, None)
    model = clip.model.train()
    size = clip.preprocess.size
    corpus = _cached_corpus(cache_root / f"corpus-{size}-{cfg.n_scenes}-{cfg.seed}-{cfg.max_objects}-w{WORLD_VERSION}",
                            cfg.n_scenes, cfg.seed, size, cfg.max_objects, log)
    token_ids = clip.tokenizer(corpus.captions)
    text = TextEncoder(model)
    decay = [p for p in model.parameters() if p.ndim >= 2]
    rest = [p for p in model.parameters() if p.ndim < 2]
    optimizer = torch.optim.AdamW([{"params": decay, "weight_decay": cfg.weight_decay},
                                   {"params": rest, "weight_decay": 0.0}], lr=cfg.lr, betas=(0.9, 0.98))
    steps_per_epoch = cfg.n_scenes // cfg.batch_size
    total = max(1, steps_per_epoch * cfg.epochs)

    def schedule(step: int) -> float:
        if step < cfg.warmup_steps:
            return (step + 1) / cfg.warmup_steps
        return 0.5 * (1 + math.cos(math.pi * (step - cfg.warmup_steps) / max(1, total - cfg.warmup_steps)))

    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, schedule)
    rng = np.random.default_rng(cfg.seed)
    started = time.perf_counter()
    step = 0
    for epoch in range(1, cfg.epochs + 1):
        order = rng.permutation(cfg.n_scenes)
        running = 0.0
        for b in range(steps_per_epoch):
            idx = np.sort(order[b * cfg.batch_size:(b + 1) * cfg.batch_size])
            pixels = normalize_pixels(torch.from_numpy(np.ascontiguousarray(corpus.pixels[idx])), clip.mean, clip.std)
            loss = clip_loss(model.encode_image(pixels), encode_captions(clip, text, token_ids[idx]),
                             model.logit_scale)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            scheduler.step()
            running += float(loss.detach())
            step += 1
        log(f"pretraining epoch {epoch}/{cfg.epochs}: contrastive loss {running / max(1, steps_per_epoch):.3f} "
            f"({time.perf_counter() - started:.0f}s)")
    path = out_dir / "vlm.pt"
    torch.save(model.state_dict(), path)
    return path


@torch.no_grad()
def zero_shot_scores(clip, pixels: np.ndarray, tags: list[str], batch_size: int = 256,
                     device: str | torch.device = "cpu") -> np.ndarray:
    """CLIP zero-shot: cosine of each image to "a photo of a {tag}." (the global view only)."""
    model = clip.model.eval().to(device)
    text = F.normalize(model.encode_text(clip.tokenizer([prompt_text(t) for t in tags]).to(device)).float(), dim=-1)
    out = []
    for start in range(0, len(pixels), batch_size):
        chunk = torch.from_numpy(np.ascontiguousarray(pixels[start:start + batch_size])).to(device)
        image = F.normalize(model.encode_image(normalize_pixels(chunk, clip.mean, clip.std)).float(), dim=-1)
        out.append((image @ text.t()).cpu().numpy())
    return np.concatenate(out) if out else np.zeros((0, len(tags)), np.float32)


def clip_softmax(cosines: np.ndarray, clip) -> np.ndarray:
    """CLIP's zero-shot protocol for multi-label (as LMPT evaluates it): softmax over the tags of the
    cosines times CLIP's learned logit scale. It removes each image's offset, which raw cosines keep."""
    scale = float(clip.model.logit_scale.detach().exp().clamp(max=100))
    return torch.softmax(torch.from_numpy(cosines).float() * scale, dim=-1).numpy()


def zero_shot_check(checkpoint: Path, cfg: PretrainConfig, log: Log = print) -> dict:
    """Zero-shot tagging mAP on held-out scenes, against chance (a random ranking's AP = prevalence).

    Two held-out sets: scenes like the pretraining corpus, and scenes in the downstream photos' style
    (smaller objects, clutter): the gap between them is the domain shift fine-tuning has to close.
    """
    clip = load_clip(cfg.backbone, str(checkpoint))
    tags = list(world.KINDS)
    out = {}
    for name, style, lo, hi in (("pretraining style", world.PRETRAIN_STYLE, 1, cfg.max_objects),
                                ("photo style", world.PHOTO_STYLE, 2, 5)):
        corpus = generate_corpus(cfg.n_heldout, cfg.seed + 10_000 + len(out), clip.preprocess.size,
                                 max_objects=hi, style=style, min_objects=lo)
        cosines = zero_shot_scores(clip, corpus.pixels, tags)
        aps = per_tag_ap(clip_softmax(cosines, clip), corpus.targets)
        chance = corpus.targets.mean(axis=0)
        top1 = float(np.mean(corpus.targets[np.arange(len(cosines)), cosines.argmax(axis=1)]))
        out[name] = {"images": cfg.n_heldout, "mAP": round(100 * float(np.nanmean(aps)), 2),
                     "mAP_cosine": round(100 * float(np.nanmean(per_tag_ap(cosines, corpus.targets))), 2),
                     "chance_mAP": round(100 * float(chance.mean()), 2),
                     "top1_precision": round(100 * top1, 2),
                     "chance_top1": round(100 * float(corpus.targets.sum(axis=1).mean() / len(tags)), 2),
                     "ap": {t: round(100 * float(a), 2) for t, a in zip(tags, aps)}}
        log(f"zero-shot on held-out {name} scenes: mAP {out[name]['mAP']:.1f} (raw cosine "
            f"{out[name]['mAP_cosine']:.1f}; chance {out[name]['chance_mAP']:.1f}), top-1 precision "
            f"{out[name]['top1_precision']:.1f} (chance {out[name]['chance_top1']:.1f})")
    return out


def ensure_vlm(cfg: PretrainConfig, log: Log = print, force: bool = False,
               cache_root: Path = CACHE_ROOT) -> tuple[Path, dict]:
    """The cached checkpoint for these settings (pretrained now if missing) and its summary."""
    out_dir = cache_root / f"vlm-{cfg.key()}"
    summary_path = out_dir / "summary.json"
    if not force and summary_path.is_file() and (out_dir / "vlm.pt").is_file():
        return out_dir / "vlm.pt", json.loads(summary_path.read_text())
    started = time.perf_counter()
    checkpoint = pretrain(cfg, out_dir, log, cache_root)
    seconds = time.perf_counter() - started
    summary = {"config": asdict(cfg), "pretrain_s": round(seconds, 1),
               "zero_shot": zero_shot_check(checkpoint, cfg, log)}
    summary_path.write_text(json.dumps(summary, indent=2))
    return checkpoint, summary


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.quality.pretrain_vlm", description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="a small corpus and few epochs (minutes)")
    parser.add_argument("--force", action="store_true", help="pretrain again even if cached")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    checkpoint, summary = ensure_vlm(QUICK if args.quick else PretrainConfig(), force=args.force)
    print(f"checkpoint: {checkpoint}")
    brief = {k: {kk: vv for kk, vv in v.items() if kk != "ap"} for k, v in summary["zero_shot"].items()}
    print(json.dumps(brief, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
