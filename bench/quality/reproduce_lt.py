"""Reproduce the paper's VOC-LT / COCO-LT numbers with `tagger train` on the real datasets (GPU advised).

    python bench/quality/reproduce_lt.py --dataset voc-lt --root /data/voc --appendix /data/appendix
    python bench/quality/reproduce_lt.py --dataset coco-lt --root /data/coco --appendix /data/appendix

Inputs, in the format of the Distribution-Balanced-loss release (as LMPT ships it):

    APPENDIX/VOCdevkit/voc_lt_train.txt, voc_lt_test.txt   lines `path idx idx ...` (paths under --root)
    APPENDIX/VOCdevkit/voc_labels.txt                       lines `name idx` (optional: VOC names built in)
    APPENDIX/VOCdevkit/longtail2012/class_freq.pkl          {"class_freq": [...], ...}
    APPENDIX/VOCdevkit/longtail2012/class_split.pkl         {"head": {...}, "middle": {...}, "tail": {...}}
    (COCO: APPENDIX/coco/coco_lt_*.txt, coco_labels.txt, longtail2017/*.pkl)

Every file can also be given on its own (--train-list, --test-list, --labels, --class-freq, --class-split).

Protocol (the paper's, DESIGN.md §6): open_clip ViT-B-16 with its pretrained weights, batch 32, lr
1e-5, 20 stage-1 epochs, then stage 2; DB* loss. One difference, kept on purpose: `tagger train`
selects its checkpoint on a validation split held out of the training list (--val-fraction), never
on the test list. Test mAP is reported overall and on the release's head/middle/tail classes, beside
the paper's numbers and CLIP's zero-shot score from the same backbone.
"""
from __future__ import annotations

import argparse
import csv
import json
import pickle
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np

VOC_CLASSES = ("aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow",
               "dining table", "dog", "horse", "motorbike", "person", "potted plant", "sheep", "sofa", "train",
               "tv monitor")
# Label-file spellings that would make poor prompts ("a photo of a diningtable.").
READABLE = {"diningtable": "dining table", "pottedplant": "potted plant", "tvmonitor": "tv monitor",
            "aeroplane": "aeroplane", "motorbike": "motorbike"}

# DESIGN.md §6: mAP total/head/medium/tail of HP-DVAL, and the baselines' totals (CLIP ViT-B/16).
PAPER = {
    "voc-lt": {"HP-DVAL": (93.06, 86.36, 92.83, 98.58), "zero-shot CLIP": (85.05, None, None, None),
               "LMPT": (87.88, None, None, None)},
    "coco-lt": {"HP-DVAL": (76.19, 72.05, 75.98, 79.12), "zero-shot CLIP": (60.17, None, None, None),
                "LMPT": (66.19, None, None, None)},
}
LAYOUT = {
    "voc-lt": ("VOCdevkit", "voc_lt", "voc_labels.txt", "longtail2012"),
    "coco-lt": ("coco", "coco_lt", "coco_labels.txt", "longtail2017"),
}


class ReproduceError(Exception):
    """Bad input files; the message names the file and the reason."""


@dataclass
class LTData:
    classes: list[str]
    train: list[tuple[str, list[int]]]  # (path relative to root, class indices)
    test: list[tuple[str, list[int]]]
    class_freq: np.ndarray
    groups: dict[str, list[int]]  # head / middle / tail -> class indices


def read_list(path: Path, n_classes: int | None = None) -> list[tuple[str, list[int]]]:
    """Lines `path idx idx ...` -> [(path, [idx, ...])]."""
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except OSError as exc:
        raise ReproduceError(f"{path}: cannot read list file ({exc.strerror or exc})") from None
    rows = []
    for lineno, line in enumerate(lines, 1):
        parts = line.split()
        if not parts:
            continue
        try:
            labels = [int(p) for p in parts[1:]]
        except ValueError:
            raise ReproduceError(f"{path}: line {lineno}: class indices must be integers: {line!r}") from None
        if n_classes is not None and any(not 0 <= i < n_classes for i in labels):
            raise ReproduceError(f"{path}: line {lineno}: class index outside 0..{n_classes - 1}")
        rows.append((parts[0], sorted(set(labels))))
    if not rows:
        raise ReproduceError(f"{path}: no images listed")
    return rows


