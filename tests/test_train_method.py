"""Each part of the method does what it says: loss terms equal their hand-summed definitions, the views
and prompts go where they belong, validation scores are the exported scores, the untrained model and
the best stage 1 student are where selection says they are. Each test names the breakage it catches."""
import json
from contextlib import nullcontext
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

torch = pytest.importorskip("torch")
pytest.importorskip("open_clip")

from tagger.cli import cli  # noqa: E402
from train.backbone import load_clip  # noqa: E402
from train.config import TrainConfig  # noqa: E402
from train.losses import make_loss  # noqa: E402
from train.model import HPDVAL, HPDVALConfig, dual_view_logits  # noqa: E402
from train.prepare import Prepared  # noqa: E402
from train.runs import METRICS, load_checkpoint, load_run, read_json, validated_checkpoint  # noqa: E402
from train.stages import Trainer  # noqa: E402
from train.synthetic import generate_dataset  # noqa: E402

TINY = str(Path(__file__).resolve().parents[1] / "train" / "model_configs" / "tagger-tiny.json")
TAGS = ["dog", "Animals|Cat", "red ball"]


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    torch.manual_seed(7)
    path = tmp_path_factory.mktemp("ckpt") / "tiny.pt"
    torch.save(load_clip(TINY, None).model.state_dict(), path)
    return path


def _trainer(checkpoint, tmp_path, **cfg) -> Trainer:
    clip = load_clip(TINY, str(checkpoint))
    settings = TrainConfig(labels="x", data="x", backbone=TINY, pretrained=str(checkpoint), **cfg)
    loss_fn = make_loss(settings.loss, [6, 2, 1], 8)
    model = HPDVAL(clip, TAGS, class_bias=loss_fn.class_bias, teacher=True,
                   config=HPDVALConfig(alpha=settings.alpha, score_norm=settings.score_norm))
    targets = np.array([[1, 0, 0], [0, 1, 1], [1, 1, 0], [1, 0, 0], [1, 0, 1], [0, 1, 0], [1, 0, 0], [1, 0, 0]],
                       np.uint8)
    data = Prepared(TAGS, None, targets, np.arange(8), np.arange(0), {})
    return Trainer(settings, model, loss_fn, data, torch.device("cpu"), tmp_path, lambda line: None, False)


def _pixels(n=4, seed=0):
    return torch.randn(n, 3, 64, 64, generator=torch.Generator().manual_seed(seed))


def test_stage1_loss_is_cls_against_hand_prompts_plus_kd(checkpoint, tmp_path):
    # Catches: L_kd zeroed or dropped, L_cls scored against learned instead of hand prompts.
    trainer = _trainer(checkpoint, tmp_path, alpha=0.5)
    model = trainer.model
    with torch.no_grad():  # the student drifts from the teacher, as after some training
        for p in model.student.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=torch.Generator().manual_seed(1)))
        model.prompts.ctx_global.add_(1.0)  # learned prompts must not be what stage 1 scores against
    pixels, targets = _pixels(), torch.tensor([[1., 0., 0.], [0., 1., 1.], [1., 1., 0.], [0., 0., 1.]])
    terms = trainer.stage1_loss(pixels, targets, use_kd=True)
    with torch.no_grad():
        f_cls, f_patch, pooled = model.encode(pixels)
        _, _, teacher_pooled = model.encode(pixels, tower="teacher")
        hand = model.text_hand
        z = dual_view_logits(f_cls, f_patch, hand, hand, 0.5, model.topk, model.logit_scale, "center",
                             model.text_null) + model.tag_bias
    assert set(terms) == {"cls", "kd"}
    assert torch.allclose(terms["cls"], trainer.loss_fn(z, targets), atol=1e-6)
    kd = (pooled - teacher_pooled).abs().mean()
    assert kd > 1e-3 and torch.allclose(terms["kd"], trainer.cfg.kd_weight * kd, atol=1e-6)
    assert "kd" not in trainer.stage1_loss(pixels, targets, use_kd=False)


