"""Small collections train: the trainer at 1, 2, 5, 33, 34 and 39 training photos (batch 32).

A user with a few dozen tagged photos must get a model, not a crash: the last partial batch used to
be folded into a batch that no longer existed (IndexError at one batch plus a few photos).
"""
import json
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

torch = pytest.importorskip("torch")
pytest.importorskip("open_clip")

from tagger.cli import cli  # noqa: E402
from train.split import spread, stratified_split  # noqa: E402
from train.stages import batches  # noqa: E402

TINY = str(Path(__file__).resolve().parents[1] / "train" / "model_configs" / "tagger-tiny.json")
SIZES = (1, 2, 5, 33, 34, 39)


@pytest.mark.parametrize("n", SIZES + (31, 32, 64, 65, 72))
def test_batches_cover_every_photo_once(n):
    for seed in range(3):
        out = batches(n, 32, np.random.default_rng(seed))
        assert sorted(np.concatenate(out).tolist()) == list(range(n))
        assert all(len(b) >= min(n, 8) for b in out)  # no straggler batch under a quarter of 32
        assert len(out) == max(1, n // 32 + (n % 32 >= 8))


def _targets(total: int) -> np.ndarray:
    """Two tags: 'red' on every other photo, 'blue' on the rest, 'square' on every third."""
    t = np.zeros((total, 3), np.uint8)
    t[::2, 0] = 1
    t[1::2, 1] = 1
    t[::3, 2] = 1
    return t


def _layout(n_train: int) -> tuple[int, float]:
    """A photo count and validation fraction that the trainer's split turns into n_train training photos."""
    for total in range(n_train + 1, n_train + 12):
        for fraction in (0.2, 0.3, 0.4, 0.5):
            train_idx, val_idx = stratified_split(_targets(total), fraction, 0)
            if len(train_idx) == n_train and len(val_idx) > 0:
                return total, fraction
    raise AssertionError(f"no layout gives {n_train} training photos")


def _write(folder: Path, total: int) -> tuple[Path, Path]:
    folder.mkdir()
    colours = {0: (220, 30, 30), 1: (30, 30, 220)}
    rows = []
    targets = _targets(total)
    for i, row in enumerate(targets):
        pixels = np.full((48, 48, 3), colours[0 if row[0] else 1], np.uint8)
        if row[2]:
            pixels[12:36, 12:36] = 255
        Image.fromarray(pixels).save(folder / f"p{i:02d}.png")
        rows.append(f"p{i:02d}.png," + ";".join(t for t, on in zip(("red", "blue", "square"), row) if on))
    csv = folder.parent / "tags.csv"
    csv.write_text("\n".join(rows) + "\n")
    labels = folder.parent / "tags.txt"
    labels.write_text("red\nblue\nsquare\n")
    return csv, labels


@pytest.mark.slow
@pytest.mark.parametrize("n_train", SIZES)
def test_trainer_at_few_training_photos(tmp_path, n_train):
    total, fraction = _layout(n_train)
    csv, labels = _write(tmp_path / "photos", total)
    out = tmp_path / "run"
    result = CliRunner().invoke(cli, [
        "train", "--labels", str(labels), "--data", str(tmp_path / "photos"), "--annotations", str(csv),
        "--backbone", TINY, "--out", str(out), "--no-keywords", "-q", "--epochs", "2", "--stage2-epochs", "1",
        "--val-fraction", str(fraction), "--drop-empty", "--workers", "1"])
    assert result.exit_code == 0, result.output
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["train_images"] == n_train
    assert [h["stage"] for h in metrics["history"]] == [1, 1, 2]
    assert len(metrics["thresholds"]) == len(metrics["tags"])


def test_spread_takes_first_last_and_evenly_between_never_more_than_there_are():
    # The tag-bias sample, the int8 calibration photos and the untagged photos the refit is carried by.
    assert spread(10, 3).tolist() == [0, 4, 9]
    assert spread(3, 10).tolist() == [0, 1, 2]
    assert spread(0, 5).tolist() == [] and spread(5, 0).tolist() == []
    picked = spread(80_000, 512)
    assert len(picked) == 512 and picked[0] == 0 and picked[-1] == 79_999 and (np.diff(picked) > 0).all()