def read_label_names(path: Path) -> list[str]:
    """Lines `name idx` (LMPT's *_labels.txt) -> names in index order, made readable for prompts."""
    try:
        lines = [ln.split() for ln in path.read_text(encoding="utf-8").splitlines() if ln.strip()]
    except OSError as exc:
        raise ReproduceError(f"{path}: cannot read labels file ({exc.strerror or exc})") from None
    named = {}
    for lineno, parts in enumerate(lines, 1):
        if parts[-1].isdigit():
            named[int(parts[-1])] = " ".join(parts[:-1])
        else:
            named[lineno - 1] = " ".join(parts)
    if sorted(named) != list(range(len(named))):
        raise ReproduceError(f"{path}: class indices must run 0..{len(named) - 1}")
    return [READABLE.get(named[i], named[i]).replace("_", " ") for i in range(len(named))]


def _load_pickle(path: Path):
    try:
        with open(path, "rb") as fh:
            return pickle.load(fh)
    except OSError as exc:
        raise ReproduceError(f"{path}: cannot read ({exc.strerror or exc})") from None
    except Exception as exc:  # unpickling errors come in many types
        raise ReproduceError(f"{path}: not a readable pickle ({type(exc).__name__}: {exc})") from None


def read_class_split(path: Path, n_classes: int) -> dict[str, list[int]]:
    data = _load_pickle(path)
    if not isinstance(data, dict) or not {"head", "middle", "tail"} <= set(data):
        raise ReproduceError(f"{path}: expected a dict with head, middle and tail class sets")
    groups = {k: sorted(int(i) for i in data[k]) for k in ("head", "middle", "tail")}
    every = sorted(i for g in groups.values() for i in g)
    if every != list(range(n_classes)):
        raise ReproduceError(f"{path}: head/middle/tail must split the {n_classes} classes exactly once")
    return groups


def read_class_freq(path: Path, n_classes: int) -> np.ndarray:
    data = _load_pickle(path)
    freq = data.get("class_freq") if isinstance(data, dict) else None
    if freq is None or len(freq) != n_classes:
        raise ReproduceError(f"{path}: expected a dict whose 'class_freq' has {n_classes} counts")
    return np.asarray(freq, dtype=np.int64)


def load_lt(args) -> LTData:
    folder, prefix, labels_name, lt_dir = LAYOUT[args.dataset]
    base = Path(args.appendix) / folder if args.appendix else None

    def pick(given, *default):
        if given:
            return Path(given)
        if base is None:
            raise ReproduceError(f"give --appendix or --{default[-1]}")
        return base.joinpath(*default[:-1])

    labels_path = Path(args.labels) if args.labels else (base / labels_name if base else None)
    if labels_path is not None and labels_path.is_file():
        classes = read_label_names(labels_path)
    elif args.dataset == "voc-lt":
        classes = list(VOC_CLASSES)
    else:
        raise ReproduceError(f"{labels_path}: COCO class names are needed (coco_labels.txt: `name idx` lines)")
    train = read_list(pick(args.train_list, f"{prefix}_train.txt", "train-list"), len(classes))
    test = read_list(pick(args.test_list, f"{prefix}_test.txt", "test-list"), len(classes))
    freq = read_class_freq(pick(args.class_freq, lt_dir, "class_freq.pkl", "class-freq"), len(classes))
    groups = read_class_split(pick(args.class_split, lt_dir, "class_split.pkl", "class-split"), len(classes))
    return LTData(classes, train, test, freq, groups)