def test_stage2_loss_scores_global_view_with_global_prompts_and_ties_the_configured_branch(checkpoint, tmp_path):
    # Catches: global and local prompts swapped, L_sc dropped or tied to the wrong branch.
    for branch in ("global", "local"):
        trainer = _trainer(checkpoint, tmp_path, alpha=0.5, sc=True, sc_branch=branch)
        model = trainer.model
        with torch.no_grad():
            model.prompts.ctx_global.add_(torch.randn(model.prompts.ctx_global.shape, generator=torch.Generator().manual_seed(2)))
            model.prompts.ctx_local.add_(torch.randn(model.prompts.ctx_local.shape, generator=torch.Generator().manual_seed(3)))
            f_cls, f_patch, _ = model.encode(_pixels())
        targets = torch.tensor([[1., 0., 0.], [0., 1., 1.], [1., 1., 0.], [0., 0., 1.]])
        terms = trainer.stage2_loss(f_cls, f_patch, targets)
        with torch.no_grad():
            P_G, P_L = model.text_features()
            z = dual_view_logits(f_cls, f_patch, P_G, P_L, 0.5, model.topk, model.logit_scale, "center",
                                 model.text_null) + model.tag_bias
            swapped = dual_view_logits(f_cls, f_patch, P_L, P_G, 0.5, model.topk, model.logit_scale, "center",
                                       model.text_null) + model.tag_bias
            tied = P_G if branch == "global" else P_L
        assert torch.allclose(terms["cls"], trainer.loss_fn(z, targets), atol=1e-6)
        assert not torch.allclose(terms["cls"], trainer.loss_fn(swapped, targets), atol=1e-4)
        assert torch.allclose(terms["sc"], (tied - model.text_hand).abs().mean(), atol=1e-6)


def test_one_stage1_step_moves_the_student_gamma_and_tag_bias_only(checkpoint, tmp_path):
    trainer = _trainer(checkpoint, tmp_path)
    model = trainer.model
    params = model.set_stage(1)
    optimizer = torch.optim.SGD(params, lr=0.1)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    images = torch.randint(0, 256, (4, 64, 64, 3), dtype=torch.uint8, generator=torch.Generator().manual_seed(4))
    trainer.stage1_step(images, torch.tensor([[1., 0., 0.], [0., 1., 1.], [1., 1., 0.], [0., 0., 1.]]),
                        torch.Generator().manual_seed(5), optimizer, use_kd=True)
    changed = {k for k, v in model.state_dict().items() if not torch.equal(v, before[k])}
    assert "tag_bias" in changed and "logit_scale" in changed and "student.proj" in changed
    assert all(k.startswith("student.") or k in ("tag_bias", "logit_scale") for k in changed)


def _train(synthetic, out, *args):
    result = CliRunner().invoke(cli, [
        "train", "--labels", str(synthetic.labels_file), "--data", str(synthetic.train_dir),
        "--annotations", str(synthetic.train_csv), "--backbone", TINY, "--out", str(out), "--no-keywords",
        "--drop-empty", "-q", "--batch-size", "16", *map(str, args)])
    assert result.exit_code == 0, result.output
    return result


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory):
    return generate_dataset(tmp_path_factory.mktemp("syn") / "data", n_train=80, n_test=0, seed=3)


@pytest.mark.slow
def test_exact_scoring_on_cuda_is_float32_without_tf32_and_restores_the_flags():
    # Catches: TF32 left on for cuDNN's convolutions (its default) while the scores thresholds are cut
    # on are computed; only flags change, so no GPU is needed. With one, also a caller's autocast left on
    # (without one PyTorch turns CUDA autocast off by itself, so that part cannot fail here).
    from train.config import precision
    cuda = torch.device("cuda")
    before = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    outer = torch.autocast(device_type="cuda", dtype=torch.bfloat16) if torch.cuda.is_available() else nullcontext()
    with outer, precision(cuda, exact=True):
        assert not torch.backends.cudnn.allow_tf32 and not torch.backends.cuda.matmul.allow_tf32
        assert not torch.is_autocast_enabled("cuda")
    assert (torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32) == before


