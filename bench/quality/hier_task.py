"""Task B of the quality benchmark: 45 hierarchical `Parent|Child` tags, in the layout of `tasks.py`.

Kinds are parents and their children name an attribute the captions use: `car|red car` is a car drawn in
red, `tree|large tree` a tree larger than captions' "large" threshold. Every prompt ("a photo of a red
car.") is caption language the stand-in VLM was pretrained on. The power law runs over the 36 leaf tags
(600 photos down to 3); a parent is on every photo one of its children is on, as `tagger train` reads
`car|red car`. The test set is balanced over the leaves. Photos also hold objects of kinds outside the
vocabulary, untagged, as real photos do.
"""
from __future__ import annotations

import csv
import hashlib
import json
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from bench.quality import world
from bench.quality.tasks import (PHOTO_QUALITY, Split, Task, assign_tags, few_shot_targets, power_law_counts,
                                 world_version)
from tagger.labels import HIERARCHY_SEP
from train.metrics import frequency_group


HIER_TASK_VERSION = 1  # bump when the hierarchical task is generated differently: its cache key changes


@dataclass(frozen=True)
class Concept:
    """A leaf tag of the hierarchical task, defined on the objects of the scene that is rendered."""

    kind: str
    colour: str | None = None  # a child of `kind`: an object of that kind drawn in this colour
    size: str | None = None  # a child of `kind`: an object of that kind with this caption size word

    @property
    def parent(self) -> str | None:
        return self.kind if self.colour or self.size else None

    @property
    def tag(self) -> str:
        # The leaf repeats the kind so that every leaf is unique and its prompt is caption language:
        # `car|red car` -> "a photo of a red car." (a bare `car|red` would prompt "a photo of a red.").
        return f"{self.kind}{HIERARCHY_SEP}{self.colour or self.size} {self.kind}" if self.parent else self.kind

    def want(self) -> world.Want:
        return world.Want(self.kind, self.colour, self.size)

    def shown_by(self, thing: world.Thing) -> bool:
        return thing.kind == self.kind and self.colour in (None, thing.colour) and self.size in (None, thing.size_word)

    def definition(self) -> str:
        if self.colour:
            return f"a {self.kind} drawn in {self.colour}"
        if self.size == "small":
            return f"a {self.kind} of radius < {world.SMALL_BELOW} px (captions' 'small')"
        if self.size == "large":
            return f"a {self.kind} of radius > {world.LARGE_ABOVE} px (captions' 'large')"
        return f"a {self.kind}, any colour and size"


# Leaf tags, most frequent first. Typical colours lead their family and every family reaches into
# the tail, so a rare child has a frequent parent and frequent siblings. Objects of a family's kind
# only ever appear as one of its children (a car is red, blue, white, black or yellow; a tree or a
# star is small or large), so a parent is on exactly the photos one of its children is on.
HIER_LEAVES: tuple[Concept, ...] = (
    Concept("ball", colour="red"), Concept("car", colour="blue"), Concept("flower", colour="pink"),
    Concept("sun"), Concept("tree", size="large"), Concept("house", colour="brown"),
    Concept("boat", colour="white"), Concept("fish", colour="blue"), Concept("car", colour="red"),
    Concept("tent"), Concept("star", size="small"), Concept("flower", colour="yellow"),
    Concept("ball", colour="blue"), Concept("kite", colour="purple"), Concept("moon"),
    Concept("tree", size="small"), Concept("car", colour="white"), Concept("heart"),
    Concept("house", colour="white"), Concept("fish", colour="orange"), Concept("boat", colour="red"),
    Concept("flower", colour="red"), Concept("clock"), Concept("ball", colour="green"),
    Concept("star", size="large"), Concept("kite", colour="red"), Concept("car", colour="black"),
    Concept("mushroom"), Concept("boat", colour="blue"), Concept("flower", colour="white"),
    Concept("house", colour="red"), Concept("fish", colour="yellow"), Concept("ball", colour="orange"),
    Concept("kite", colour="green"), Concept("car", colour="yellow"), Concept("flower", colour="purple"),
)
# Kinds outside the vocabulary: untagged objects in the photos, as real photos hold things nobody tags.
HIER_DISTRACTORS: tuple[str, ...] = ("flag", "cross", "ring", "arrow", "box")


