"""Backbones and weights: a local checkpoint through --pretrained PATH, clear errors, what each stage trains."""
import json
import socket
from pathlib import Path

import pytest
from click.testing import CliRunner

torch = pytest.importorskip("torch")
pytest.importorskip("open_clip")

from tagger.cli import cli  # noqa: E402
from train.backbone import BackboneError, default_pretrained, load_clip  # noqa: E402
from train.model import HPDVAL, HPDVALConfig  # noqa: E402
from train.runs import load_checkpoint  # noqa: E402
from train.synthetic import generate_dataset  # noqa: E402

TINY = str(Path(__file__).resolve().parents[1] / "train" / "model_configs" / "tagger-tiny.json")


@pytest.fixture(autouse=True)
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    """A tiny CLIP's weights saved the way users save theirs (torch.save of a state_dict)."""
    torch.manual_seed(123)
    model = load_clip(TINY, None).model
    path = tmp_path_factory.mktemp("ckpt") / "tiny.pt"
    torch.save(model.state_dict(), path)
    return path


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory):
    return generate_dataset(tmp_path_factory.mktemp("syn") / "data", n_train=48, n_test=0, seed=2)


def test_local_checkpoint_loads_exactly(checkpoint):
    saved = torch.load(checkpoint)
    clip = load_clip(TINY, str(checkpoint))
    for name, value in clip.model.state_dict().items():
        assert torch.equal(value, saved[name]), name
    assert clip.pretrained == str(checkpoint) and clip.preprocess.size == 64
    assert clip.config["vision_cfg"]["patch_size"] == 8


def test_checkpoint_errors(tmp_path, checkpoint):
    other = tmp_path / "other.json"
    config = json.loads(Path(TINY).read_text())
    config["vision_cfg"]["width"] = 32
    other.write_text(json.dumps(config))
    with pytest.raises(BackboneError, match="does not fit backbone"):
        load_clip(str(other), str(checkpoint))
    junk = tmp_path / "junk.pt"
    junk.write_text("not a checkpoint")
    with pytest.raises(BackboneError, match="junk.pt"):
        load_clip(TINY, str(junk))
    with pytest.raises(BackboneError, match="checkpoint file not found"):
        load_clip(TINY, str(tmp_path / "missing.pt"))
    with pytest.raises(BackboneError, match="unknown backbone 'ViT-Q-99'"):
        load_clip("ViT-Q-99", None)
    with pytest.raises(BackboneError, match="not an open_clip model config"):
        junk_cfg = tmp_path / "cfg.json"
        junk_cfg.write_text('{"embed_dim": 8}')
        load_clip(str(junk_cfg), None)


def test_offline_download_error_says_how_to_pass_a_file(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf"))

    def no_network(*args, **kwargs):
        raise socket.gaierror(-2, "Name or service not known")

    monkeypatch.setattr(socket, "getaddrinfo", no_network)
    with pytest.raises(BackboneError) as info:
        load_clip("ViT-B-32", "laion2b_s34b_b79k", cache_dir=str(tmp_path / "hf"))
    message = str(info.value)
    assert "cannot be reached" in message and "--pretrained /path/to/" in message
    assert "ViT-B-32 'laion2b_s34b_b79k' checkpoint" in message
    # An hf-hub repository carries its own weights (--pretrained is ignored): only its folder can stand in.
    with pytest.raises(BackboneError) as info:
        load_clip("hf-hub:someone/clip-tiny", None, cache_dir=str(tmp_path / "hf"))
    message = str(info.value)
    assert "cannot be reached" in message and "Download hf-hub:someone/clip-tiny" in message
    assert "--backbone local-dir:" in message and "--pretrained" not in message
    assert default_pretrained("ViT-B-32") == "laion2b_s34b_b79k"
    assert default_pretrained(TINY) is None


def _train(synthetic, out, *args):
    return CliRunner().invoke(cli, [
        "train", "--labels", str(synthetic.labels_file), "--data", str(synthetic.train_dir),
        "--annotations", str(synthetic.train_csv), "--backbone", TINY, "--out", str(out), "--no-keywords",
        "--drop-empty", "-q", "--batch-size", "16", *map(str, args)])


def _initial_state(synthetic, run_dir, checkpoint) -> dict:
    labels = json.loads((run_dir / "dataset.json").read_text())["labels"]
    spec = json.loads((run_dir / "config.json").read_text())["model"]
    return HPDVAL(load_clip(TINY, str(checkpoint)), labels, teacher=False,
                  config=HPDVALConfig(head=spec["head"], free_blocks=spec["free_blocks"])).inference_state_dict()


def _random_init(key: str) -> bool:
    """The q2l heads' linear layers start random: unequal between two builds without any training."""
    return key.removeprefix("student.free_branch.").startswith("head.layers.") and ".norm" not in key


def test_stage1_moves_only_the_student(synthetic, checkpoint, tmp_path):
    result = _train(synthetic, tmp_path / "run", "--pretrained", checkpoint, "--stages", "1", "--epochs", 1,
                    "--lr", "1e-3")
    assert result.exit_code == 0, result.output
    assert "L_kd off" not in result.output  # pretrained weights: the teacher distils
    assert "free branch over the last 3 of 3 tower blocks" in result.output  # and the free copy trains beside
    before = _initial_state(synthetic, tmp_path / "run", checkpoint)
    after = load_checkpoint(tmp_path / "run" / "last.pt")["model"]
    assert set(after) == set(before)
    changed = {k for k in before if k != "class_bias" and not torch.equal(before[k], after[k])}
    student = {k for k in before if k.startswith("student.")}
    assert "student.proj" in changed and "student.conv1.weight" in changed
    head = {k for k in before if k.startswith("head.")}  # the default q2l head trains with the tower
    assert head and "head.classifier" in changed
    assert changed <= student | head | {"logit_scale", "tag_bias"}
    assert len(changed & student) >= len(student) - 2  # every trained tensor moved (a few may be zero-grad)
    assert not torch.equal(before["logit_scale"], after["logit_scale"])


def test_stage2_moves_only_the_two_contexts(synthetic, checkpoint, tmp_path):
    # Dual view (α < 1), so both contexts receive a gradient; with the default α = 1 only the global does.
    result = _train(synthetic, tmp_path / "run", "--pretrained", checkpoint, "--stages", "2",
                    "--stage2-epochs", 1, "--alpha", "0.4")
    assert result.exit_code == 0, result.output
    assert "computing the frozen student's features once" in result.output
    before = _initial_state(synthetic, tmp_path / "run", checkpoint)
    after = load_checkpoint(tmp_path / "run" / "last.pt")["model"]
    changed = {k for k in before
               if k != "class_bias" and not _random_init(k) and not torch.equal(before[k], after[k])}
    assert "head.classifier" in before and "head.queries" in before  # the default head, frozen in stage 2
    assert changed == {"prompts.ctx_global", "prompts.ctx_local", "tag_bias"}
