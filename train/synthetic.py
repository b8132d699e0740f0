"""Synthetic long-tailed multi-label photos: a labelled dataset anyone can make in seconds.

Each photo is a noisy gradient background with a few grey distractors and zero or more objects. Every
object kind has its own colour and shape, so a tiny ViT learns them from a few hundred photos. In the
training set kind k appears with probability p_max·k^(−exponent) (a power law: head, medium and tail
tags); in the held-out test set every kind appears equally often.

    python -m train.synthetic demo/ --n-train 600 --n-test 300
    tagger train --labels demo/mytags.txt --data demo/train --annotations demo/train.csv

Layout: OUT/mytags.txt, OUT/train/*.jpg + OUT/train.csv, OUT/test/*.jpg + OUT/test.csv (CSV rows are
`file,tag1;tag2`, paths relative to the photo folder; a photo with no object has an empty tag list).
"""
from __future__ import annotations

import argparse
import csv
import json
import math
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

# Most frequent first. "Sky|Sun" and "Sky|Moon" exercise hierarchical tags.
KINDS = ("box", "ball", "tree", "Sky|Sun", "flower", "tent", "fish", "flag", "board", "Sky|Moon")


@dataclass
class SyntheticDataset:
    root: Path
    labels_file: Path  # mytags.txt
    tags: list[str]
    train_dir: Path
    train_csv: Path
    test_dir: Path
    test_csv: Path
    train: list[tuple[Path, list[str]]]  # (photo, its tags)
    test: list[tuple[Path, list[str]]]

    def targets(self, split: str = "test") -> np.ndarray:
        """0/1 matrix [N, C] in `tags` order for "train" or "test"."""
        rows = self.train if split == "train" else self.test
        index = {t: i for i, t in enumerate(self.tags)}
        out = np.zeros((len(rows), len(self.tags)), dtype=np.uint8)
        for r, (_, tags) in enumerate(rows):
            for t in tags:
                out[r, index[t]] = 1
        return out


def tag_probabilities(n_kinds: int, p_max: float = 0.5, exponent: float = 1.3) -> np.ndarray:
    return p_max * np.arange(1, n_kinds + 1, dtype=np.float64) ** (-exponent)


def generate_dataset(out_dir: str | Path, n_train: int = 400, n_test: int = 200, seed: int = 0,
                     size: tuple[int, int] = (128, 96), kinds: tuple[str, ...] = KINDS, p_max: float = 0.5,
                     exponent: float = 1.3, test_probability: float = 0.25, sidecars: bool = False,
                     quality: int = 90) -> SyntheticDataset:
    """Write the dataset under `out_dir` (created; existing files are overwritten) and describe it.

    `sidecars=True` also writes each training photo's tags as a sidecar `IMG.jpg.json` {"labels": [...]}.
    """
    root = Path(out_dir)
    unknown = [k for k in kinds if k not in _DRAW]
    if unknown:
        raise ValueError(f"unknown object kinds {unknown}; known: {', '.join(KINDS)}")
    rng = np.random.default_rng(seed)
    labels_file = root / "mytags.txt"
    root.mkdir(parents=True, exist_ok=True)
    labels_file.write_text("# synthetic object kinds, most frequent first\n" + "\n".join(kinds) + "\n",
                           encoding="utf-8")
    train_p = tag_probabilities(len(kinds), p_max, exponent)
    test_p = np.full(len(kinds), test_probability)
    train = _write_split(root / "train", root / "train.csv", n_train, train_p, kinds, rng, size, sidecars, quality)
    test = _write_split(root / "test", root / "test.csv", n_test, test_p, kinds, rng, size, False, quality)
    return SyntheticDataset(root=root, labels_file=labels_file, tags=list(kinds), train_dir=root / "train",
                            train_csv=root / "train.csv", test_dir=root / "test", test_csv=root / "test.csv",
                            train=train, test=test)


