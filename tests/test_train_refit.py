"""The refit: once validation has picked a candidate, `tagger train` trains its recipe again on every
labelled photo. The replay must retrace the recipe exactly (on the same photos it gives back the very
candidate), the refit must use the validation photos, and the thresholds and validation figures must
stay the validated model's."""
import json
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

torch = pytest.importorskip("torch")
pytest.importorskip("open_clip")

from tagger.cli import cli  # noqa: E402
from train import runs  # noqa: E402
from train.runs import RunError  # noqa: E402
from train.backbone import load_clip  # noqa: E402
from train.config import TrainConfig  # noqa: E402
from train.prepare import prepare_data  # noqa: E402
from train.stages import Trainer  # noqa: E402
from train.synthetic import generate_dataset  # noqa: E402
from train.trainer import build_model  # noqa: E402

TINY = str(Path(__file__).resolve().parents[1] / "train" / "model_configs" / "tagger-tiny.json")


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    torch.manual_seed(11)
    path = tmp_path_factory.mktemp("ckpt") / "tiny.pt"
    torch.save(load_clip(TINY, None).model.state_dict(), path)
    return path


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory):
    return generate_dataset(tmp_path_factory.mktemp("syn") / "data", n_train=80, n_test=0, seed=5)


def _train(synthetic, checkpoint, out, *args):
    result = CliRunner().invoke(cli, [
        "train", "--labels", str(synthetic.labels_file), "--data", str(synthetic.train_dir),
        "--annotations", str(synthetic.train_csv), "--backbone", TINY, "--pretrained", str(checkpoint),
        "--out", str(out), "--no-keywords", "--drop-empty", "-q", "--batch-size", "16", "--lr", "3e-3",
        *map(str, args)])
    assert result.exit_code == 0, result.output
    return result


def _replayed(out: Path, checkpoint: Path, pick: dict, stage2_from: dict | None, everything: bool = False) -> dict:
    """The model state a replay of `pick` ends with, on the run's training split (or on all its photos)."""
    saved = runs.read_json(out / runs.CONFIG)["train"]
    cfg = TrainConfig(**saved | {"stages": tuple(saved["stages"])})
    clip = load_clip(TINY, str(checkpoint))
    data = prepare_data(cfg, clip, out, lambda line: None, False, runs.read_json(out / runs.DATASET))
    if everything:
        data.train_idx = np.union1d(data.train_idx, data.val_idx)
    model, loss_fn = build_model(cfg, clip, data, torch.device("cpu"))
    trainer = Trainer(cfg, model, loss_fn, data, torch.device("cpu"), out, lambda line: None, False)
    trainer.init_tag_bias()
    trainer.replay_stage1(pick, stage2_from)
    trainer.replay_stage2(pick)
    return model.inference_state_dict()


def load_model(out: Path, checkpoint: str):
    return runs.load_run(out, checkpoint).model


def _same(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.allclose(a[k].float(), b[k].float(), atol=1e-6) for k in a)


@pytest.mark.slow
def test_the_replay_retraces_each_kind_of_pick(synthetic, checkpoint, tmp_path):
    # Catches: a replay that trains a different number of epochs, skips stage 1 before a stage 2 pick
    # (or starts stage 2 from the wrong candidate), leaves out the WiSE-FT mix, or changes the schedule.
    out = tmp_path / "run"
    _train(synthetic, checkpoint, out, "--epochs", 3, "--stage2-epochs", 2, "--no-refit")
    metrics = runs.read_json(out / runs.METRICS)
    history = metrics["history"]
    stage2_from = json.loads(json.dumps(runs.load_checkpoint(out / runs.LAST)["stage2_from"]))
    # The last stage 2 epoch (last.pt), from the candidate stage 2 really started from.
    last = runs.load_checkpoint(out / runs.LAST)["model"]
    assert _same(_replayed(out, checkpoint, {"stage": 2, "epoch": 2}, stage2_from), last)
    # The pick itself, whatever it was (best.pt, without a refit, is validation's pick).
    best = runs.load_checkpoint(out / runs.BEST)["model"]
    assert metrics["best"]["stage"] in (1, 2)
    assert _same(_replayed(out, checkpoint, metrics["best"], metrics["best"].get("from")), best)
    # A WiSE-FT mix: the mix of the replayed last stage 1 epoch, as validated.
    assert [h["wise_ft"] for h in history if "wise_ft" in h] == [0.25, 0.5, 0.75]
    stage1_out = tmp_path / "stage1"
    _train(synthetic, checkpoint, stage1_out, "--epochs", 3, "--stages", 1, "--no-refit")
    mix = _replayed(stage1_out, checkpoint, {"stage": 1, "epoch": 3, "wise_ft": 0.5}, None)
    epoch3 = runs.load_checkpoint(stage1_out / runs.LAST)["model"]
    pretrained = load_clip(TINY, str(checkpoint)).model.visual.state_dict()
    key = "student.proj"
    assert torch.allclose(mix[key], 0.5 * pretrained["proj"] + 0.5 * epoch3[key], atol=1e-6)
    assert not torch.allclose(mix[key], epoch3[key])