@pytest.mark.parametrize("ranking", ["float32", "bf16"])
def test_validation_scores_are_the_exported_scores_with_the_class_bias(synthetic, checkpoint, tmp_path, monkeypatch,
                                                                      ranking):
    # Catches: the class bias υ (DB losses) or the tag bias dropped from validation scores: per-tag AP
    # would not notice, the calibrated thresholds would be wrong for the exported model. And (bf16: the
    # candidates ranked under bf16 autocast as on CUDA, here the CPU's) thresholds and metrics.json's
    # mAP computed from bf16 scores, which the float32 ONNX model never gives (seen on an H200).
    if ranking == "bf16":
        import train.config
        monkeypatch.setattr(train.config, "autocast", lambda device: torch.autocast("cpu", dtype=torch.bfloat16))
    out = tmp_path / "run"
    _train(synthetic, out, "--pretrained", checkpoint, "--loss", "dbstar", "--epochs", 2, "--stage2-epochs", 1)
    run = load_run(out, validated_checkpoint(out).name)  # the model the thresholds were calibrated on
    assert float(run.parts.class_bias.abs().max()) > 0.05
    from train.metrics import calibrated_thresholds, map_summary
    from train.model import score_images
    with torch.no_grad():
        scores = score_images(run.parts, torch.from_numpy(run.validation_images())).numpy()
    index = {t: i for i, t in enumerate(run.labels)}
    targets = np.zeros((len(run.dataset["val"]), len(run.labels)))
    for row, entry in enumerate(run.dataset["val"]):
        targets[row, [index[t] for t in entry["tags"]]] = 1
    # What the run calibrated: the bagged cuts pooled within each tag's frequency group (by training photos).
    train_positives = [t["train_positives"] for t in read_json(out / METRICS)["tags"]]
    thresholds = calibrated_thresholds(scores, targets, run.labels, train_positives, seed=run.config["train"]["seed"])
    assert np.allclose(thresholds, run.thresholds, atol=1e-5)
    assert map_summary(scores, targets, np.array(train_positives))["mAP"] == \
        pytest.approx(read_json(out / METRICS)["val"]["mAP"], abs=1e-3)


@pytest.mark.slow
def test_stage2_starts_from_the_best_stage1_student(synthetic, checkpoint, tmp_path):
    # Catches: stage 2 tuning prompts for the last (not the best) stage 1 student, or for the pretrained one.
    _train(synthetic, tmp_path / "s1", "--pretrained", checkpoint, "--stages", "1", "--epochs", 3, "--lr", "3e-3")
    _train(synthetic, tmp_path / "s12", "--pretrained", checkpoint, "--epochs", 3, "--stage2-epochs", 2, "--lr", "3e-3")
    stage1_best = load_checkpoint(tmp_path / "s1" / "best.pt")
    final = load_checkpoint(tmp_path / "s12" / "last.pt")
    assert final["stage"] == 2
    for key, value in stage1_best["model"].items():
        if key.startswith("student."):
            assert torch.allclose(value, final["model"][key], atol=1e-6), key


@pytest.mark.slow
def test_selection_looks_past_a_one_epoch_spike_on_validation(checkpoint, tmp_path):
    # Catches: an epoch selected on its own validation mAP, where a lucky draw on the few photos of a
    # rare tag wins; and stage 2's first epoch scored without the model the stage started from.
    def run(window):
        folder = tmp_path / f"window-{window}"
        folder.mkdir()
        trainer = _trainer(checkpoint, folder, select_window=window)
        trainer.before = {"mAP": 40.0}
        trainer._consider(0, 0, trainer.before, trainer.model.inference_state_dict())
        for stage, epoch, m in [(1, 1, 41.0), (1, 2, 49.0), (1, 3, 42.0), (1, 4, 46.0), (1, 5, 47.0), (2, 1, 46.2)]:
            summary = {"mAP": m, "mAP_head": m, "mAP_medium": m, "mAP_tail": m}
            trainer._record(stage, epoch, 0.1, summary, 1.0, 8)
            improved = trainer._save(stage, epoch, None, None, None, summary)
        return trainer.best, improved
    best, stage2_improved = run(2)
    # Epoch 5's (46 + 47) / 2 beats the spike's (41 + 49) / 2; stage 2's first epoch counts with the
    # epoch 5 it started from: (47 + 46.2) / 2 = 46.6 > 46.5.
    assert stage2_improved and best["stage"] == 2 and best["mAP"] == 46.2 and best["score"] == pytest.approx(46.6)
    best, stage2_improved = run(1)
    assert (best["stage"], best["epoch"], best["mAP"]) == (1, 2, 49.0) and not stage2_improved


