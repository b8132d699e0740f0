"""Review decisions in the sidecar JSON: how they are recorded, and what training makes of them."""
import json

import pytest

from tagger.decisions import read_decisions, record_decision, rejection_pending
from tagger.errors import WriteError
from tests.conftest import solid_photo
from train.data import collect_labels

TAGGER_SIDECAR = {"tagger": 1, "file": "a.jpg", "size": 1, "mtime": 1.0, "model": {"name": "m", "sha256": "x"},
                  "tags": [{"tag": "dog", "score": 0.8}], "scores": {"dog": 0.8, "cat": 0.3}, "note": "kept"}


def write(path, data):
    path.write_text(json.dumps(data), encoding="utf-8")


def test_a_decision_keeps_the_rest_of_the_sidecar_and_one_list_per_tag(tmp_path):
    photo = solid_photo(tmp_path / "a.jpg", (10, 20, 30))
    write(tmp_path / "a.jpg.json", TAGGER_SIDECAR)
    record_decision(photo, "dog", "reject")
    data = json.loads((tmp_path / "a.jpg.json").read_text())
    assert data["not_labels"] == ["dog"] and "labels" not in data  # a "no" alone labels nothing else
    assert {k: data[k] for k in TAGGER_SIDECAR} == TAGGER_SIDECAR
    assert rejection_pending(photo)  # the sidecar still lists dog: the next `tagger tag` redoes it

    assert record_decision(photo, "dog", "accept").labels == ("dog",)
    assert read_decisions(photo).not_labels == ()  # accepting undoes the rejection
    record_decision(photo, "cat", "reject")
    record_decision(photo, "dog", "clear")
    decided = read_decisions(photo)
    assert decided.labels == () and decided.not_labels == ("cat",)
    assert not rejection_pending(photo)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.jpg", "a.jpg.json"]  # no temporary left


def test_a_sidecar_that_is_not_ours_is_never_overwritten(tmp_path):
    photo = solid_photo(tmp_path / "a.jpg", (10, 20, 30))
    (tmp_path / "a.jpg.json").write_text("not json")
    with pytest.raises(WriteError, match="a.jpg.json"):
        record_decision(photo, "dog", "accept")
    assert (tmp_path / "a.jpg.json").read_text() == "not json"
    write(tmp_path / "a.jpg.json", {"not_labels": "dog"})
    with pytest.raises(WriteError, match="not_labels"):
        record_decision(photo, "dog", "accept")


def test_rejections_are_known_negatives_that_win_over_other_sources(tmp_path):
    labels = ["Animals", "Animals|Dog", "cat"]
    root = tmp_path / "data"
    solid_photo(root / "a.jpg", (1, 2, 3))  # CSV says dog (a catalog mistake), the user rejected it
    solid_photo(root / "b.jpg", (1, 2, 3))  # CSV says cat, sidecar confirms cat and rejects dog
    solid_photo(root / "c.jpg", (1, 2, 3))  # only a rejection: its other tags are unknown
    (tmp_path / "tags.csv").write_text("a.jpg,Animals|Dog;cat\nb.jpg,cat\n")
    write(root / "a.jpg.json", {**TAGGER_SIDECAR, "not_labels": ["Animals|Dog"]})
    write(root / "b.jpg.json", {"labels": ["cat"], "not_labels": ["Dog"]})
    write(root / "c.jpg.json", {**TAGGER_SIDECAR, "not_labels": ["cat"]})
    photos = collect_labels(root, labels, tmp_path / "tags.csv", keywords=False)
    rows = {p.name: list(t) for p, t in zip(photos.paths, photos.targets)}
    # Rejecting Animals|Dog clears that tag only: "Animals" still came from the hierarchy.
    assert rows == {"a.jpg": [1, 0, 1], "b.jpg": [0, 0, 1]}
    assert photos.rejected == {"Animals|Dog": 1}
