"""Training inputs: label sources, tag matching, bad labels files and CSVs, corrupt photos."""
import json
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

pytest.importorskip("torch")
pytest.importorskip("open_clip")

from tagger.cli import cli  # noqa: E402
from tagger.errors import LabelsError  # noqa: E402
from train.data import TagMatcher, collect_labels, read_annotations  # noqa: E402
from train.synthetic import generate_dataset  # noqa: E402

TINY = str(Path(__file__).resolve().parents[1] / "train" / "model_configs" / "tagger-tiny.json")


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory):
    return generate_dataset(tmp_path_factory.mktemp("syn") / "data", n_train=60, n_test=0, seed=5)


@pytest.fixture
def data(tmp_path, synthetic):
    """A private copy: tests add corrupt files, sidecars and CSVs to it."""
    root = tmp_path / "data"
    shutil.copytree(synthetic.root, root)
    return root


def run_train(*args):
    result = CliRunner().invoke(cli, ["train", "--backbone", TINY, "--no-keywords", "-q", *map(str, args)])
    return result


def test_tag_matcher_understands_hierarchy():
    m = TagMatcher(["Animals", "Animals|Dog", "Sky|Sun", "beach"])
    assert m.match("Animals|Dog") == {0, 1}  # the ancestor is implied
    assert m.match("dog") == {1}  # a flat keyword names the unique leaf
    assert m.match("Nature|Sky|Sun") == {2}
    assert m.match("BEACH") == {3}
    assert m.match("Sky") == set() and m.match("Paris") == set()


def test_csv_sidecar_and_keyword_sources(data, tmp_path):
    labels = ["box", "ball", "Sky|Sun"]
    photos = sorted((data / "train").glob("*.jpg"))
    (data / "train" / "sub").mkdir()
    extra = data / "train" / "sub" / "kw.jpg"
    shutil.copy(photos[0], extra)
    # Keywords the way Lightroom writes them: hierarchical plus every level flat.
    subprocess.run(["exiftool", "-q", "-overwrite_original", "-XMP-lr:HierarchicalSubject=Sky|Sun",
                    "-XMP-dc:Subject=Sky", "-XMP-dc:Subject=Sun", "-XMP-dc:Subject=holiday", str(extra)], check=True)
    (photos[1].parent / (photos[1].name + ".json")).write_text(json.dumps({"labels": ["ball", "unknown thing"]}))
    csv = tmp_path / "labels.csv"
    csv.write_text(f"path,tags\n{photos[2].name},box;Sky|Sun\n", encoding="utf-8")
    found = collect_labels(data / "train", labels, csv, keywords=True)
    by_name = {p.name: found.targets[i].tolist() for i, p in enumerate(found.paths)}
    assert by_name[photos[2].name] == [1, 0, 1]
    assert by_name[photos[1].name] == [0, 1, 0]
    assert by_name["kw.jpg"] == [0, 0, 1]
    assert found.ignored == {"unknown thing": 1, "holiday": 1}  # "Sky"/"Sun" are levels, not extra tags
    assert found.sources == {"csv": 1, "sidecar": 1, "keywords": 1}
    assert found.unlabelled == len(photos) + 1 - 3


def test_csv_row_outside_data_folder_is_an_error(data, tmp_path):
    csv = tmp_path / "bad.csv"
    csv.write_text("train/img_00.jpg,box\n../mytags.txt,ball\n", encoding="utf-8")
    with pytest.raises(LabelsError, match=r"line 2: '\.\./mytags\.txt' is outside the data folder"):
        read_annotations(csv, data / "train")
    result = run_train("--labels", data / "mytags.txt", "--data", data / "train", "--annotations", csv,
                       "--out", tmp_path / "run")
    assert result.exit_code == 1
    assert "bad.csv: line 2" in result.output and "outside the data folder" in result.output
    assert "Traceback" not in result.output