@dataclass
class HierTaskConfig:
    n_pool: int = 1200  # long-tailed photos for training + validation
    n_max: int = 600  # photos of the most frequent leaf tag
    n_min: int = 3  # photos of the rarest leaf tag: the power law's exponent is chosen to reach it
    shift: float = 2.0  # q of the power law over the leaf tags
    val_fraction: float = 0.2  # what `tagger train --val-fraction` holds out
    n_test: int = 600
    test_positives: int = 40  # photos per leaf tag in the balanced test set
    max_tags: int = 4  # leaf tags per photo
    max_objects: int = 5  # objects per photo, untagged distractors included
    distractors: tuple[int, int] = (0, 2)  # untagged objects per photo (inclusive range, within max_objects)
    shots: tuple[int, ...] = (1, 5)
    seeds: tuple[int, ...] = (0, 1, 2)  # few-shot pools are drawn per seed
    seed: int = 0  # the long-tailed pool and the test set

    @property
    def exponent(self) -> float:
        n = len(HIER_LEAVES)
        return float(np.log(self.n_max / self.n_min) / np.log((n + self.shift) / (1 + self.shift)))

    def key(self) -> str:
        spec = asdict(self) | {"world": world_version(), "task": "hierarchical", "version": HIER_TASK_VERSION,
                               "leaves": [asdict(c) for c in HIER_LEAVES], "distractors": list(HIER_DISTRACTORS)}
        return hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()[:12]


HIER_QUICK = HierTaskConfig(n_pool=720, n_max=360, n_min=2, n_test=360, test_positives=24, seeds=(0, 1))


def hier_tags() -> list[str]:
    """The vocabulary in labels-file order: each parent followed by its children, families in the
    order of their most frequent leaf."""
    tags: list[str] = []
    for concept in HIER_LEAVES:
        if concept.parent is None:
            tags.append(concept.tag)
        elif concept.parent not in tags:
            tags += [concept.parent] + [c.tag for c in HIER_LEAVES if c.parent == concept.parent]
    return tags


def hier_targets(scenes: list[world.Scene], tags: list[str]) -> np.ndarray:
    """0/1 [N, C] read off the scenes: a leaf where an object shows it, a parent where one of its children is."""
    index = {tag: i for i, tag in enumerate(tags)}
    targets = np.zeros((len(scenes), len(tags)), np.uint8)
    for row, scene in zip(targets, scenes):
        for concept in HIER_LEAVES:
            if any(concept.shown_by(thing) for thing in scene.things):
                row[index[concept.tag]] = 1
                if concept.parent:
                    row[index[concept.parent]] = 1
    return targets


@dataclass
class PlannedSplit:
    scenes: list[world.Scene]
    targets: np.ndarray  # uint8 [N, C] over hier_tags(), read off the scenes


@dataclass
class HierPlan:
    """Every photo of the hierarchical task as a scene with its tags: everything but the pixels."""

    tags: list[str]
    leaf_counts: np.ndarray  # photos per leaf tag in the pool, HIER_LEAVES order (the power law)
    lt: PlannedSplit
    test: PlannedSplit
    shots: dict[tuple[int, int], PlannedSplit]


def plan_hier_task(cfg: HierTaskConfig) -> HierPlan:
    """The scenes and tags of every split, without rendering (about a second at full size)."""
    tags = hier_tags()
    n_leaves = len(HIER_LEAVES)
    counts = power_law_counts(n_leaves, cfg.n_max, cfg.exponent, cfg.shift)
    rng = np.random.default_rng(cfg.seed)
    lt = assign_tags(cfg.n_pool, counts, rng, cfg.max_tags)
    test = assign_tags(cfg.n_test, np.full(n_leaves, cfg.test_positives), rng, cfg.max_tags)
    shots = {(k, s): few_shot_targets(k, n_leaves, np.random.default_rng([cfg.seed, 1, k, s]))
             for k in cfg.shots for s in cfg.seeds}

    def plan(leaf_targets: np.ndarray, *salt: int) -> PlannedSplit:
        return _plan_scenes(leaf_targets, tags, cfg, np.random.default_rng([cfg.seed, *salt]))

    return HierPlan(tags, counts, plan(lt, 2, 0), plan(test, 2, 1),
                    {(k, s): plan(t, 3, k, s) for (k, s), t in shots.items()})


def _plan_scenes(leaf_targets: np.ndarray, tags: list[str], cfg: HierTaskConfig,
                 rng: np.random.Generator) -> PlannedSplit:
    scenes = []
    for row in leaf_targets:
        wants = [HIER_LEAVES[j].want() for j in np.flatnonzero(row)]
        extra = min(int(rng.integers(cfg.distractors[0], cfg.distractors[1] + 1)), cfg.max_objects - len(wants))
        wants += [world.Want(HIER_DISTRACTORS[i]) for i in rng.integers(len(HIER_DISTRACTORS), size=max(0, extra))]
        scenes.append(world.compose_scene([wants[i] for i in rng.permutation(len(wants))], rng, world.PHOTO_STYLE))
    targets = hier_targets(scenes, tags)
    # The counts are exact only if every object shows the one leaf it was placed for: a kind in two
    # roles (a family and a distractor, colour and size children) would break that, so stop here.
    if not np.array_equal(targets, _with_parents(leaf_targets, tags)):
        raise RuntimeError("scenes show tags they were not planned with: HIER_LEAVES or HIER_DISTRACTORS mix up kinds")
    return PlannedSplit(scenes, targets)