def write_tagger_inputs(data: LTData, root: Path, work: Path) -> tuple[Path, Path]:
    """The training list as `tagger train` input: a labels file and a CSV `path,tag1;tag2` under root."""
    work.mkdir(parents=True, exist_ok=True)
    labels = work / "labels.txt"
    labels.write_text("\n".join(data.classes) + "\n", encoding="utf-8")
    annotations = work / "train.csv"
    missing = [p for p, _ in data.train if not (root / p).is_file()]
    if missing:
        raise ReproduceError(f"{root / missing[0]}: training image not found ({len(missing)} of "
                             f"{len(data.train)} missing); --root must be the folder the list paths start from")
    with open(annotations, "w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh)
        for path, idx in data.train:
            writer.writerow([path, ";".join(data.classes[i] for i in idx)])
    return labels, annotations


def score_test_list(scorer, data: LTData, root: Path, preprocess, batch_size: int, workers: int) -> np.ndarray:
    """Scores [N_test, C] from `scorer(uint8 [B, S, S, 3]) -> [B, C]`, decoding while the model runs."""
    from tagger.images import load_image

    paths = [root / p for p, _ in data.test]
    missing = [p for p in paths if not p.is_file()]
    if missing:
        raise ReproduceError(f"{missing[0]}: test image not found ({len(missing)} of {len(paths)} missing)")
    out = []
    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        batches = [paths[i:i + batch_size] for i in range(0, len(paths), batch_size)]
        decoded = pool.map(lambda batch: np.stack([load_image(p, preprocess) for p in batch]), batches)
        for pixels in decoded:
            out.append(scorer(pixels))
    return np.concatenate(out)


def map_on_test(scores: np.ndarray, data: LTData) -> dict:
    from train.metrics import per_tag_ap

    targets = np.zeros((len(data.test), len(data.classes)), np.uint8)
    for r, (_, idx) in enumerate(data.test):
        targets[r, idx] = 1
    aps = 100 * per_tag_ap(scores, targets)
    out = {"mAP": float(np.nanmean(aps))}
    for name, key in (("head", "head"), ("medium", "middle"), ("tail", "tail")):
        chosen = [aps[i] for i in data.groups[key] if not np.isnan(aps[i])]
        out[f"mAP_{name}"] = float(np.mean(chosen)) if chosen else None
    out["ap"] = {c: (None if np.isnan(a) else round(float(a), 3)) for c, a in zip(data.classes, aps)}
    return out


def _fmt(v) -> str:
    return "–" if v is None else f"{v:.2f}"


def comparison_table(dataset: str, ours: dict[str, dict]) -> str:
    lines = [f"{dataset}: test mAP (%)", f"{'':34s} {'total':>7s} {'head':>7s} {'medium':>7s} {'tail':>7s}"]
    for name, m in ours.items():
        lines.append(f"{'ours: ' + name:34s} " + " ".join(f"{_fmt(m[k]):>7s}" for k in
                                                          ("mAP", "mAP_head", "mAP_medium", "mAP_tail")))
    for name, values in PAPER[dataset].items():
        lines.append(f"{'paper: ' + name:34s} " + " ".join(f"{_fmt(v):>7s}" for v in values))
    return "\n".join(lines)


def parse_args(argv: list[str] | None):
    p = argparse.ArgumentParser(prog="python bench/quality/reproduce_lt.py", description=__doc__.split("\n\n")[0])
    p.add_argument("--dataset", choices=sorted(LAYOUT), required=True)
    p.add_argument("--root", required=True, help="folder the list files' image paths start from")
    p.add_argument("--appendix", help="folder laid out as the DB-loss/LMPT appendix (see above)")
    p.add_argument("--train-list"), p.add_argument("--test-list"), p.add_argument("--labels")
    p.add_argument("--class-freq"), p.add_argument("--class-split")
    p.add_argument("--out", default="runs/reproduce-lt", help="work folder: run, inputs, results.json")
    p.add_argument("--backbone", default="ViT-B-16", help="open_clip name or JSON config (paper: ViT-B-16)")
    p.add_argument("--pretrained", default=None, help="weights tag or checkpoint [default: the backbone's "
                                                      "LAION-2B tag; 'none' for random init]")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--lr", type=float, default=1e-5)
    p.add_argument("--epochs", type=int, default=20)
    p.add_argument("--stage2-epochs", type=int, default=10)
    p.add_argument("--loss", default="dbstar", choices=["dbstar", "db", "asl", "bce"])
    p.add_argument("--val-fraction", type=float, default=0.2)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    p.add_argument("--workers", type=int, default=8, help="decoding threads")
    p.add_argument("--no-zero-shot", action="store_true", help="skip the zero-shot baseline")
    p.add_argument("--extra", default="", help="more `tagger train` options, quoted (e.g. '--ema 0.998')")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        return _run(args)
    except ReproduceError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


def _run(args) -> int:
    import shlex

    import click
    import torch

    from bench.quality.pretrain_vlm import zero_shot_scores
    from tagger.cli import cli
    from train.backbone import default_pretrained, load_clip
    from train.model import score_images
    from train.runs import load_run
    from train.config import pick_device

    data = load_lt(args)
    root, out = Path(args.root), Path(args.out)
    labels, annotations = write_tagger_inputs(data, root, out / "inputs")
    device = pick_device(args.device)
    pretrained = default_pretrained(args.backbone) if args.pretrained is None else args.pretrained
    print(f"{args.dataset}: {len(data.classes)} classes, {len(data.train)} training / {len(data.test)} test images; "
          f"groups head {len(data.groups['head'])} / middle {len(data.groups['middle'])} / tail "
          f"{len(data.groups['tail'])}; backbone {args.backbone} ({pretrained or 'random init'}) on {device.type}",
          flush=True)
    results: dict[str, dict] = {}

    if not args.no_zero_shot:
        clip = load_clip(args.backbone, None if str(pretrained).lower() == "none" else pretrained, device=device)

        def zs(pixels):
            return zero_shot_scores(clip, pixels, data.classes, device=device)

        results["zero-shot CLIP"] = map_on_test(score_test_list(zs, data, root, clip.preprocess, args.batch_size,
                                                         args.workers), data)
        del clip

    run_dir = out / "run"
    train_args = ["train", "--labels", str(labels), "--data", str(root), "--annotations", str(annotations),
                  "--no-keywords", "--backbone", args.backbone, "--pretrained", str(pretrained or "none"),
                  "--out", str(run_dir), "--device", args.device, "--batch-size", str(args.batch_size),
                  "--lr", str(args.lr), "--epochs", str(args.epochs), "--stage2-epochs", str(args.stage2_epochs),
                  "--loss", args.loss, "--val-fraction", str(args.val_fraction), "--seed", str(args.seed),
                  "--workers", str(args.workers), *shlex.split(args.extra)]
    if (run_dir / "config.json").is_file() and not (run_dir / "metrics.json").is_file():
        train_args = ["train", "--resume", "--out", str(run_dir), "--device", args.device]
    started = time.perf_counter()
    if not (run_dir / "metrics.json").is_file():
        try:  # in this process, output streaming as usual
            cli.main(train_args, prog_name="tagger", standalone_mode=False)
        except click.ClickException as exc:
            raise ReproduceError(f"tagger train: {exc.format_message()}") from None
    run = load_run(run_dir)
    parts = run.parts
    parts.visual.to(device)
    for name in ("P_G", "P_L", "class_bias", "P_ref"):
        if getattr(parts, name) is not None:
            setattr(parts, name, getattr(parts, name).to(device))

    @torch.no_grad()
    def hp_dval(pixels):
        return score_images(parts, torch.from_numpy(pixels).to(device)).float().cpu().numpy()

    scores = score_test_list(hp_dval, data, root, run.preprocess, args.batch_size, args.workers)
    results["HP-DVAL (tagger train)"] = map_on_test(scores, data)
    seconds = time.perf_counter() - started
    print(comparison_table(args.dataset, results))
    summary = {"dataset": args.dataset, "backbone": args.backbone, "pretrained": pretrained,
               "train_args": train_args, "seconds": round(seconds, 1), "ours": results,
               "paper": {k: dict(zip(("mAP", "mAP_head", "mAP_medium", "mAP_tail"), v))
                         for k, v in PAPER[args.dataset].items()}}
    (out / "results.json").write_text(json.dumps(summary, indent=2))
    print(f"results: {out / 'results.json'}")
    return 0


if __name__ == "__main__":
    if __package__ in (None, ""):  # run as a script: make the repository importable
        sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
    raise SystemExit(main())
