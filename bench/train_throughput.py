"""Training throughput per stage, and what the decoded-image cache saves, measured in one run.

    python bench/train_throughput.py [--photos 192] [--backbones tiny,ViT-B-32] [--device auto] [--epochs 2]

Weights are random (nothing is downloaded; speed does not depend on their values) but are passed as a
checkpoint file, so the frozen teacher runs and L_kd is paid for as in a real run from pretrained
weights. Per backbone:
  1. `train()` for --epochs epochs per stage (2): images/s of stage 1 (augment + student forward/backward +
     teacher forward), of stage 2's one-off feature pass, and of stage 2 prompt tuning;
  2. with the same model, one stage-1 epoch reading the uint8 memmap cache against one decoding the
     JPEGs batch by batch (threaded, `--workers`), which is what training without the cache costs.
"""
from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch

from tagger.benchmark import cpu_name
from tagger.images import load_image
from train.backbone import load_clip
from train.config import TrainConfig, pick_device
from train.prepare import prepare_data
from train.stages import Trainer, batches as make_batches, epoch_rng
from train.synthetic import generate_dataset
from train.trainer import build_model, train

TINY = str(Path(__file__).resolve().parents[1] / "train" / "model_configs" / "tagger-tiny.json")


def quiet(_: str) -> None:
    pass


def stage_rates(cfg: TrainConfig) -> dict:
    result = train(cfg, log=quiet, progress=False)
    rates = {}
    for stage in (1, 2):
        # Training epochs only: the history also holds evaluations that train nothing (the untrained
        # model, the WiSE-FT mixes), recorded at 0 images/s.
        values = [h["images_per_s"] for h in result.history if h["stage"] == stage and h["images_per_s"] > 0]
        rates[stage] = statistics.median(values[1:] or values)  # the first epoch warms up
    rates["features"] = result.metrics["timings"].get("stage2_features_images_per_s")
    return rates


def cache_effect(cfg: TrainConfig, workers: int) -> tuple[float, float]:
    """Seconds for one stage-1 epoch from the cache and one decoding every photo, same model."""
    device = pick_device(cfg.device)
    clip = load_clip(cfg.backbone, cfg.pretrained)
    run_dir = Path(cfg.out + "-cache")
    data = prepare_data(cfg, clip, run_dir, quiet, progress=False)
    model, loss = build_model(cfg, clip, data, device)
    trainer = Trainer(cfg, model, loss, data, device, run_dir, quiet, progress=False)
    optimizer = torch.optim.AdamW(model.set_stage(1), lr=1e-5)
    _, gen = epoch_rng(cfg.seed, 1, 1)
    batches = make_batches(len(data.train_idx), cfg.batch_size, np.random.default_rng(0))
    paths = [data.cache.paths[i] for i in data.train_idx]
    model.train()

    def epoch(read) -> float:
        if device.type == "cuda":
            torch.cuda.synchronize()
        started = time.perf_counter()
        for batch in batches:
            trainer.stage1_step(read(batch), trainer.train_targets[batch], gen, optimizer, use_kd=True)
        if device.type == "cuda":
            torch.cuda.synchronize()
        return time.perf_counter() - started

    epoch(lambda b: torch.from_numpy(data.cache.get(data.train_idx[b])))  # warm-up
    cached = epoch(lambda b: torch.from_numpy(data.cache.get(data.train_idx[b])))
    with ThreadPoolExecutor(max_workers=workers) as pool:
        decoded = epoch(lambda b: torch.from_numpy(np.stack(list(
            pool.map(lambda i: load_image(paths[i], clip.preprocess), b)))))
    return cached, decoded


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--photos", type=int, default=192, help="synthetic labelled photos")
    parser.add_argument("--size", type=int, nargs=2, default=(2048, 1536), metavar=("W", "H"),
                        help="photo size: decoding cost grows with it")
    parser.add_argument("--backbones", default="tiny,ViT-B-32")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--epochs", type=int, default=2, help="epochs per stage; rates leave out the first")
    parser.add_argument("--workers", type=int, default=4)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    work = Path(tempfile.mkdtemp(prefix="tagger-train-bench-"))
    data = generate_dataset(work / "data", n_train=args.photos, n_test=0, seed=0, size=tuple(args.size))
    device = pick_device(args.device)
    print(f"machine: {cpu_name()}, {torch.get_num_threads()} torch threads, device {device}"
          + (f" ({torch.cuda.get_device_name()})" if device.type == "cuda" else "")
          + f"; {args.photos} photos {args.size[0]}x{args.size[1]}, batch {args.batch_size}, {args.workers} decode workers")
    print(f"{'backbone':<10} {'stage 1':>9} {'features':>9} {'stage 2':>9} {'epoch cached':>13} "
          f"{'epoch decoding':>15} {'ratio':>6}   (images/s; seconds)")
    for name in args.backbones.split(","):
        backbone = TINY if name == "tiny" else name
        torch.manual_seed(0)
        weights = work / f"{name}.pt"
        torch.save(load_clip(backbone, None).model.state_dict(), weights)
        cfg = TrainConfig(labels=str(data.labels_file), data=str(data.train_dir), annotations=str(data.train_csv),
                          out=str(work / f"run-{name}"), keywords=False, backbone=backbone, pretrained=str(weights),
                          device=args.device, epochs=args.epochs, stage2_epochs=args.epochs,
                          batch_size=args.batch_size, lr=1e-5, drop_empty=True, workers=args.workers)
        rates = stage_rates(cfg)
        cached, decoded = cache_effect(cfg, args.workers)
        if device.type == "cuda":
            memory = f"  peak GPU memory {torch.cuda.max_memory_allocated() / 2**30:.2f} GiB"
            torch.cuda.reset_peak_memory_stats()
        else:
            memory = ""
        print(f"{name:<10} {rates[1]:>9.1f} {rates['features'] or 0:>9.1f} {rates[2]:>9.1f} {cached:>13.2f} "
              f"{decoded:>15.2f} {decoded / cached:>6.2f}{memory}")


if __name__ == "__main__":
    main()