def test_csv_not_utf8_and_missing_rows(data, tmp_path):
    csv = tmp_path / "latin.csv"
    csv.write_bytes("img_00.jpg,caf\xe9\n".encode("latin-1"))
    with pytest.raises(LabelsError, match="not UTF-8"):
        read_annotations(csv, data / "train")
    csv.write_text("img_00.jpg,box\nnope.jpg,ball\n", encoding="utf-8")
    rows, missing = read_annotations(csv, data / "train")
    assert len(rows) == 1 and "nope.jpg" in missing[0] and "line 2" in missing[0]


@pytest.mark.parametrize("content, reason", [
    ("box\nball\n\n# comment\nbox\n", "line 5: duplicate tag 'box' (first on line 1)"),
    ("box\nSky||Sun\n", "line 2: empty tag level"),
    (b"caf\xe9\n", "not UTF-8"),
    ("# nothing\n\n", "no tags"),
])
def test_bad_labels_files(data, tmp_path, content, reason):
    labels = tmp_path / "mytags.txt"
    labels.write_bytes(content if isinstance(content, bytes) else content.encode("utf-8"))
    result = run_train("--labels", labels, "--data", data / "train", "--annotations", data / "train.csv",
                       "--out", tmp_path / "run")
    assert result.exit_code == 1, result.output
    assert str(labels) in result.output and reason in result.output
    assert "Traceback" not in result.output


def test_tag_without_positives_stops_unless_dropped(data, tmp_path):
    labels = tmp_path / "mytags.txt"
    labels.write_text((data / "mytags.txt").read_text() + "unicorn\n", encoding="utf-8")
    args = ["--labels", labels, "--data", data / "train", "--annotations", data / "train.csv",
            "--epochs", 0, "--stage2-epochs", 0]
    result = run_train(*args, "--out", tmp_path / "run1")
    assert result.exit_code == 1
    assert "no positive photo" in result.output and "'unicorn'" in result.output and "--drop-empty" in result.output
    result = run_train(*args, "--out", tmp_path / "run2", "--drop-empty")
    assert result.exit_code == 0, result.output
    dropping = [line for line in result.output.splitlines() if line.startswith("dropping ")]
    assert len(dropping) == 1 and "'unicorn'" in dropping[0]
    assert "unicorn" not in json.loads((tmp_path / "run2" / "dataset.json").read_text())["labels"]


def test_corrupt_photos_are_skipped_and_counted(data, tmp_path):
    train = data / "train"
    (train / "img_00.jpg").write_bytes(b"")  # zero bytes
    (train / "img_01.jpg").write_bytes((train / "img_02.jpg").read_bytes()[:300])  # truncated
    (train / "notes.png").write_text("not an image")  # wrong content, listed in the CSV
    with open(data / "train.csv", "a", encoding="utf-8") as fh:
        fh.write("notes.png,box\n")
    result = run_train("--labels", data / "mytags.txt", "--data", train, "--annotations", data / "train.csv",
                       "--out", tmp_path / "run", "--epochs", 0, "--stage2-epochs", 0, "--drop-empty")
    assert result.exit_code == 0, result.output
    assert "skipped 3 photos that could not be decoded" in result.output
    assert "img_00.jpg: empty file (0 bytes)" in result.output
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert metrics["skipped_images"] == 3
    assert metrics["train_images"] + metrics["val_images"] == 60 + 1 - 3
    histogram = result.output[result.output.index("tag "):]
    assert "head" in histogram and "tail" in histogram


