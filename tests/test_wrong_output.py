"""Issue 12, wrong output and messages: model outputs the writers cannot store, names that drive the
terminal, links, damaged packets, and the smaller inconsistencies, each with a real run."""
from __future__ import annotations

import datetime
import json
import os
import shutil
import subprocess
import sys

import numpy as np
import onnx
import pytest
from click.testing import CliRunner
from onnx import TensorProto, helper, numpy_helper

from tagger.cli import cli
from tagger.images import Preprocess
from tagger.modelfile import build_metadata
from tests.conftest import solid_photo
from tests.metadata_util import copy_sample, exiftool_json, keywords_in, result_for
from tests.onnx_models import COLOUR_LABELS, build_colour_model
from tests.test_bad_input import failures

needs_exiftool = pytest.mark.skipif(shutil.which("exiftool") is None, reason="needs exiftool (libimage-exiftool-perl)")


def constant_model(path, scores: list[float], labels=COLOUR_LABELS, name="constant"):
    """A real ONNX model whose scores are `scores` for every photo (0·pixels + constant)."""
    nodes = [helper.make_node("Cast", ["image"], ["f"], to=TensorProto.FLOAT),
             helper.make_node("ReduceMean", ["f"], ["mean"], axes=[1, 2, 3], keepdims=0),
             helper.make_node("Unsqueeze", ["mean", "axis"], ["col"]),
             helper.make_node("Mul", ["col", "zero"], ["zeros"]),
             helper.make_node("Add", ["zeros", "const"], ["scores"])]
    inits = [numpy_helper.from_array(np.array([1], dtype=np.int64), "axis"),
             numpy_helper.from_array(np.zeros((1, len(labels)), dtype=np.float32), "zero"),
             numpy_helper.from_array(np.array([scores], dtype=np.float32), "const")]
    graph = helper.make_graph(nodes, "constant", [helper.make_tensor_value_info("image", TensorProto.UINT8,
                                                                               ["batch", 32, 32, 3])],
                              [helper.make_tensor_value_info("scores", TensorProto.FLOAT, ["batch", len(labels)])],
                              inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    helper.set_model_props(model, build_metadata(labels, [0.5] * len(labels), Preprocess(32, "shortest", "bilinear"),
                                                 {"name": name, "backbone": "constant",
                                                  "created": datetime.date.today().isoformat()}))
    onnx.save(model, str(path))
    return path


# -- 12. model outputs and labels -------------------------------------------------------------------
@pytest.mark.parametrize("bad", [float("nan"), float("inf"), 1e30, -0.5])
def test_scores_outside_0_1_are_refused_per_photo_and_never_written(tmp_path, bad):
    model = constant_model(tmp_path / "m.onnx", [0.9, bad, 0.1, 0.2])
    photo = solid_photo(tmp_path / "photos" / "IMG.jpg", (250, 5, 5))
    result = CliRunner().invoke(cli, ["tag", str(photo.parent), "--model", str(model), "--write", "json,xmp"])
    assert result.exit_code == 3, result.output
    assert "outside [0, 1]" in failures(result.output)["IMG.jpg"]
    assert not photo.with_name("IMG.jpg.json").exists() and not photo.with_name("IMG.jpg.xmp").exists()


@pytest.mark.parametrize("labels,name,reason", [
    (["red", "Red", "blue", "x"], "m", "differ only in case"),
    (COLOUR_LABELS, "two\nlines", "control character"),
])
def test_labels_or_name_the_writers_cannot_store_are_refused_at_export_and_open(tmp_path, labels, name, reason):
    with pytest.raises(Exception, match=reason):
        build_metadata(labels, [0.5] * 4, Preprocess(32, "shortest", "bilinear"),
                       {"name": name, "backbone": "x", "created": "2026-12-03"})
    meta = {"tagger.format": "1", "tagger.labels": json.dumps(labels), "tagger.thresholds": json.dumps([0.5] * 4),
            "tagger.preprocess": json.dumps(Preprocess(32, "shortest", "bilinear").to_dict()),
            "tagger.model": json.dumps({"name": name, "backbone": "x", "created": "2026-12-03"})}
    model = build_colour_model(tmp_path / "m.onnx", metadata=meta)
    solid_photo(tmp_path / "photos" / "IMG.jpg", (250, 5, 5))
    result = CliRunner().invoke(cli, ["tag", str(tmp_path / "photos"), "--model", str(model)])
    assert result.exit_code == 1 and reason in result.output, result.output


# -- 13. names that drive the terminal or break the line ---------------------------------------------
def test_file_names_are_printed_escaped_one_line_each(tmp_path, colour_model):
    folder = tmp_path / "photos"
    folder.mkdir()
    evil = folder / "evil\x1b]0;pwned\x07\x1b[2J\r\nfake line.jpg"
    evil.write_bytes(b"not a photo")
    solid_photo(folder / "good.jpg", (250, 5, 5))
    run = subprocess.run([sys.executable, "-m", "tagger", "tag", str(folder), "--model", str(colour_model), "-q"],
                         capture_output=True, timeout=120)
    err = run.stderr.decode()
    assert run.returncode == 3, err
    assert "\x1b" not in err and "\x07" not in err and "\r" not in err
    failed = [line for line in err.splitlines() if "failed:" in line]
    assert len(failed) == 1 and "evil\\x1b]0;pwned\\x07\\x1b[2J\\r\\nfake line.jpg" in failed[0]


def test_dry_run_prints_valid_utf8_for_undecodable_names(tmp_path, colour_model):
    photo = solid_photo(tmp_path / os.fsdecode(b"caf\xe9.jpg"), (250, 5, 5))
    run = subprocess.run([sys.executable, "-m", "tagger", "tag", str(photo.parent), "--model", str(colour_model),
                          "--dry-run", "-q"], capture_output=True, timeout=120)
    assert run.returncode == 0, run.stderr.decode()
    line = json.loads(run.stdout.decode("utf-8"))  # strict: raises on invalid UTF-8
    assert line["file"] == "caf\\xe9.jpg"


# -- 14. links ---------------------------------------------------------------------------------------
@needs_exiftool
def test_a_symlinked_photo_is_written_through_once_and_stays_a_link(tmp_path, samples, colour_model):
    real = copy_sample(samples, "jpg/Canon_40D.jpg", tmp_path / "originals" / "IMG_1.jpg")
    folder = tmp_path / "album"
    folder.mkdir()
    (folder / "link.jpg").symlink_to(real)
    (folder / "z_real.jpg").symlink_to(real)  # a second link to the same photo: tagged once
    result = CliRunner().invoke(cli, ["tag", str(folder), str(real.parent), "--model", str(colour_model),
                                      "--write", "embed"])
    assert result.exit_code == 0, result.output
    assert "1 tagged" in result.output
    assert (folder / "link.jpg").is_symlink() and (folder / "z_real.jpg").is_symlink()
    assert "XMP-tagger:TaggerModel" in exiftool_json(real)[0]


@needs_exiftool
def test_a_hard_linked_photo_is_refused_and_keeps_its_links(tmp_path, samples, colour_model):
    photo = copy_sample(samples, "jpg/Canon_40D.jpg", tmp_path / "photos" / "IMG_1.jpg")
    os.link(photo, tmp_path / "elsewhere.jpg")
    result = CliRunner().invoke(cli, ["tag", str(photo.parent), "--model", str(colour_model), "--write", "embed"])
    assert result.exit_code == 3, result.output
    assert "hard links" in failures(result.output)["IMG_1.jpg"]
    assert photo.stat().st_ino == (tmp_path / "elsewhere.jpg").stat().st_ino


def test_a_symlinked_sidecar_is_written_through(tmp_path, colour_model):
    photo = solid_photo(tmp_path / "photos" / "IMG.jpg", (250, 5, 5))
    kept = tmp_path / "sidecars" / "IMG.jpg.xmp"
    kept.parent.mkdir()
    kept.write_text('<x:xmpmeta xmlns:x="adobe:ns:meta/"><rdf:RDF xmlns:rdf="http://www.w3.org/1999/02/'
                    '22-rdf-syntax-ns#"><rdf:Description rdf:about=""/></rdf:RDF></x:xmpmeta>')
    (photo.parent / "IMG.jpg.xmp").symlink_to(kept)
    result = CliRunner().invoke(cli, ["tag", str(photo.parent), "--model", str(colour_model), "--write", "xmp"])
    assert result.exit_code == 0, result.output
    assert (photo.parent / "IMG.jpg.xmp").is_symlink()
    assert "<rdf:li>red</rdf:li>" in kept.read_text()


# -- 15. the smaller ones ------------------------------------------------------------------------------
@needs_exiftool
def test_a_damaged_xmp_packet_is_refused_not_rewritten_without_a_keyword(tmp_path, samples, colour_model):
    data = (samples / "jpg/xmp/BlueSquare.jpg").read_bytes()
    good = b"<rdf:li>test file</rdf:li>"
    photo = tmp_path / "photos" / "damaged.jpg"
    photo.parent.mkdir()
    photo.write_bytes(data.replace(good, b"<rdf:li>test file</rdf:lx>", 1))
    before = photo.read_bytes()
    result = CliRunner().invoke(cli, ["tag", str(photo.parent), "--model", str(colour_model),
                                      "--write", "embed,xmp"])
    assert result.exit_code == 3, result.output
    failed = [line for line in result.output.splitlines() if "failed:" in line]
    assert len(failed) == 1 and "XMP inside this photo is damaged" in failed[0]
    assert photo.read_bytes() == before


@needs_exiftool
def test_the_same_failure_is_listed_once_not_once_per_writer(tmp_path, colour_model):
    from tagger.tagging import TagRun, Decision, Summary
    from tagger.modelfile import TaggerModel
    from tagger.writers import create_writer

    photo = solid_photo(tmp_path / "IMG.jpg", (250, 5, 5))
    model = TaggerModel(colour_model)
    run = TagRun(model=model, writers=[create_writer("embed"), create_writer("xmp")],
                 decision=Decision.for_model(model), batch_size=1, workers=1)
    stale = result_for(photo, ["red"])
    os.utime(photo, (1, 1))  # changed after decoding: both writers refuse for this one reason
    summary = Summary()
    run._write(stale, summary)
    assert [e.reason for e in summary.failed] == [
        "photo changed while it was being tagged; run again to tag the new version"]


def test_json_and_xmp_writers_both_refuse_a_read_only_sidecar(tmp_path, colour_model):
    photo = solid_photo(tmp_path / "IMG.jpg", (250, 5, 5))
    for name in ("IMG.jpg.json", "IMG.jpg.xmp"):
        CliRunner().invoke(cli, ["tag", str(tmp_path), "--model", str(colour_model), "--write", name.split(".")[-1]])
        os.chmod(tmp_path / name, 0o444)
    before = {n: (tmp_path / n).read_bytes() for n in ("IMG.jpg.json", "IMG.jpg.xmp")}
    result = CliRunner().invoke(cli, ["tag", str(tmp_path), "--model", str(colour_model), "--write", "json,xmp",
                                      "--force"])
    assert result.exit_code == 3, result.output
    failed = failures(result.output)
    assert "read-only" in failed["IMG.jpg.json"] and "read-only" in failed["IMG.jpg.xmp"]
    assert {n: (tmp_path / n).read_bytes() for n in before} == before
    assert photo.exists()


@needs_exiftool
def test_a_control_character_in_a_users_iptc_keyword_does_not_block_the_photo(tmp_path, samples, colour_model):
    photo = solid_photo(tmp_path / "photos" / "IMG.jpg", (250, 5, 5))
    args = tmp_path / "args"
    args.write_bytes(b"-IPTC:Keywords=mine\n-IPTC:Keywords=bad\x01kw\n-overwrite_original\n" + os.fsencode(photo) + b"\n")
    subprocess.run(["exiftool", "-q", "-@", str(args)], check=True)
    result = CliRunner().invoke(cli, ["tag", str(photo.parent), "--model", str(colour_model), "--write", "embed"])
    assert result.exit_code == 0, result.output
    words = keywords_in(photo)
    assert words["IPTC:Keywords"] == ["mine", "bad\x01kw", "red"]  # tagged, nothing lost
    assert words["XMP-dc:Subject"] == ["mine", "red"]  # copied for MWG readers where XMP can hold it
    from tagger.keywords import read_user_keywords

    assert "bad\x01kw" in read_user_keywords([photo])[photo]


def test_a_csv_row_for_a_photo_named_with_a_hash_is_a_row_not_a_comment(tmp_path):
    pytest.importorskip("torch")
    from train.data import read_annotations

    data = tmp_path / "data"
    solid_photo(data / "#1 best.jpg", (250, 5, 5))
    csv = tmp_path / "labels.csv"
    csv.write_text("path,tags\n# a comment line,ignored\n#1 best.jpg,red\n", encoding="utf-8")
    rows, missing = read_annotations(csv, data)
    assert {p.name: tags for p, tags in rows.items()} == {"#1 best.jpg": {"red"}}
    assert missing == []


def test_the_folder_walk_for_training_keeps_out_links_leaving_the_data_folder(tmp_path):
    pytest.importorskip("torch")
    from train.data import collect_labels

    data = tmp_path / "data"
    inside = solid_photo(data / "in.jpg", (250, 5, 5))
    outside = solid_photo(tmp_path / "private" / "secret.jpg", (5, 5, 250))
    (data / "link.jpg").symlink_to(outside)
    for sidecar in (inside.with_name("in.jpg.json"), data / "link.jpg.json"):
        sidecar.write_text(json.dumps({"labels": ["red"]}))
    found = collect_labels(data, ["red", "blue"], keywords=False)
    assert [p.name for p in found.paths] == ["in.jpg"]
    assert any("outside the data folder" in w and "link.jpg" in w for w in found.warnings)
