"""The quality benchmark's second task: hierarchical tags, steep long tail, leaf-balanced test set."""
import csv

import numpy as np
import pytest

from bench.quality import hier_task, tasks, world
from tagger.labels import leaf, parse_labels, read_labels
from train.data import TagMatcher, collect_labels
from train.metrics import frequency_group
from train.split import stratified_split

TINY = hier_task.HierTaskConfig(n_pool=60, n_max=30, n_min=1, n_test=24, test_positives=2, shots=(1,), seeds=(0,))


@pytest.fixture(scope="module")
def default_plan() -> hier_task.HierPlan:
    return hier_task.plan_hier_task(hier_task.HierTaskConfig())  # scenes only: no pixels, a fraction of a second


def _parents(tags: list[str]) -> dict[str, str]:
    """child -> parent, for every hierarchical tag."""
    return {t: t.rsplit("|", 1)[0] for t in tags if "|" in t}


def test_vocabulary_is_hierarchical_and_every_prompt_is_caption_language():
    tags = hier_task.hier_tags()
    assert len(tags) >= 40 and len(set(tags)) == len(tags)
    parents = _parents(tags)
    assert len(parents) >= 20 and set(parents.values()) <= set(tags)  # parents are tags of their own
    assert parse_labels(hier_task._hier_labels_text(tags)) == tags  # the labels file says the same
    # The stand-in VLM only ever read kinds, colours and size words: a prompt made of them has a text prior.
    known = set(world.KINDS) | set(world.COLOURS) | set(world.SIZE_RADIUS)
    for tag in tags:
        assert set(leaf(tag).split()) <= known, tag
    matcher = TagMatcher(tags)
    assert all(matcher.match(leaf(t)) >= {tags.index(t)} for t in tags)  # leaves are unique names too
    assert not {c.kind for c in hier_task.HIER_LEAVES} & set(hier_task.HIER_DISTRACTORS)


def test_default_pool_is_long_tailed_past_200_to_1(default_plan):
    cfg = hier_task.HierTaskConfig()
    leaf_counts = default_plan.lt.targets[:, [default_plan.tags.index(c.tag) for c in hier_task.HIER_LEAVES]].sum(axis=0)
    np.testing.assert_array_equal(leaf_counts, default_plan.leaf_counts)  # exact power-law counts
    assert leaf_counts[0] == cfg.n_max and leaf_counts.min() == cfg.n_min
    counts = default_plan.lt.targets.sum(axis=0)
    assert counts.max() / counts.min() >= 200
    assert default_plan.lt.targets.shape == (cfg.n_pool, len(default_plan.tags))
    groups = [frequency_group(int(n)) for n in np.round(counts * (1 - cfg.val_fraction))]
    assert all(groups.count(g) >= 5 for g in ("head", "medium", "tail"))


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_fixed_groups_agree_with_tagger_trains_own_split(default_plan, seed):
    """Parents included: the groups from expected counts are the ones `tagger train` derives from its split."""
    cfg, targets = hier_task.HierTaskConfig(), default_plan.lt.targets
    expected = [frequency_group(int(n)) for n in np.round(targets.sum(axis=0) * (1 - cfg.val_fraction))]
    train_idx, _ = stratified_split(targets, cfg.val_fraction, seed)
    assert [frequency_group(int(n)) for n in targets[train_idx].sum(axis=0)] == expected


def test_test_set_and_few_shot_pools_are_balanced_over_leaves(default_plan):
    cfg = hier_task.HierTaskConfig()
    leaves = [t for t in default_plan.tags if t not in _parents(default_plan.tags).values()]
    assert len(leaves) == len(hier_task.HIER_LEAVES)
    columns = [default_plan.tags.index(t) for t in leaves]
    np.testing.assert_array_equal(default_plan.test.targets[:, columns].sum(axis=0), cfg.test_positives)
    for (k, _), shot in default_plan.shots.items():
        np.testing.assert_array_equal(shot.targets[:, columns].sum(axis=0), 2 * k)  # k to train + k to validate
    assert sorted(default_plan.shots) == [(k, s) for k in cfg.shots for s in cfg.seeds]