@pytest.mark.slow
def test_the_refit_trains_on_the_validation_photos_too_and_keeps_the_validated_model(synthetic, checkpoint, tmp_path):
    # Catches: the refit leaving out the validation photos (or adding nothing), best.pt not replaced,
    # thresholds or validation figures taken from the refit model (it has seen those photos), and the
    # validated model lost.
    plain = tmp_path / "no-refit"
    _train(synthetic, checkpoint, plain, "--epochs", 3, "--stage2-epochs", 2, "--no-refit")
    out = tmp_path / "refit"
    result = _train(synthetic, checkpoint, out, "--epochs", 3, "--stage2-epochs", 2)
    metrics, without = runs.read_json(out / runs.METRICS), runs.read_json(plain / runs.METRICS)
    assert metrics["refit"]["photos"] == metrics["train_images"] + metrics["val_images"]
    assert not (plain / runs.VALIDATED).exists() and "refit" not in without
    assert "refit: " in result.output and "refit: " not in _train(
        synthetic, checkpoint, tmp_path / "again", "--epochs", 3, "--stage2-epochs", 2, "--no-refit").output
    # Validation's pick and everything calibrated on it are those of the run without a refit.
    assert _same(runs.load_checkpoint(out / runs.VALIDATED)["model"], runs.load_checkpoint(plain / runs.BEST)["model"])
    assert metrics["refit"]["validated_thresholds"] == without["thresholds"] and metrics["val"] == without["val"]
    assert metrics["best"] == without["best"]
    assert runs.load_run(out, runs.VALIDATED).thresholds == pytest.approx(without["thresholds"])
    assert runs.load_run(out).thresholds == pytest.approx(metrics["thresholds"])  # what export writes
    # The exported thresholds are the validated ones carried to the refit: each lets through as many
    # labelled photos (training and validation) with the refit as the validated one did with the
    # validated model.
    from train.evaluate import photo_scores
    from train.metrics import carried_thresholds
    saved = runs.read_json(out / runs.CONFIG)["train"]
    cfg = TrainConfig(**saved | {"stages": tuple(saved["stages"])})
    data = prepare_data(cfg, load_clip(TINY, str(checkpoint)), out, lambda line: None, False,
                        runs.read_json(out / runs.DATASET))
    labelled = np.union1d(data.train_idx, data.val_idx)
    before, after = (photo_scores(load_model(out, name), data, labelled, torch.device("cpu"), 64)
                     for name in (runs.VALIDATED, runs.BEST))
    assert metrics["thresholds"] == pytest.approx(carried_thresholds(np.array(without["thresholds"]), before, after), abs=1e-6)
    assert metrics["thresholds"] != without["thresholds"]
    # best.pt is the recipe replayed on every photo: not the validated model, exactly the replay.
    best = runs.load_checkpoint(out / runs.BEST)["model"]
    assert not _same(best, runs.load_checkpoint(out / runs.VALIDATED)["model"])
    assert _same(best, _replayed(out, checkpoint, metrics["best"], metrics["best"].get("from"), everything=True))
    # What gets exported is the refit model; the report's scores stay the validated model's.
    assert _same(runs.load_run(out).model.inference_state_dict(), best)
    assert runs.load_run(out).summary["refit_images"] == metrics["refit"]["photos"]
    assert np.allclose(np.load(out / runs.VAL_SCORES), np.load(plain / runs.VAL_SCORES), atol=1e-6)


@pytest.mark.slow
def test_a_resumed_run_goes_on_from_the_validated_pick(synthetic, checkpoint, tmp_path):
    # Catches: a resumed run selecting against (or stage 2 starting from) the refit, which has seen the
    # validation photos; a refit replayed on a schedule the run did not train on; and the export of a
    # refit whose carried thresholds never reached metrics.json.
    out = tmp_path / "run"
    _train(synthetic, checkpoint, out, "--epochs", 2, "--stages", 1)
    metrics = runs.read_json(out / runs.METRICS)
    validated = runs.load_checkpoint(out / runs.VALIDATED)["model"]
    refit = runs.load_checkpoint(out / runs.BEST)["model"]
    # A refit cut short after best.pt and before metrics.json: export refuses rather than mix the two.
    runs.write_json(out / runs.METRICS, {k: v for k, v in metrics.items() if k != "refit"})
    with pytest.raises(RunError, match="cut short"):
        runs.load_run(out)
    # Resumed as it was: the validated pick is best.pt again until the same refit is made again.
    result = _train(synthetic, checkpoint, out, "--resume", "--epochs", 2, "--stages", 1)
    assert "best.pt is the validated pick again" in result.output
    assert _same(runs.load_checkpoint(out / runs.VALIDATED)["model"], validated)
    assert _same(runs.load_checkpoint(out / runs.BEST)["model"], refit)
    assert runs.read_json(out / runs.METRICS)["thresholds"] == metrics["thresholds"]
    # Resumed with more epochs: selection goes on from the validated pick, the refit cannot retrace that
    # schedule, so best.pt is the new validated pick and its thresholds are its own.
    result = _train(synthetic, checkpoint, out, "--resume", "--epochs", 4, "--stages", 1)
    assert "no refit: the run was resumed with other epochs" in result.output
    assert not (out / runs.VALIDATED).exists()
    metrics = runs.read_json(out / runs.METRICS)
    assert "refit" not in metrics and "refit" not in runs.load_checkpoint(out / runs.BEST)
    picked = [h for h in metrics["history"] if h["stage"] == metrics["best"]["stage"]
              and h["epoch"] == metrics["best"]["epoch"] and h.get("wise_ft") == metrics["best"].get("wise_ft")]
    assert picked and picked[-1]["mAP"] == pytest.approx(metrics["val"]["mAP"], abs=1e-6)