def _with_parents(leaf_targets: np.ndarray, tags: list[str]) -> np.ndarray:
    index = {tag: i for i, tag in enumerate(tags)}
    targets = np.zeros((len(leaf_targets), len(tags)), np.uint8)
    for j, concept in enumerate(HIER_LEAVES):
        targets[:, index[concept.tag]] |= leaf_targets[:, j]
        if concept.parent:
            targets[:, index[concept.parent]] |= leaf_targets[:, j]
    return targets


def most_specific(present: list[str]) -> list[str]:
    """Leave out tags another present tag implies: a CSV row says `car|red car`, tagger reads `car` too."""
    return [t for t in present if not any(other.startswith(t + HIERARCHY_SEP) for other in present)]


def _write_scenes(folder: Path, planned: PlannedSplit, tags: list[str]) -> Split:
    folder.mkdir(parents=True, exist_ok=True)
    split = Split(folder, folder.with_suffix(".csv"), planned.targets)
    with open(split.csv, "w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh)
        for path, scene, row in zip(split.paths, planned.scenes, planned.targets):
            world.render(scene, world.PHOTO_STYLE).save(path, "JPEG", quality=PHOTO_QUALITY)
            writer.writerow([path.name, ";".join(most_specific([tags[c] for c in np.flatnonzero(row)]))])
    return split


def hier_definitions(tags: list[str]) -> dict[str, str]:
    """What each tag means on the rendered scene, in `tags` order (task.json shows them)."""
    meaning = {c.tag: c.definition() for c in HIER_LEAVES}
    for parent in {c.parent for c in HIER_LEAVES if c.parent}:
        meaning[parent] = "any of " + ", ".join(t for t in tags if t.startswith(parent + HIERARCHY_SEP))
    return {t: meaning[t] for t in tags}


def _hier_labels_text(tags: list[str]) -> str:
    return ("# the quality benchmark's hierarchical task: object kinds, and variants of some by colour or size.\n"
            "# `car|red car` is a car drawn in red; a photo showing one is a `car` photo as well.\n"
            + "\n".join(tags) + "\n")


def build_hier_task(cfg: HierTaskConfig, root: Path) -> Task:
    """Write the hierarchical task under root (skipped when task.json says it is complete) and describe it."""
    plan = plan_hier_task(cfg)
    meta_path = root / "task.json"
    labels_file = root / "mytags.txt"
    planned = {"lt": plan.lt, "test": plan.test} | {f"shot{k}-s{s}": p for (k, s), p in plan.shots.items()}
    complete = meta_path.is_file() and json.loads(meta_path.read_text()).get("key") == cfg.key()
    if complete:
        splits = {name: Split(root / name, root / f"{name}.csv", p.targets) for name, p in planned.items()}
    else:
        root.mkdir(parents=True, exist_ok=True)
        labels_file.write_text(_hier_labels_text(plan.tags), encoding="utf-8")
        splits = {name: _write_scenes(root / name, p, plan.tags) for name, p in planned.items()}
    shots = {(k, s): splits[f"shot{k}-s{s}"] for k, s in plan.shots}
    pool_counts = plan.lt.targets.sum(axis=0).astype(int)
    task = Task(root, cfg, plan.tags, labels_file, splits["lt"], splits["test"], shots, pool_counts)
    task.groups = [frequency_group(int(n)) for n in task.expected_train_counts()]
    if not complete:
        meta = {"key": cfg.key(), "task": "hierarchical", "config": asdict(cfg) | {"exponent": cfg.exponent},
                "tags": plan.tags, "definitions": hier_definitions(plan.tags),
                "distractor_kinds": list(HIER_DISTRACTORS),
                "leaf_pool_counts": {c.tag: int(n) for c, n in zip(HIER_LEAVES, plan.leaf_counts)},
                "pool_counts": pool_counts.tolist(),
                "imbalance": round(float(pool_counts.max() / pool_counts.min()), 1),
                "expected_train_counts": task.expected_train_counts().tolist(), "groups": task.groups,
                "test_counts": plan.test.targets.sum(axis=0).tolist(),
                "shot_images": {f"{k}-shot seed {s}": len(p.targets) for (k, s), p in plan.shots.items()}}
        meta_path.write_text(json.dumps(meta, indent=2))
    return task
