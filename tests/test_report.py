"""report.html: `tagger train` writes it, `tagger report RUN` rebuilds it, and it shows metrics.json's figures."""
import base64
import io
import json
import re
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

torch = pytest.importorskip("torch")
pytest.importorskip("open_clip")
pytest.importorskip("matplotlib")

from tagger.cli import cli  # noqa: E402
from tagger.thumbnails import make_thumbnail  # noqa: E402
from train.synthetic import generate_dataset  # noqa: E402

TINY = str(Path(__file__).resolve().parents[1] / "train" / "model_configs" / "tagger-tiny.json")


class ReportParser(HTMLParser):
    """The parts of the page a reader relies on: table rows, inline images, thumbnail boxes, styles."""

    def __init__(self):
        super().__init__()
        self.rows: dict[str, list[str]] = {}
        self.images: dict[str, str] = {}  # alt -> src
        self.thumb_classes: list[str] = []
        self.style = ""
        self._row = None
        self._cell = None
        self._in_style = False
        self.stack: list[str] = []

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if tag not in ("meta", "img", "br"):
            self.stack.append(tag)
        if tag == "tr" and "data-tag" in attrs:
            self._row = attrs["data-tag"]
            self.rows[self._row] = []
        elif tag == "td" and self._row is not None:
            self._cell = ""
        elif tag == "img":
            self.images[attrs.get("alt", "")] = attrs["src"]
        elif tag == "div" and "img" in attrs.get("class", "").split():
            self.thumb_classes.append(attrs["class"])
        elif tag == "style":
            self._in_style = True

    def handle_endtag(self, tag):
        assert self.stack and self.stack[-1] == tag, f"unbalanced </{tag}> (open: {self.stack[-3:]})"
        self.stack.pop()
        if tag == "td" and self._cell is not None:
            self.rows[self._row].append(self._cell.strip())
            self._cell = None
        elif tag == "tr":
            self._row = None
        elif tag == "style":
            self._in_style = False

    def handle_data(self, data):
        if self._cell is not None:
            self._cell += data
        if self._in_style:
            self.style += data


def parse(path: Path) -> ReportParser:
    parser = ReportParser()
    parser.feed(path.read_text(encoding="utf-8"))
    parser.close()
    assert parser.stack == [], f"unclosed elements: {parser.stack}"
    return parser


def fmt(value, digits=1):
    return "–" if value is None else f"{value:.{digits}f}"


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    torch.set_num_threads(1)
    data = generate_dataset(tmp_path_factory.mktemp("syn") / "data", n_train=150, n_test=0, seed=1)
    out = tmp_path_factory.mktemp("runs") / "run"
    result = CliRunner().invoke(cli, ["train", "--labels", str(data.labels_file), "--data", str(data.train_dir),
                                      "--annotations", str(data.train_csv), "--backbone", TINY, "--out", str(out),
                                      "--no-keywords", "-q", "--batch-size", "16", "--epochs", "3",
                                      "--stage2-epochs", "2"])
    assert result.exit_code == 0, result.output
    return out, result.output


def test_train_writes_a_report_with_the_metrics_plots_and_thumbnails(trained):
    out, output = trained
    report = out / "report.html"
    assert output.rstrip().splitlines()[-1] == f"report: {report}"  # the path, printed last
    page = parse(report)
    metrics = json.loads((out / "metrics.json").read_text())

    # One row per tag, in vocabulary order, with metrics.json's figures.
    assert list(page.rows) == [t["tag"] for t in metrics["tags"]]
    for t in metrics["tags"]:
        tag, train_n, val_n, group, ap, precision, recall, f1, threshold = page.rows[t["tag"]]
        assert (tag, int(train_n), int(val_n), group) == (t["tag"], t["train_positives"], t["val_positives"], t["group"])
        assert (ap, precision, recall, f1) == (fmt(t["ap"]), fmt(t["precision"]), fmt(t["recall"]), fmt(t["f1"]))
        assert threshold == fmt(t["threshold"], 3)
    assert any(t["precision"] is not None and t["recall"] is not None for t in metrics["tags"])
    # The page says its figures are the validated model's when what gets exported is the refit.
    refit = f"trained again on all {metrics['refit']['photos']} photos" if metrics.get("refit") else None
    assert refit is None or refit in report.read_text()
    assert metrics.get("refit") or metrics["best"]["stage"] == 0  # the run refit unless nothing was trained

    # The three plots, inline PNGs that decode.
    plots = {alt: src for alt, src in page.images.items() if src.startswith("data:image/png;base64,")}
    assert len(plots) == 3, list(page.images)
    for src in plots.values():
        image = Image.open(io.BytesIO(base64.b64decode(src.split(",", 1)[1])))
        assert image.format == "PNG" and image.width > 300

    # Thumbnails: inline JPEGs, each one a validation photo, referenced by the per-tag lists.
    defined = dict(re.findall(r"\.(p\d+) \{ background-image: url\(data:image/jpeg;base64,([A-Za-z0-9+/=]+)\)", page.style))
    assert defined
    used = {c for classes in page.thumb_classes for c in classes.split() if re.fullmatch(r"p\d+", c)}
    assert used == set(defined)
    val = json.loads((out / "dataset.json").read_text())["val"]
    for name, data in defined.items():
        thumb = Image.open(io.BytesIO(base64.b64decode(data)))
        original = Image.open(val[int(name[1:])]["path"])
        assert thumb.format == "JPEG" and max(thumb.size) <= 112
        assert thumb.size[0] / thumb.size[1] == pytest.approx(original.size[0] / original.size[1], rel=0.05)
    assert "http://" not in report.read_text() and "https://" not in report.read_text()  # opens offline


def test_tagger_report_rebuilds_it_recomputing_scores_when_needed(trained, tmp_path):
    out, _ = trained
    saved = np.load(out / "val_scores.npy")
    before = parse(out / "report.html").rows
    (out / "report.html").unlink()
    (out / "val_scores.npy").unlink()  # a run from before reports: scores come back from best.pt
    result = CliRunner().invoke(cli, ["report", str(out)])
    assert result.exit_code == 0, result.output
    assert result.output.strip() == f"report: {out / 'report.html'}"
    assert np.allclose(np.load(out / "val_scores.npy"), saved, atol=1e-4)
    assert parse(out / "report.html").rows == before

    result = CliRunner().invoke(cli, ["report", str(tmp_path)])
    assert result.exit_code == 1 and "not a finished training run" in result.output


def test_thumbnails_are_upright(tmp_path):
    # Stored 60x40 landscape with EXIF orientation 6 (rotate 90°): the photo is portrait.
    path = tmp_path / "rotated.jpg"
    exif = Image.Exif()
    exif[0x0112] = 6
    Image.new("RGB", (60, 40), (200, 30, 30)).save(path, exif=exif)
    thumb = Image.open(io.BytesIO(make_thumbnail(path, 30)))
    assert thumb.size == (20, 30)
