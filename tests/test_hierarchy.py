"""A tagged child brings its parents (tagger.hierarchy): in decisions, in calibration, in written keywords."""
from __future__ import annotations

import datetime
import json

import numpy as np
import pytest
from click.testing import CliRunner

from tagger.cli import cli
from tagger.hierarchy import ancestors, close_upward, descendants
from tagger.images import Preprocess
from tagger.modelfile import build_metadata
from tagger.tagging import Decision
from tests.conftest import solid_photo
from tests.onnx_models import COLOUR_LABELS, build_colour_model

VOCAB = ["Animals", "Animals|Dog", "Animals|Dog|Puppy", "Cat", "Places|Rome", "Places"]


def test_ancestors_are_the_vocabulary_tags_above_each_tag():
    assert ancestors(VOCAB) == [[], [0], [1, 0], [], [5], []]
    assert descendants(VOCAB) == [[1, 2], [2], [], [], [], [4]]
    # Levels match whole: "Places" is not an ancestor of "Placesx|Rome", nor "Cat" of "Cats|Tabby".
    assert ancestors(["Places", "Placesx|Rome", "Cat", "Cats|Tabby"]) == [[], [], [], []]


def test_closing_upward_adds_every_ancestor_and_nothing_else():
    chosen = np.array([[False, False, True, False, True, False],
                       [False, False, False, True, False, False]])
    assert close_upward(chosen, ancestors(VOCAB)).tolist() == [[True, True, True, False, True, True],
                                                    [False, False, False, True, False, False]]


def test_a_chosen_child_brings_its_parents_even_past_top_k():
    decision = Decision(VOCAB, np.full(len(VOCAB), 0.5, dtype=np.float32), top_k=1,
                        parents=tuple(map(tuple, ancestors(VOCAB))))
    scores = np.array([0.1, 0.2, 0.9, 0.8, 0.3, 0.05], dtype=np.float32)
    assert decision.tags(scores) == [("Animals|Dog|Puppy", pytest.approx(0.9)), ("Animals|Dog", pytest.approx(0.2)),
                                     ("Animals", pytest.approx(0.1))]
    flat = Decision(VOCAB, np.full(len(VOCAB), 0.5, dtype=np.float32), top_k=1)  # no tree: the old rule
    assert [t for t, _ in flat.tags(scores)] == ["Animals|Dog|Puppy"]


def test_parent_thresholds_are_calibrated_knowing_what_the_children_bring():
    from train.metrics import calibrate_thresholds, f1_summary

    rng = np.random.default_rng(0)
    n = 400
    labels = ["Animals", "Animals|Dog"]
    dog = rng.random(n) < 0.3
    other_animal = ~dog & (rng.random(n) < 0.1)
    targets = np.stack([dog | other_animal, dog], axis=1)
    # The child's scores separate its photos well; the parent's own scores barely do.
    scores = np.stack([np.clip(0.4 + 0.1 * (dog | other_animal) + 0.3 * rng.random(n), 0, 1),
                       np.where(dog, 0.7, 0.3) + 0.05 * rng.random(n)], axis=1)
    aware, aware_f1 = calibrate_thresholds(scores, targets, labels)
    blind, _ = calibrate_thresholds(scores, targets)
    assert aware[1] == pytest.approx(blind[1])  # the leaf has nothing below it
    with_tree = f1_summary(scores, targets, aware, labels)["f1"]
    assert with_tree[0] == pytest.approx(100 * aware_f1[0], abs=1e-3)  # reported as tagging decides
    # The blind threshold, closed over the tree as `tagger tag` will, does worse for the parent.
    assert with_tree[0] > f1_summary(scores, targets, blind, labels)["f1"][0] + 1.0


def test_only_the_childrens_photos_when_the_parents_own_scores_add_nothing():
    from train.metrics import calibrate_thresholds

    labels = ["Animals", "Animals|Dog"]
    targets = np.array([[1, 1], [1, 1], [0, 0], [0, 0]])
    scores = np.array([[0.2, 0.9], [0.1, 0.8], [0.6, 0.1], [0.7, 0.2]])  # parent's own scores are upside down
    thresholds, f1 = calibrate_thresholds(scores, targets, labels)
    assert thresholds[0] > 0.7 and f1[0] == pytest.approx(1.0)


def test_tagging_writes_the_parent_of_a_tagged_child(tmp_path):
    labels = ["Colour|red", COLOUR_LABELS[1], COLOUR_LABELS[2], "Colour"]  # the 4th column scores low on red
    metadata = build_metadata(labels, [0.5, 0.5, 0.5, 0.99], Preprocess(32, "shortest", "bilinear"),
                              {"name": "tree", "backbone": "mean-colour", "created": datetime.date.today().isoformat()})
    model = build_colour_model(tmp_path / "tree.onnx", metadata=metadata)
    photo = solid_photo(tmp_path / "red.jpg", (230, 20, 20))
    result = CliRunner().invoke(cli, ["tag", str(photo), "--model", str(model), "--write", "json,xmp"])
    assert result.exit_code == 0, result.output
    doc = json.loads((tmp_path / "red.jpg.json").read_text())
    assert [t["tag"] for t in doc["tags"]] == ["Colour|red", "Colour"]
    assert doc["scores"]["Colour"] < 0.99  # its own score did not choose it: its child did
    xmp = (tmp_path / "red.jpg.xmp").read_text()
    assert "Colour|red" in xmp and "<rdf:li>Colour</rdf:li>" in xmp


def test_precision_and_recall_count_the_tags_tagging_writes():
    from train.metrics import precision_recall

    labels = ["Animals", "Animals|Dog", "Cat"]
    scores = np.array([[0.1, 0.9, 0.2], [0.6, 0.2, 0.7], [0.2, 0.3, 0.1], [0.1, 0.8, 0.9]])
    targets = np.array([[1, 1, 0], [0, 0, 1], [1, 0, 0], [1, 1, 0]])
    thresholds = [0.5, 0.5, 0.5]
    precision, recall = precision_recall(scores, targets, thresholds, labels)
    # Animals: photos 0 and 3 brought by their dog, photo 1 by its own score: 2 of 3 right, 2 of 3 found.
    assert precision[0] == pytest.approx(100 * 2 / 3, abs=1e-3) and recall[0] == pytest.approx(100 * 2 / 3, abs=1e-3)
    assert precision[1] == 100.0 and recall[1] == 100.0
    assert precision[2] == 50.0 and recall[2] == 100.0  # photo 3 is no cat
    blind, _ = precision_recall(scores, targets, thresholds)
    assert blind[0] == 0.0  # without the tree, only photo 1 (a false alarm) is tagged Animals
    nothing, none_found = precision_recall(np.zeros((2, 1)), np.zeros((2, 1)), [0.5])
    assert nothing == [None] and none_found == [None]  # undefined, not 0