@pytest.mark.slow
def test_untagged_photos_under_data_carry_the_thresholds_too(checkpoint, tmp_path):
    # Catches: the refit's thresholds carried without the untagged photos (or with them on one side
    # only), the sample not kept for a resume, and an undecodable untagged photo stopping the run.
    import shutil

    from train.cache import build_cache
    from train.evaluate import extract_features, photo_scores, scores_from_features
    from train.metrics import carried_thresholds

    data = generate_dataset(tmp_path / "data", n_train=80, n_test=30, seed=5)
    untagged_dir = data.train_dir / "untagged"  # photos nobody has tagged, beside the tagged ones
    shutil.copytree(data.test_dir, untagged_dir)
    (untagged_dir / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not a photo")
    out = tmp_path / "run"
    result = _train(data, checkpoint, out, "--epochs", 3, "--stage2-epochs", 2)
    assert "1 of 31 untagged photos could not be decoded" in result.output
    assert "(by 30 untagged photos too)" in result.output
    dataset, metrics = runs.read_json(out / runs.DATASET), runs.read_json(out / runs.METRICS)
    assert sorted(Path(p).name for p in dataset["untagged"]) == sorted(p.name for p in untagged_dir.iterdir())
    # With untagged photos the validation photos are left out of the count (the validated model
    # scored them unseen, the refit has trained on them): training + untagged, scored alike by both.
    assert metrics["refit"]["carried_by"] == {"labelled": metrics["train_images"], "untagged": 30}
    saved = runs.read_json(out / runs.CONFIG)["train"]
    cfg = TrainConfig(**saved | {"stages": tuple(saved["stages"])})
    clip = load_clip(TINY, str(checkpoint))
    prepared = prepare_data(cfg, clip, out, lambda line: None, False, dataset)
    assert prepared.untagged == [Path(p) for p in dataset["untagged"]]  # a resume carries by the same photos
    decoded = build_cache(prepared.untagged, clip.preprocess, tmp_path / "decoded", 1, False)
    cpu = torch.device("cpu")
    both, alone = [], []
    for name in (runs.VALIDATED, runs.BEST):
        model = load_model(out, name)
        scores = photo_scores(model, prepared, prepared.train_idx, cpu, 64)
        features = extract_features(model, decoded, np.arange(len(decoded.paths)), 64, cpu)
        both.append(np.vstack([scores, scores_from_features(model, *features, cpu)]))
        alone.append(scores)
    validated = np.array(metrics["refit"]["validated_thresholds"])
    assert metrics["thresholds"] == pytest.approx(carried_thresholds(validated, *both), abs=1e-6)
    assert metrics["thresholds"] != pytest.approx(carried_thresholds(validated, *alone), abs=1e-6)


@pytest.mark.slow
def test_a_refit_that_diverges_leaves_the_validated_pick(synthetic, checkpoint, tmp_path, monkeypatch):
    # Catches: a refit whose scores are not finite (nothing validates it) replacing best.pt, or NaN
    # thresholds carried into metrics.json and the exported model.
    replay_stage2 = Trainer.replay_stage2

    def diverging(self, pick):
        replay_stage2(self, pick)
        with torch.no_grad():  # what a step at a rate too high leaves behind
            self.model.student.proj.fill_(float("nan"))

    monkeypatch.setattr(Trainer, "replay_stage2", diverging)
    out = tmp_path / "run"
    result = _train(synthetic, checkpoint, out, "--epochs", 3, "--stage2-epochs", 2)
    assert "warning: the refit diverged (scores not finite); best.pt stays the validated pick" in result.output
    metrics = runs.read_json(out / runs.METRICS)
    assert metrics["best"]["stage"] != 0 and "refit" not in metrics
    assert not (out / runs.VALIDATED).exists()  # nothing left for a resume to mistake for a refit
    best = runs.load_checkpoint(out / runs.BEST)
    assert "refit" not in best and best["val"]["mAP"] == pytest.approx(metrics["val"]["mAP"], abs=1e-6)
    assert all(torch.isfinite(v).all() for v in best["model"].values() if v.is_floating_point())
    run = runs.load_run(out)  # what export reads: the validated pick at its own thresholds
    assert np.isfinite(run.thresholds).all() and run.thresholds == pytest.approx(metrics["thresholds"])
