"""The downstream tagging tasks: long-tailed multi-label photos of the benchmark's world, on disk.

`tagger train` reads photos from a folder with a CSV (`file,tag1;tag2`) and a labels file, so the
tasks are written exactly that way:

    TASK/mytags.txt              the vocabulary (first task: the 20 object kinds, most frequent first)
    TASK/lt/*.jpg + lt.csv       long-tailed pool: tagger train splits it into training/validation
    TASK/test/*.jpg + test.csv   balanced test set (every leaf tag on the same number of photos)
    TASK/shot{K}-s{S}/ + .csv    few-shot pools: about K training + K validation photos per tag (seed S)
    TASK/task.json               the design: counts, frequency groups, sizes

Tag frequencies in the pool follow a power law (Zipf-Mandelbrot), n_r = n_max·((r + q)/(1 + q))^−a for
rank r, with exact counts: every tag is on exactly n_r photos. Frequency groups are DESIGN.md §5's
(head ≥100, medium 20–99, tail <20 training positives) applied to the expected training count
n_r·(1 − val_fraction), fixed by the task, so every method and seed is scored on the same groups.

Two tasks share that layout, so results are not tuned to one vocabulary:

- `build_task(TaskConfig())`: the 20 object kinds, flat (`QUICK` is the small variant).
- `hier_task.build_hier_task(HierTaskConfig())`: 45 hierarchical `Parent|Child` tags (`HIER_QUICK` is
  the small variant), in `hier_task.py`.
"""
from __future__ import annotations

import csv
import hashlib
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from bench.quality import world
from train.metrics import frequency_group

if TYPE_CHECKING:
    from bench.quality.hier_task import HierTaskConfig

PHOTO_QUALITY = 92  # JPEG quality of the generated photos


@dataclass
class TaskConfig:
    n_pool: int = 1000  # long-tailed photos for training + validation
    n_max: int = 600  # photos of the most frequent tag
    exponent: float = 1.6  # a
    shift: float = 1.0  # q: flattens the head a little, as in real tag counts
    val_fraction: float = 0.2  # what `tagger train --val-fraction` holds out
    n_test: int = 500
    test_positives: int = 60  # photos per tag in the balanced test set
    max_objects: int = 5
    shots: tuple[int, ...] = (1, 5)
    seeds: tuple[int, ...] = (0, 1, 2)  # few-shot pools are drawn per seed
    seed: int = 0  # the long-tailed pool and the test set
    order: str = "world"  # which kinds are frequent (`kinds_by_frequency`); bench/quality/worlds.py varies it

    def key(self) -> str:
        spec = asdict(self) | {"world": world_version()}
        if self.order == "world":  # the key tasks had before the field existed: their cached runs stay valid
            del spec["order"]
        return hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()[:12]


QUICK = TaskConfig(n_pool=600, n_max=360, n_test=300, test_positives=36, seeds=(0, 1))


def kinds_by_frequency(order: str) -> list[str]:
    """The world's object kinds, most frequent first: in KINDS order ("world"), reversed ("reversed"),
    or in a random order drawn from a seed ("shuffled-N"). Which kinds are rare decides how much a
    method that keeps the pretrained prior gains on the tail, so one order is one draw of a world."""
    kinds = list(world.KINDS)
    if order == "world":
        return kinds
    if order == "reversed":
        return kinds[::-1]
    if order.startswith("shuffled-") and order.removeprefix("shuffled-").isdigit():
        rng = np.random.default_rng(int(order.removeprefix("shuffled-")))
        return [kinds[i] for i in rng.permutation(len(kinds))]
    raise ValueError(f"order must be 'world', 'reversed' or 'shuffled-N', not {order!r}")


def world_version() -> int:
    from bench.quality.pretrain_vlm import WORLD_VERSION

    return WORLD_VERSION


def power_law_counts(n_tags: int, n_max: int, exponent: float, shift: float) -> np.ndarray:
    rank = np.arange(1, n_tags + 1, dtype=np.float64)
    return np.maximum(1, np.round(n_max * ((rank + shift) / (1 + shift)) ** (-exponent))).astype(int)


def assign_tags(n_images: int, counts, rng: np.random.Generator, max_objects: int) -> np.ndarray:
    """0/1 [n_images, C] with exactly counts[c] photos per tag and at most max_objects tags a photo.

    Tags are placed most frequent first, each on photos drawn at random among those with room left.
    """
    counts = np.asarray(counts)
    if counts.sum() > n_images * max_objects or counts.max() > n_images:
        raise ValueError("more tag occurrences than the photos can hold")
    targets = np.zeros((n_images, len(counts)), np.uint8)
    for c in np.argsort(-counts, kind="stable"):
        room = np.flatnonzero(targets.sum(axis=1) < max_objects)
        if len(room) < counts[c]:
            raise ValueError("too many tag occurrences for max_objects")
        targets[rng.choice(room, size=int(counts[c]), replace=False), c] = 1
    return targets