def test_selection_returns_the_untrained_model_when_training_only_hurts(synthetic, checkpoint, tmp_path):
    # Catches: the untrained model left out of selection (a trained model must validate better to win).
    trainer = _trainer(checkpoint, tmp_path / "unit")
    (tmp_path / "unit").mkdir()
    assert trainer._consider(0, 0, {"mAP": 50.0}, {"w": torch.zeros(1)})
    assert not trainer._consider(1, 1, {"mAP": 49.0}, {"w": torch.ones(1)})
    assert not trainer._consider(1, 2, {"mAP": 50.0}, {"w": torch.ones(1)})  # a tie keeps the untrained model
    assert load_checkpoint(tmp_path / "unit" / "best.pt")["stage"] == 0

    # End to end: rates too small to change any ranking; the run hands over the untrained tower itself.
    out = tmp_path / "run"
    result = _train(synthetic, out, "--pretrained", checkpoint, "--stages", "1", "--epochs", 2, "--lr", "1e-12",
                    "--head-lr", "1e-12", "--no-wise-ft")
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["best"] == {"stage": 0, "epoch": 0}
    assert metrics["val"]["mAP"] == pytest.approx(metrics["before_training"]["mAP"])
    assert "the untrained model" in result.output
    run = load_run(out)
    pretrained = load_clip(TINY, str(checkpoint)).model.visual.state_dict()
    for key, value in pretrained.items():
        assert torch.equal(run.parts.visual.state_dict()[key], value), key


@pytest.mark.slow
def test_wise_ft_mixes_are_candidates_between_the_pretrained_and_the_tuned_student(synthetic, checkpoint, tmp_path):
    out = tmp_path / "run"
    result = _train(synthetic, out, "--pretrained", checkpoint, "--stages", "1", "--epochs", 2, "--lr", "3e-3")
    history = json.loads((out / "metrics.json").read_text())["history"]
    mixes = [h["wise_ft"] for h in history if "wise_ft" in h]
    assert mixes == [0.25, 0.5, 0.75] and "WiSE-FT mix 0.5" in result.output
    # The student after stage 1 is the tuned one (the mixes are only evaluated), and a mix is the lerp.
    last = load_checkpoint(out / "last.pt")["model"]
    pretrained = load_clip(TINY, str(checkpoint)).model.visual.state_dict()
    assert not torch.equal(last["student.proj"], pretrained["proj"])


def test_train_blocks_trains_the_last_blocks_only(checkpoint, tmp_path):
    # Catches: --train-blocks N training the first N blocks (or all of them).
    trainer = _trainer(checkpoint, tmp_path, train_blocks=1)
    model = trainer.model
    model.set_stage(1)
    optimizer = torch.optim.SGD(trainer._last_blocks_only(1), lr=0.1)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    images = torch.randint(0, 256, (4, 64, 64, 3), dtype=torch.uint8, generator=torch.Generator().manual_seed(4))
    trainer.stage1_step(images, torch.tensor([[1., 0., 0.], [0., 1., 1.], [1., 1., 0.], [0., 0., 1.]]),
                        torch.Generator().manual_seed(5), optimizer, use_kd=True)
    changed = {k for k, v in model.state_dict().items() if not torch.equal(v, before[k])}
    last = len(model.student.transformer.resblocks) - 1
    assert any(k.startswith(f"student.transformer.resblocks.{last}.") for k in changed)
    assert not any(k.startswith("student.transformer.resblocks.0.") or k.startswith("student.conv1") for k in changed)


