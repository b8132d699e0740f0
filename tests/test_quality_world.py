"""The quality benchmark's world and tasks: scenes, captions, exact long-tailed counts, fixed groups."""
import numpy as np
import pytest

from bench.quality import tasks, world
from tagger.labels import read_labels
from train.data import collect_labels
from train.metrics import frequency_group
from train.split import stratified_split


def test_scene_render_and_caption_are_seeded_and_name_every_object():
    def make(seed):
        rng = np.random.default_rng(seed)
        scene = world.sample_scene(["ball", "tree", "moon"], rng)
        return scene, np.asarray(world.render(scene)), world.caption(scene, rng)

    scene, pixels, text = make(3)
    again_scene, again_pixels, again_text = make(3)
    assert scene == again_scene and text == again_text
    np.testing.assert_array_equal(pixels, again_pixels)
    assert pixels.shape == (world.RENDER_SIZE, world.RENDER_SIZE, 3)
    assert scene.kinds == ["ball", "tree", "moon"]  # KINDS order
    for kind in ("ball", "tree", "moon"):
        assert kind in text
    other = make(4)
    assert not np.array_equal(pixels, other[1])


def test_every_kind_draws_something_distinct():
    rng = np.random.default_rng(0)
    images = {}
    for kind in world.KINDS:
        scene = world.Scene((world.Thing(kind, world.KINDS[kind], 16.0, 48.0, 48.0),), ((128, 128, 128),) * 2, seed=1)
        images[kind] = np.asarray(world.render(scene, world.SceneStyle(noise=0.0, clutter=(0, 0))), np.int16)
    blank = np.asarray(world.render(world.Scene((), ((128, 128, 128),) * 2, seed=1),
                                    world.SceneStyle(noise=0.0, clutter=(0, 0))), np.int16)
    for kind, img in images.items():
        assert np.abs(img - blank).sum(axis=2).astype(bool).sum() > 150, kind  # the object covers pixels
    kinds = list(images)
    for i, a in enumerate(kinds):
        for b in kinds[i + 1:]:
            assert not np.array_equal(images[a], images[b]), (a, b)
    del rng


def test_assign_tags_gives_exact_counts_within_the_object_limit():
    counts = tasks.power_law_counts(20, 600, 1.6, 1.0)
    assert list(counts) == sorted(counts, reverse=True) and counts[0] == 600
    targets = tasks.assign_tags(1000, counts, np.random.default_rng(0), max_objects=5)
    np.testing.assert_array_equal(targets.sum(axis=0), counts)
    assert targets.sum(axis=1).max() <= 5
    with pytest.raises(ValueError):
        tasks.assign_tags(10, [11], np.random.default_rng(0), max_objects=5)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_fixed_groups_agree_with_tagger_trains_own_split(seed):
    """The report's head/medium/tail groups are the ones `tagger train` derives from its split."""
    cfg = tasks.TaskConfig()
    counts = tasks.power_law_counts(len(world.KINDS), cfg.n_max, cfg.exponent, cfg.shift)
    targets = tasks.assign_tags(cfg.n_pool, counts, np.random.default_rng(cfg.seed), cfg.max_objects)
    expected = [frequency_group(int(n)) for n in np.round(counts * (1 - cfg.val_fraction))]
    train_idx, _ = stratified_split(targets, cfg.val_fraction, seed)
    actual = [frequency_group(int(n)) for n in targets[train_idx].sum(axis=0)]
    assert actual == expected
    assert {g: expected.count(g) for g in ("head", "medium", "tail")} == {"head": 4, "medium": 9, "tail": 7}


def test_build_task_writes_what_tagger_train_reads(tmp_path):
    cfg = tasks.TaskConfig(n_pool=30, n_max=12, exponent=1.0, shift=0.0, n_test=10, test_positives=2, shots=(1,),
                           seeds=(0,))
    task = tasks.build_task(cfg, tmp_path / "task")
    assert read_labels(task.labels_file) == list(world.KINDS)
    photos = collect_labels(task.lt.folder, task.tags, task.lt.csv, keywords=False)
    assert [p.name for p in photos.paths] == [p.name for p in task.lt.paths]
    np.testing.assert_array_equal(photos.targets, task.lt.targets)
    np.testing.assert_array_equal(task.test.targets.sum(axis=0), np.full(20, 2))
    shot = task.shots[(1, 0)]
    np.testing.assert_array_equal(shot.targets.sum(axis=0), np.full(20, 2))  # 1 to train + 1 to validate
    assert all(p.is_file() for p in task.test.paths + shot.paths)
    before = task.lt.paths[0].stat().st_mtime_ns
    again = tasks.build_task(cfg, tmp_path / "task")  # complete: nothing rewritten
    assert again.lt.paths[0].stat().st_mtime_ns == before
    np.testing.assert_array_equal(again.lt.targets, task.lt.targets)


def test_compose_scene_draws_the_wanted_colour_and_size_and_sample_scene_is_its_plain_case():
    wants = [world.Want("car", colour="black"), world.Want("tree", size="large"), world.Want("star", size="small"),
             world.Want("moon")]
    scene = world.compose_scene(wants, np.random.default_rng(5), world.PHOTO_STYLE)
    assert [(t.kind, t.colour) for t in scene.things[:1]] == [("car", "black")]
    assert [t.size_word for t in scene.things[1:3]] == ["large", "small"]
    plain = world.sample_scene(["ball", "moon"], np.random.default_rng(7), world.PHOTO_STYLE)
    assert plain == world.compose_scene([world.Want("ball"), world.Want("moon")], np.random.default_rng(7),
                                        world.PHOTO_STYLE)
    with pytest.raises(ValueError):
        world.compose_scene([world.Want("car", colour="teal")], np.random.default_rng(0))