def _write_split(folder: Path, csv_path: Path, n: int, probabilities: np.ndarray, kinds, rng, size,
                 sidecars: bool, quality: int) -> list[tuple[Path, list[str]]]:
    folder.mkdir(parents=True, exist_ok=True)
    rows = []
    width = len(str(max(n - 1, 1)))
    for i in range(n):
        present = [k for k, p in zip(kinds, probabilities) if rng.random() < p]
        image = draw_scene(present, rng, size)
        path = folder / f"img_{i:0{width}d}.jpg"
        image.save(path, "JPEG", quality=quality)
        if sidecars:
            path.with_name(path.name + ".json").write_text(json.dumps({"labels": present}), encoding="utf-8")
        rows.append((path, present))
    with open(csv_path, "w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh)
        for path, present in rows:
            writer.writerow([path.name, ";".join(present)])
    return rows


def draw_scene(kinds: list[str], rng: np.random.Generator, size: tuple[int, int] = (128, 96)) -> Image.Image:
    """One photo with the given object kinds, all inside the centred square (kept by a centre crop)."""
    width, height = size
    side = min(width, height)
    x0, y0 = (width - side) / 2, (height - side) / 2
    image = _background(rng, width, height)
    draw = ImageDraw.Draw(image)
    placed: list[tuple[float, float, float]] = []
    for _ in range(int(rng.integers(0, 4))):
        r = side * rng.uniform(0.04, 0.09)
        cx, cy = rng.uniform(x0 + r, x0 + side - r), rng.uniform(y0 + r, y0 + side - r)
        grey = int(rng.integers(90, 170))
        draw.ellipse([cx - r, cy - r * 0.7, cx + r, cy + r * 0.7], fill=(grey, grey, grey - 10))
    for kind in rng.permutation(kinds):
        r = side * rng.uniform(0.13, 0.2)
        cx, cy = _free_spot(rng, placed, r, x0, y0, side)
        placed.append((cx, cy, r))
        _DRAW[kind](draw, cx, cy, r, rng)
    return image


def _background(rng, width: int, height: int) -> Image.Image:
    top = rng.integers(60, 200, 3)
    bottom = rng.integers(60, 200, 3)
    t = np.linspace(0.0, 1.0, height)[:, None, None]
    pixels = top * (1 - t) + bottom * t + rng.normal(0, 6, (height, width, 3))
    pixels = np.broadcast_to(pixels, (height, width, 3))
    return Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8), "RGB")


def _free_spot(rng, placed, r, x0, y0, side) -> tuple[float, float]:
    best, best_gap = None, -math.inf
    for _ in range(30):  # rejection sampling; the least-overlapping spot if the scene is crowded
        cx, cy = rng.uniform(x0 + r, x0 + side - r), rng.uniform(y0 + r, y0 + side - r)
        gap = min((math.hypot(cx - px, cy - py) - (r + pr) for px, py, pr in placed), default=math.inf)
        if gap > 0:
            return cx, cy
        if gap > best_gap:
            best, best_gap = (cx, cy), gap
    return best


def _box(d, cx, cy, r, rng):
    d.rectangle([cx - r, cy - r, cx + r, cy + r], fill=(40, 70, 220), outline=(10, 10, 60), width=max(1, int(r / 6)))


def _ball(d, cx, cy, r, rng):
    d.ellipse([cx - r, cy - r, cx + r, cy + r], fill=(220, 30, 30))
    d.rectangle([cx - r * 0.95, cy - r * 0.18, cx + r * 0.95, cy + r * 0.18], fill=(250, 250, 250))


def _tree(d, cx, cy, r, rng):
    d.rectangle([cx - r * 0.18, cy + r * 0.3, cx + r * 0.18, cy + r], fill=(110, 70, 30))
    d.polygon([(cx, cy - r), (cx - r * 0.8, cy + r * 0.4), (cx + r * 0.8, cy + r * 0.4)], fill=(30, 150, 50))


def _sun(d, cx, cy, r, rng):
    for k in range(8):
        a = k * math.pi / 4
        d.line([cx + math.cos(a) * r * 0.5, cy + math.sin(a) * r * 0.5, cx + math.cos(a) * r, cy + math.sin(a) * r],
               fill=(250, 200, 20), width=max(1, int(r / 6)))
    d.ellipse([cx - r * 0.6, cy - r * 0.6, cx + r * 0.6, cy + r * 0.6], fill=(250, 220, 40))


