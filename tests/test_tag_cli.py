"""`tagger tag` end to end on real files with a real ONNX Runtime session."""
import json
import os
import shutil

import numpy as np
from click.testing import CliRunner

from tagger.cli import cli
from tests.conftest import solid_photo
from tests.onnx_models import COLOUR_LABELS, colour_scores


def run(*args):
    result = CliRunner().invoke(cli, ["tag", *map(str, args)])
    return result


def sidecar(photo):
    return json.loads((photo.parent / (photo.name + ".json")).read_text(encoding="utf-8"))


def test_tags_every_photo_and_writes_sidecars(photo_tree, colour_model):
    result = run(photo_tree, "--model", colour_model)
    assert result.exit_code == 0, result.output
    photos = sorted(p for p in photo_tree.rglob("*") if p.suffix.lower() in {".jpg", ".png", ".webp"})
    assert len(photos) == 5
    for photo in photos:
        doc = sidecar(photo)
        assert doc["tagger"] == 1 and doc["file"] == photo.name
        assert doc["size"] == photo.stat().st_size and doc["mtime"] == photo.stat().st_mtime
        assert doc["model"]["name"] == "colours" and len(doc["model"]["sha256"]) == 64
        assert list(doc["scores"]) == COLOUR_LABELS
    assert [t["tag"] for t in sidecar(photo_tree / "red.jpg")["tags"]] == ["red"]
    assert [t["tag"] for t in sidecar(photo_tree / "nested" / "blue.PNG")["tags"]] == ["blue"]
    assert [t["tag"] for t in sidecar(photo_tree / "nested" / "deeper" / "green.webp")["tags"]] == ["green"]
    assert "5 tagged, 0 skipped (up to date), 0 failed" in result.output


def test_scores_match_the_model_definition(tmp_path, colour_model):
    photo = solid_photo(tmp_path / "c.png", (200, 100, 30))
    assert run(photo, "--model", colour_model).exit_code == 0
    expected = colour_scores(np.array([200, 100, 30], dtype=np.float32) / 255)
    got = np.array([sidecar(photo)["scores"][label] for label in COLOUR_LABELS])
    np.testing.assert_allclose(got, expected, atol=1e-3)


def test_rerun_skips_up_to_date_and_force_redoes(photo_tree, colour_model):
    assert run(photo_tree, "--model", colour_model).exit_code == 0
    again = run(photo_tree, "--model", colour_model)
    assert "0 tagged, 5 skipped" in again.output
    red = photo_tree / "red.jpg"
    solid_photo(red, (5, 5, 250))  # the photo changed: it must be re-tagged, as blue now
    os.utime(red, (1_700_000_000, 1_700_000_000))
    changed = run(photo_tree, "--model", colour_model)
    assert "1 tagged, 4 skipped" in changed.output
    assert [t["tag"] for t in sidecar(red)["tags"]] == ["blue"]
    forced = run(photo_tree, "--model", colour_model, "--force")
    assert "5 tagged, 0 skipped" in forced.output


def test_new_model_retags(photo_tree, colour_model, tmp_path):
    from tests.onnx_models import build_colour_model

    assert run(photo_tree, "--model", colour_model).exit_code == 0
    other = build_colour_model(tmp_path / "other.onnx", name="other", thresholds=[0.9] * 4)
    result = run(photo_tree, "--model", other)
    assert "5 tagged, 0 skipped" in result.output
    assert sidecar(photo_tree / "red.jpg")["model"]["name"] == "other"


def test_user_labels_key_survives_rewrite(tmp_path, colour_model):
    photo = solid_photo(tmp_path / "p.jpg", (250, 5, 5))
    (tmp_path / "p.jpg.json").write_text(json.dumps({"labels": ["holiday", "Animals|Dog"], "note": "mine"}))
    assert run(photo, "--model", colour_model).exit_code == 0
    doc = sidecar(photo)
    assert doc["labels"] == ["holiday", "Animals|Dog"] and doc["note"] == "mine"
    assert doc["tags"][0]["tag"] == "red"


def test_foreign_json_is_never_overwritten(tmp_path, colour_model):
    photo = solid_photo(tmp_path / "p.jpg", (250, 5, 5))
    (tmp_path / "p.jpg.json").write_text("not json {")
    result = run(photo, "--model", colour_model)
    assert result.exit_code == 3
    assert "p.jpg.json: existing file is not valid JSON; not overwritten" in result.output
    assert (tmp_path / "p.jpg.json").read_text() == "not json {"


def test_threshold_and_top_k(tmp_path, colour_model):
    photo = solid_photo(tmp_path / "w.png", (255, 255, 255))  # white: every logistic is high-ish
    run(photo, "--model", colour_model, "--threshold", "0.0")
    assert len(sidecar(photo)["tags"]) == 4
    scores = [t["score"] for t in sidecar(photo)["tags"]]
    assert scores == sorted(scores, reverse=True)
    run(photo, "--model", colour_model, "--threshold", "0.0", "--top-k", "2", "--force")
    assert len(sidecar(photo)["tags"]) == 2


def test_per_tag_thresholds_from_the_model(tmp_path):
    from tests.onnx_models import build_colour_model

    model = build_colour_model(tmp_path / "strict.onnx", thresholds=[0.999, 0.5, 0.5, 0.5])
    photo = solid_photo(tmp_path / "r.png", (230, 20, 20))  # red score ~0.99: below 0.999
    run(photo, "--model", model)
    assert sidecar(photo)["tags"] == []