def test_parents_are_exactly_where_a_child_is(default_plan):
    tags = default_plan.tags
    parents = _parents(tags)
    for split in [default_plan.lt, default_plan.test, *default_plan.shots.values()]:
        for parent in set(parents.values()):
            children = [tags.index(c) for c, p in parents.items() if p == parent]
            np.testing.assert_array_equal(split.targets[:, tags.index(parent)], split.targets[:, children].max(axis=1))


def test_tags_are_read_off_the_rendered_objects(default_plan):
    """Independently of Concept: a colour child is an object of that kind and colour, a size child an
    object whose caption size word it is, a flat kind any object of it; distractor kinds tag nothing."""
    tags = set(default_plan.tags)
    for split in [default_plan.test, *default_plan.shots.values()]:
        for scene, row in zip(split.scenes, split.targets):
            expected = set()
            for thing in scene.things:
                if thing.kind in hier_task.HIER_DISTRACTORS:
                    continue
                for attribute in (thing.colour, thing.size_word):
                    if f"{thing.kind}|{attribute} {thing.kind}" in tags:
                        expected |= {thing.kind, f"{thing.kind}|{attribute} {thing.kind}"}
                if thing.kind in tags and not any(t.startswith(thing.kind + "|") for t in tags):
                    expected.add(thing.kind)
                assert expected & {thing.kind}, f"{thing} has no tag"  # every object of a family is some child
            assert {default_plan.tags[c] for c in np.flatnonzero(row)} == expected


def test_build_writes_what_tagger_train_reads(tmp_path):
    task = hier_task.build_hier_task(TINY, tmp_path / "task")
    assert read_labels(task.labels_file) == task.tags == hier_task.hier_tags()
    for split in [task.lt, task.test, *task.shots.values()]:
        photos = collect_labels(split.folder, task.tags, split.csv, keywords=False)
        assert [p.name for p in photos.paths] == [p.name for p in split.paths]
        np.testing.assert_array_equal(photos.targets, split.targets)
    # Rows name the most specific tags only: the parents come from tagger's own reading of `car|red car`.
    listed = {t for row in csv.reader(task.lt.csv.open()) for t in row[1].split(";") if t}
    assert listed & set(_parents(task.tags)) and not listed & set(_parents(task.tags).values())
    np.testing.assert_array_equal(task.pool_counts, task.lt.targets.sum(axis=0))
    assert len(task.groups) == len(task.tags)
    before = task.lt.paths[0].stat().st_mtime_ns
    again = hier_task.build_hier_task(TINY, tmp_path / "task")  # complete: nothing rewritten
    assert again.lt.paths[0].stat().st_mtime_ns == before
    np.testing.assert_array_equal(again.test.targets, task.test.targets)


def test_generation_is_seeded(tmp_path):
    first, second = hier_task.build_hier_task(TINY, tmp_path / "a"), hier_task.build_hier_task(TINY, tmp_path / "b")
    files = sorted(p.relative_to(tmp_path / "a") for p in (tmp_path / "a").rglob("*") if p.is_file())
    assert len(files) > 100
    for name in files:
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes(), name
    np.testing.assert_array_equal(first.lt.targets, second.lt.targets)
    other = hier_task.plan_hier_task(hier_task.HierTaskConfig(**{**TINY.__dict__, "seed": 1}))
    assert not np.array_equal(other.lt.targets, first.lt.targets)
    assert TINY.key() != hier_task.HierTaskConfig(**{**TINY.__dict__, "seed": 1}).key()
    assert hier_task.HierTaskConfig().key() not in (tasks.TaskConfig().key(), hier_task.HIER_QUICK.key())