def test_cache_is_reused_and_pixels_come_from_the_runtime_decoder(data, tmp_path):
    from tagger.images import load_image
    from train.runs import load_run

    args = ["--labels", data / "mytags.txt", "--data", data / "train", "--annotations", data / "train.csv",
            "--epochs", 0, "--stage2-epochs", 0, "--drop-empty"]
    assert run_train(*args, "--out", tmp_path / "run").exit_code == 0
    run = load_run(tmp_path / "run")
    first = run.dataset["val"][0]["path"]
    assert np.array_equal(run.validation_images()[0], load_image(first, run.preprocess))
    cache = next((tmp_path / "run" / "cache").glob("*.npy"))
    stamp = cache.stat().st_mtime_ns
    result = CliRunner().invoke(cli, ["train", "--resume", "--out", str(tmp_path / "run"), "-q"])
    assert result.exit_code == 0, result.output
    assert cache.stat().st_mtime_ns == stamp  # nothing decoded again


def test_load_run_refuses_labels_and_thresholds_that_do_not_line_up(data, tmp_path):
    from train.runs import RunError, load_run

    args = ["--labels", data / "mytags.txt", "--data", data / "train", "--annotations", data / "train.csv",
            "--epochs", 0, "--stage2-epochs", 0, "--drop-empty", "--out", tmp_path / "run"]
    assert run_train(*args).exit_code == 0
    metrics_file = tmp_path / "run" / "metrics.json"
    good = json.loads(metrics_file.read_text())
    load_run(tmp_path / "run")
    swapped = dict(good, tags=[good["tags"][1], good["tags"][0], *good["tags"][2:]])
    metrics_file.write_text(json.dumps(swapped))
    with pytest.raises(RunError, match=f"tag 1 is {good['tags'][1]['tag']!r} here but"):
        load_run(tmp_path / "run")
    metrics_file.write_text(json.dumps(dict(good, thresholds=good["thresholds"][:-1])))
    with pytest.raises(RunError, match="thresholds for .* tags in dataset.json"):
        load_run(tmp_path / "run")


def test_not_a_run_and_missing_extras_messages(tmp_path):
    from train.runs import RunError, load_run

    with pytest.raises(RunError, match="not a training run"):
        load_run(tmp_path)
    result = CliRunner().invoke(cli, ["train", "--resume", "--out", str(tmp_path)])
    assert result.exit_code == 1 and "--resume" in result.output and "config.json" in result.output
    result = CliRunner().invoke(cli, ["train", "--data", str(tmp_path)])
    assert result.exit_code == 2 and "--labels and --data are required" in result.output


@pytest.mark.skipif(not shutil.which("exiftool"), reason="needs exiftool")
def test_raw_photos_with_lightroom_sidecars_are_training_data(tmp_path):
    pytest.importorskip("rawpy")
    from bench.dng import write_dng
    from tagger.images import load_image
    from train.runs import load_run

    data = tmp_path / "raw"
    data.mkdir()
    for i in range(24):
        colour = (230, 20, 20) if i % 2 else (20, 20, 230)
        tag = "red" if i % 2 else "blue"
        scene = np.full((120, 160, 3), colour, np.uint8)
        photo = write_dng(data / f"IMG_{i:04}.{'CR2' if i % 3 else 'dng'}", scene, preview=scene if i % 4 else None)
        # Lightroom keeps a RAW file's keywords in IMG.xmp beside it.
        subprocess.run(["exiftool", "-q", "-o", str(photo.with_suffix(".xmp")), f"-XMP-dc:Subject={tag}"], check=True)
    labels = tmp_path / "labels.txt"
    labels.write_text("red\nblue\n")

    result = CliRunner().invoke(cli, ["train", "--labels", str(labels), "--data", str(data), "--backbone", TINY,
                                      "--out", str(tmp_path / "run"), "--epochs", 0, "--stage2-epochs", 0, "-q"])

    assert result.exit_code == 0, result.output
    run = load_run(tmp_path / "run")
    rows = run.dataset["train"] + run.dataset["val"]
    assert len(rows) == 24 and {Path(r["path"]).suffix for r in rows} == {".CR2", ".dng"}
    first = run.dataset["val"][0]["path"]
    assert np.array_equal(run.validation_images()[0], load_image(first, run.preprocess))