def test_dry_run_prints_json_lines_and_writes_nothing(photo_tree, colour_model):
    result = CliRunner().invoke(cli, ["tag", str(photo_tree), "--model", str(colour_model), "--dry-run"])
    assert result.exit_code == 0
    lines = [json.loads(line) for line in result.stdout.splitlines() if line.startswith("{")]
    assert len(lines) == 5 and {doc["file"] for doc in lines} >= {"red.jpg", "blue.PNG"}
    assert not list(photo_tree.rglob("*.json"))


def test_exclude_and_hidden_folders(photo_tree, colour_model):
    solid_photo(photo_tree / ".thumbnails" / "t.jpg", (1, 2, 3))
    solid_photo(photo_tree / "._red.jpg", (1, 2, 3))
    result = run(photo_tree, "--model", colour_model, "--exclude", "deeper", "--exclude", "*.PNG")
    assert result.exit_code == 0
    assert "3 tagged" in result.output
    assert not (photo_tree / "nested" / "deeper" / "green.webp.json").exists()
    assert not (photo_tree / "nested" / "blue.PNG.json").exists()
    assert not (photo_tree / ".thumbnails" / "t.jpg.json").exists()


def test_model_from_the_store_by_name_and_default(photo_tree, colour_model, tagger_home):
    (tagger_home / "models").mkdir(parents=True)
    shutil.copy(colour_model, tagger_home / "models" / "colours.onnx")
    assert run(photo_tree, "--model", "colours").exit_code == 0
    assert run(photo_tree, "--force").exit_code == 0  # the only installed model is the default
    listing = CliRunner().invoke(cli, ["models"])
    assert listing.exit_code == 0
    assert listing.output.split("\t")[:3] == ["colours", "4 tags", "mean-colour"]


def test_fatal_errors_exit_1(tmp_path, colour_model, photo_tree):
    missing = run(tmp_path / "nope", "--model", colour_model)
    assert missing.exit_code == 1 and "nope: no such file or folder" in missing.output
    no_model = run(photo_tree, "--model", tmp_path / "absent.onnx")
    assert no_model.exit_code == 1 and "absent.onnx: model file not found" in no_model.output
    none_installed = run(photo_tree)
    assert none_installed.exit_code == 1 and "no model installed" in none_installed.output
    not_onnx = tmp_path / "fake.onnx"
    not_onnx.write_bytes(b"\x00garbage" * 100)
    bad = run(photo_tree, "--model", not_onnx)
    assert bad.exit_code == 1 and "fake.onnx: not a valid ONNX model" in bad.output


def test_onnx_model_that_is_not_ours(tmp_path, photo_tree):
    from tests.onnx_models import build_colour_model

    foreign = build_colour_model(tmp_path / "foreign.onnx", metadata={"author": "someone"})
    result = run(photo_tree, "--model", foreign)
    assert result.exit_code == 1
    assert "foreign.onnx: not a tagger model (no tagger.format metadata)" in result.output


def test_usage_errors_exit_2(photo_tree, colour_model):
    assert run(photo_tree, "--model", colour_model, "--write", "pdf").exit_code == 2
    assert run(photo_tree, "--model", colour_model, "--threshold", "1.5").exit_code == 2
    assert CliRunner().invoke(cli, ["tag"]).exit_code == 2


def test_unicode_and_odd_names(tmp_path, colour_model):
    folder = tmp_path / "Ferien 2024 — Zürich"
    odd = [solid_photo(folder / "été à la plage.jpg", (250, 5, 5)),
           solid_photo(folder / "写真 #1 (copy).JPEG", (5, 250, 5)),
           solid_photo(folder / "-leading dash.jpg", (5, 5, 250))]
    result = run(folder, "--model", colour_model)
    assert result.exit_code == 0, result.output
    for photo in odd:
        assert sidecar(photo)["file"] == photo.name


def test_write_json_xmp_embed_then_rerun_then_untag(tmp_path, samples, colour_model):
    """All three writers through the CLI with a real exiftool: re-runs skip, untag restores."""
    import subprocess

    photo = tmp_path / "Canon_40D.jpg"
    shutil.copy(samples / "jpg" / "Canon_40D.jpg", photo)
    photo.chmod(0o644)  # the samples are read-only, and so is a plain copy
    first = run(tmp_path, "--model", colour_model, "--write", "json,xmp,embed", "--threshold", "0")
    assert first.exit_code == 0, first.output
    assert "1 tagged" in first.output
    embedded = subprocess.run(["exiftool", "-s3", "-sep", ";", "-XMP-dc:Subject", str(photo)],
                              capture_output=True, text=True).stdout.strip().split(";")
    assert {"red", "green", "blue", "Light", "bright"} <= set(embedded)
    sidecar_xmp = (tmp_path / "Canon_40D.jpg.xmp").read_text(encoding="utf-8")
    assert "Light|bright" in sidecar_xmp
    assert sidecar(photo)["size"] == photo.stat().st_size  # recorded after the embed changed the file

    again = run(tmp_path, "--model", colour_model, "--write", "json,xmp,embed", "--threshold", "0")
    assert "0 tagged, 1 skipped" in again.output

    untag = CliRunner().invoke(cli, ["untag", str(tmp_path)])
    assert untag.exit_code == 0, untag.output
    left = subprocess.run(["exiftool", "-s3", "-XMP-dc:Subject", str(photo)], capture_output=True, text=True)
    assert "red" not in left.stdout


def test_bad_keyword_prefix_is_a_usage_error(tmp_path, colour_model):
    result = run(tmp_path, "--model", colour_model, "--write", "xmp", "--keyword-prefix", "a||b")
    assert result.exit_code == 2 and "--keyword-prefix" in result.output