def _flower(d, cx, cy, r, rng):
    for k in range(5):
        a = k * 2 * math.pi / 5
        px, py = cx + math.cos(a) * r * 0.55, cy + math.sin(a) * r * 0.55
        d.ellipse([px - r * 0.4, py - r * 0.4, px + r * 0.4, py + r * 0.4], fill=(220, 40, 200))
    d.ellipse([cx - r * 0.3, cy - r * 0.3, cx + r * 0.3, cy + r * 0.3], fill=(250, 230, 60))


def _tent(d, cx, cy, r, rng):
    d.polygon([(cx, cy - r), (cx - r, cy + r * 0.8), (cx + r, cy + r * 0.8)], fill=(245, 130, 20))
    d.polygon([(cx, cy - r * 0.1), (cx - r * 0.25, cy + r * 0.8), (cx + r * 0.25, cy + r * 0.8)], fill=(60, 30, 10))


def _fish(d, cx, cy, r, rng):
    flip = 1 if rng.random() < 0.5 else -1
    d.polygon([(cx - flip * r * 0.5, cy), (cx - flip * r, cy - r * 0.5), (cx - flip * r, cy + r * 0.5)],
              fill=(20, 170, 170))
    d.ellipse([cx - r * 0.7, cy - r * 0.45, cx + r * 0.7, cy + r * 0.45], fill=(20, 170, 170))
    ex = cx + flip * r * 0.35
    d.ellipse([ex - r * 0.1, cy - r * 0.2, ex + r * 0.1, cy], fill=(0, 0, 0))


def _flag(d, cx, cy, r, rng):
    d.rectangle([cx - r, cy - r, cx - r * 0.85, cy + r], fill=(90, 90, 90))
    for k in range(5):
        y = cy - r + k * r * 0.2
        d.rectangle([cx - r * 0.85, y, cx + r, y + r * 0.2], fill=(20, 20, 20) if k % 2 else (245, 245, 245))


def _board(d, cx, cy, r, rng):
    cell = 2 * r / 4
    for i in range(4):
        for j in range(4):
            colour = (0, 0, 0) if (i + j) % 2 else (255, 255, 255)
            d.rectangle([cx - r + i * cell, cy - r + j * cell, cx - r + (i + 1) * cell, cy - r + (j + 1) * cell],
                        fill=colour)


def _moon(d, cx, cy, r, rng):
    d.ellipse([cx - r, cy - r, cx + r, cy + r], fill=(245, 245, 225))
    d.ellipse([cx - r * 0.4, cy - r * 1.0, cx + r * 1.3, cy + r * 0.8], fill=(25, 25, 70))


_DRAW = {"box": _box, "ball": _ball, "tree": _tree, "Sky|Sun": _sun, "flower": _flower, "tent": _tent,
         "fish": _fish, "flag": _flag, "board": _board, "Sky|Moon": _moon}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m train.synthetic", description=__doc__.split("\n\n")[0])
    parser.add_argument("out_dir", type=Path)
    parser.add_argument("--n-train", type=int, default=400)
    parser.add_argument("--n-test", type=int, default=200)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--size", type=int, nargs=2, default=(128, 96), metavar=("W", "H"))
    parser.add_argument("--sidecars", action="store_true", help="also write IMG.jpg.json {'labels': [...]}")
    args = parser.parse_args(argv)
    data = generate_dataset(args.out_dir, args.n_train, args.n_test, args.seed, tuple(args.size),
                            sidecars=args.sidecars)
    counts = data.targets("train").sum(axis=0)
    print(f"wrote {len(data.train)} training and {len(data.test)} test photos to {data.root}")
    print("training positives: " + ", ".join(f"{t} {int(n)}" for t, n in zip(data.tags, counts)))
    print(f"train: tagger train --labels {data.labels_file} --data {data.train_dir} --annotations {data.train_csv}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