@pytest.mark.slow
def test_resume_with_changed_settings_is_refused(synthetic, checkpoint, tmp_path):
    out = tmp_path / "run"
    _train(synthetic, out, "--pretrained", checkpoint, "--stages", "1", "--epochs", 1)
    result = CliRunner().invoke(cli, ["train", "--resume", "--out", str(out), "--loss", "asl", "-q"])
    assert result.exit_code == 1
    assert "these settings differ from the run's config.json: loss" in result.output
    again = CliRunner().invoke(cli, ["train", "--resume", "--out", str(out), "--epochs", "2", "-q"])
    assert again.exit_code == 0, again.output


def test_cli_choices_are_the_trainers():
    # The train command imports no torch at load (--help lists it), so it lists the choices itself.
    from train.command import HEAD_CHOICES, LOSS_CHOICES, SCORE_NORM_CHOICES
    from train.losses import LOSSES
    from train.model import SCORE_NORMS
    from train.q2l import HEADS

    assert LOSS_CHOICES == LOSSES and SCORE_NORM_CHOICES == SCORE_NORMS and HEAD_CHOICES == HEADS


def test_stage1_augments_each_batch_with_its_own_draws(checkpoint, tmp_path):
    # Catches: augmentation switched off (or its draws not taken from the epoch's generator). With the
    # learning rate at 0 the model never moves, so the loss differs between two draws only if the
    # pixels do; --no-augment gives the same loss whatever the generator.
    images = torch.randint(0, 256, (4, 64, 64, 3), dtype=torch.uint8, generator=torch.Generator().manual_seed(4))
    targets = torch.tensor([[1., 0., 0.], [0., 1., 1.], [1., 1., 0.], [0., 0., 1.]])

    def losses(**cfg):
        trainer = _trainer(checkpoint, tmp_path, **cfg)
        optimizer = torch.optim.SGD(trainer.model.set_stage(1), lr=0.0)
        return [trainer.stage1_step(images, targets, torch.Generator().manual_seed(seed), optimizer, use_kd=True)
                for seed in (5, 6, 5)]

    first, other, again = losses()
    assert first != other and first == again
    assert losses(crop_area=1.0)[0] != first  # --crop-area reaches the crop (same draws, other window)
    first, other, _ = losses(augment=False)
    assert first == other


@pytest.mark.slow
def test_ema_student_is_averaged_over_the_steps_and_is_the_one_kept(synthetic, checkpoint, tmp_path):
    # Catches: the EMA shadow never updated (it would still hold the starting tower) and the saved
    # student not being the averaged one.
    out = tmp_path / "run"
    _train(synthetic, out, "--pretrained", checkpoint, "--stages", "1", "--epochs", 1, "--ema", "0.5")
    start = {k: v for k, v in torch.load(checkpoint).items() if k.startswith("visual.")}
    payload = load_checkpoint(out / "last.pt")
    shadow = payload["ema"]
    tower = {k: v for k, v in shadow.items() if f"visual.{k}" in start}  # the free branch's copy aside
    moved = [k for k, v in tower.items() if not torch.equal(v, start[f"visual.{k}"])]
    assert "proj" in moved and len(moved) > len(tower) // 2
    assert "free_branch.proj" in shadow  # the free branch is averaged with the tower
    saved = payload["model"]
    assert all(torch.equal(saved[f"student.{k}"], v) for k, v in shadow.items())


def test_pretrained_lr_scales_the_papers_rate_by_width_squared_within_bounds():
    # Catches: the rate not scaled by (768 / width)², or left unbounded for very narrow or wide towers.
    from train.config import pretrained_lr

    assert pretrained_lr(768) == pytest.approx(1e-5)
    assert pretrained_lr(1024) == pytest.approx(1e-5 * (768 / 1024) ** 2)
    assert pretrained_lr(64) == pytest.approx(1.44e-3)
    assert pretrained_lr(8) == 3e-3 and pretrained_lr(0) == 3e-3
    assert pretrained_lr(100_000) == 1e-6