@dataclass
class Split:
    folder: Path
    csv: Path
    targets: np.ndarray  # uint8 [N, C], rows in file-name order (how tagger sorts the photos)

    @property
    def paths(self) -> list[Path]:
        width = len(str(max(len(self.targets) - 1, 1)))
        return [self.folder / f"img_{i:0{width}d}.jpg" for i in range(len(self.targets))]


@dataclass
class Task:
    root: Path
    config: TaskConfig | HierTaskConfig
    tags: list[str]
    labels_file: Path
    lt: Split
    test: Split
    shots: dict[tuple[int, int], Split]  # (K, seed) -> pool
    pool_counts: np.ndarray  # photos per tag in the long-tailed pool
    groups: list[str] = field(default_factory=list)  # head/medium/tail per tag (expected training count)

    def expected_train_counts(self) -> np.ndarray:
        return np.round(self.pool_counts * (1 - self.config.val_fraction)).astype(int)


def _write_split(folder: Path, targets: np.ndarray, tags: list[str], rng: np.random.Generator) -> Split:
    folder.mkdir(parents=True, exist_ok=True)
    split = Split(folder, folder.with_suffix(".csv"), targets)
    with open(split.csv, "w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh)
        for path, row in zip(split.paths, targets):
            present = [tags[c] for c in np.flatnonzero(row)]
            scene = world.sample_scene(list(rng.permutation(present)) if present else [], rng, world.PHOTO_STYLE)
            world.render(scene, world.PHOTO_STYLE).save(path, "JPEG", quality=PHOTO_QUALITY)
            writer.writerow([path.name, ";".join(present)])
    return split


def few_shot_targets(k: int, n_tags: int, rng: np.random.Generator, per_image: int = 2) -> np.ndarray:
    """Every tag on exactly 2k photos (k to train, k to validate), about `per_image` tags a photo."""
    n_images = max(2, int(np.ceil(2 * k * n_tags / per_image)))
    return assign_tags(n_images, np.full(n_tags, 2 * k), rng, max_objects=max(per_image + 1, 3))


def build_task(cfg: TaskConfig, root: Path) -> Task:
    """Write the task under root (skipped when task.json says it is complete) and describe it."""
    tags = kinds_by_frequency(cfg.order)
    counts = power_law_counts(len(tags), cfg.n_max, cfg.exponent, cfg.shift)
    meta_path = root / "task.json"
    rng = np.random.default_rng(cfg.seed)
    lt_targets = assign_tags(cfg.n_pool, counts, rng, cfg.max_objects)
    test_targets = assign_tags(cfg.n_test, np.full(len(tags), cfg.test_positives), rng, cfg.max_objects)
    shot_targets = {(k, s): few_shot_targets(k, len(tags), np.random.default_rng([cfg.seed, k, s]))
                    for k in cfg.shots for s in cfg.seeds}
    complete = meta_path.is_file() and json.loads(meta_path.read_text()).get("key") == cfg.key()
    labels_file = root / "mytags.txt"
    if complete:
        lt = Split(root / "lt", root / "lt.csv", lt_targets)
        test = Split(root / "test", root / "test.csv", test_targets)
        shots = {ks: Split(root / f"shot{ks[0]}-s{ks[1]}", root / f"shot{ks[0]}-s{ks[1]}.csv", t)
                 for ks, t in shot_targets.items()}
    else:
        root.mkdir(parents=True, exist_ok=True)
        labels_file.write_text("# object kinds of the quality benchmark's world, most frequent first\n"
                               + "\n".join(tags) + "\n", encoding="utf-8")
        render_rng = np.random.default_rng([cfg.seed, 1])
        lt = _write_split(root / "lt", lt_targets, tags, render_rng)
        test = _write_split(root / "test", test_targets, tags, render_rng)
        shots = {ks: _write_split(root / f"shot{ks[0]}-s{ks[1]}", t, tags, np.random.default_rng([cfg.seed, 2, *ks]))
                 for ks, t in shot_targets.items()}
    task = Task(root, cfg, tags, labels_file, lt, test, shots, counts)
    task.groups = [frequency_group(int(n)) for n in task.expected_train_counts()]
    if not complete:
        meta = {"key": cfg.key(), "config": asdict(cfg), "tags": tags, "pool_counts": counts.tolist(),
                "expected_train_counts": task.expected_train_counts().tolist(), "groups": task.groups,
                "test_counts": test_targets.sum(axis=0).tolist(),
                "shot_images": {f"{k}-shot seed {s}": len(t) for (k, s), t in shot_targets.items()}}
        meta_path.write_text(json.dumps(meta, indent=2))
    return task
