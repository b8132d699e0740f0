"""`tagger export` on a real (tiny) training run: parity, the runtime-only load, int8, zero-shot, metadata.

One tiny HP-DVAL run is trained through the real `tagger train` CLI and shared by the module.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from click.testing import CliRunner

from export.build import AgreementError, ExportSettings, build_model_file
from export.parity import BATCH
from export.quantize import decision_agreement
from tagger.cli import cli
from tagger.modelfile import TaggerModel, build_metadata
from tagger.store import models_dir
from train.backbone import load_clip
from train.model import score_images
from train.runs import load_run
from train.synthetic import generate_dataset

ROOT = Path(__file__).resolve().parents[1]
TINY = ROOT / "train" / "model_configs" / "tagger-tiny.json"


def invoke(*args: str):
    return CliRunner().invoke(cli, [str(a) for a in args], catch_exceptions=False)


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    torch.set_num_threads(2)
    root = tmp_path_factory.mktemp("export-run")
    data = generate_dataset(root / "data", n_train=120, n_test=8, size=(64, 48), seed=3)
    out = root / "run"
    result = invoke("train", "--labels", data.labels_file, "--data", data.train_dir,
                    "--annotations", data.train_csv, "--backbone", TINY, "--out", out, "--epochs", 1,
                    "--stage2-epochs", 1, "--no-keywords", "--drop-empty", "--workers", 2, "--quiet")
    assert result.exit_code == 0, result.output
    return out


@pytest.fixture(scope="module")
def run(run_dir):
    return load_run(run_dir)


@pytest.fixture(scope="module")
def reference(run) -> np.ndarray:
    """PyTorch scores of the run's validation images: what every exported file must reproduce."""
    with torch.no_grad():
        return score_images(run.parts, torch.from_numpy(run.validation_images())).numpy()


@pytest.fixture(scope="module")
def fp32_file(run_dir, tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("fp32") / "tiny.onnx"
    result = invoke("export", run_dir, "--out", path)
    assert result.exit_code == 0, result.output
    return path


def test_fp32_export_matches_pytorch_and_reports_parity(run, fp32_file, reference):
    scores = TaggerModel(fp32_file, device="cpu").predict(run.validation_images())
    assert scores.shape == (len(run.dataset["val"]), len(run.labels))
    assert np.abs(scores - reference).max() <= 1e-4
    # The batch axis is dynamic: one image and an odd batch give the same rows.
    model = TaggerModel(fp32_file, device="cpu")
    images = run.validation_images()
    assert np.allclose(model.predict(images[:1]), reference[:1], atol=1e-4)
    assert np.allclose(model.predict(images[:3]), reference[:3], atol=1e-4)
    meta = model.info.model["export"]
    assert meta["precision"] == "fp32" and meta["parity_max_abs_diff"] <= 1e-4
    assert meta["parity_images"] == len(images)


def test_graph_is_the_contract(fp32_file, run):
    proto = onnx.load(str(fp32_file))
    (inp,), (out,) = proto.graph.input, proto.graph.output
    size = run.preprocess.size
    dims = [d.dim_value or d.dim_param for d in inp.type.tensor_type.shape.dim]
    assert inp.name == "image" and inp.type.tensor_type.elem_type == onnx.TensorProto.UINT8
    assert dims == ["batch", size, size, 3]
    assert out.name == "scores" and out.type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    assert max(o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")) >= 17
    ops = {node.op_type for node in proto.graph.node}
    assert {"Cast", "TopK", "Sigmoid"} <= ops  # normalization, local pooling, bias-shifted sigmoid inside
    meta = {p.key: p.value for p in proto.metadata_props}
    assert json.loads(meta["tagger.labels"]) == run.labels
    assert json.loads(meta["tagger.thresholds"]) == pytest.approx(run.thresholds)
    assert json.loads(meta["tagger.preprocess"]) == run.preprocess.to_dict()


def test_runtime_alone_loads_the_model_in_a_fresh_process(run, fp32_file, reference, tmp_path):
    np.save(tmp_path / "images.npy", run.validation_images())
    code = (
        "import sys; sys.modules['torch'] = None; sys.modules['open_clip'] = None\n"
        "import numpy as np\n"
        "from tagger.modelfile import TaggerModel\n"
        f"m = TaggerModel({str(fp32_file)!r}, device='cpu')\n"
        f"np.save({str(tmp_path / 'scores.npy')!r}, m.predict(np.load({str(tmp_path / 'images.npy')!r})))\n"
        "assert 'torch' not in sys.modules or sys.modules['torch'] is None\n"
    )
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
    assert done.returncode == 0, done.stderr
    assert np.abs(np.load(tmp_path / "scores.npy") - reference).max() <= 1e-4


def test_export_into_the_store_round_trips_through_tagger_models(run_dir, run, tagger_home):
    result = invoke("export", run_dir)
    assert result.exit_code == 0, result.output
    name = run.summary["name"]
    path = models_dir() / f"{name}.onnx"
    assert f"Wrote {path}" in result.output and "parity" in result.output
    assert f"--model {name}" in result.output

    listed = invoke("models", "--json")
    assert listed.exit_code == 0, listed.output
    (entry,) = [json.loads(line) for line in listed.output.splitlines()]
    assert entry["name"] == name and entry["labels"] == len(run.labels)
    assert entry["backbone"] == run.summary["backbone"]
    model = entry["model"]
    assert model["val_mAP"] == run.summary["val_mAP"]
    assert model["positives"] == run.summary["positives"]
    assert model["export"]["precision"] == "fp32"


def test_int8_reports_the_agreement_it_measured(run_dir, run, fp32_file, tmp_path):
    path = tmp_path / "int8.onnx"
    result = invoke("export", run_dir, "--quantize", "int8", "--out", path)
    assert result.exit_code == 0, result.output
    images = run.validation_images()
    # Dynamic int8 quantizes activations with one scale per batch, so a score depends on the photos it
    # was batched with: recompute in the batches the export measured in (tagging's CPU batch too).
    def predict(model):
        return np.concatenate([model.predict(images[i:i + BATCH]) for i in range(0, len(images), BATCH)])
    fp32_scores = predict(TaggerModel(fp32_file, device="cpu"))
    int8 = TaggerModel(path, device="cpu")
    measured = decision_agreement(fp32_scores, predict(int8), run.thresholds)
    # The figure in the file and in the output is the real one: recomputed here from the two files.
    assert int8.info.model["export"]["agreement_with_fp32"] == pytest.approx(measured.decisions)
    assert f"{measured.decisions:.2%} of tag decisions agree" in result.output
    assert measured.decisions >= 0.99
    assert int8.info.model["export"]["precision"] == "int8"
    assert path.stat().st_size < fp32_file.stat().st_size * 0.8
    # Scores stay close to fp32 (the scoring head is kept in fp32).
    assert measured.max_abs_diff < 0.02


def test_badly_calibrated_int8_is_refused_unless_forced(run, tmp_path):
    """Static int8 calibrated on a black frame clips every real activation range: a real disagreement."""
    images = run.validation_images()
    black = np.zeros_like(images[:1])

    def metadata(report):
        return build_metadata(run.labels, run.thresholds, run.preprocess, {**run.summary, "export": report})

    settings = ExportSettings("int8", int8_method="static")
    with pytest.raises(AgreementError, match=r"int8 model refused: only .* \(needs 99%\).*--force"):
        build_model_file(run.parts, run.thresholds, images, metadata, settings, calibration_images=black)
    settings.force = True
    result = build_model_file(run.parts, run.thresholds, images, metadata, settings, calibration_images=black)
    assert result.agreement.decisions < 0.99
    props = {p.key: p.value for p in onnx.load_from_string(result.data).metadata_props}
    assert json.loads(props["tagger.model"])["export"]["agreement_with_fp32"] == pytest.approx(
        result.agreement.decisions)


def test_zero_shot_from_a_local_checkpoint_file(tmp_path, tagger_home):
    torch.manual_seed(1)
    clip = load_clip(str(TINY), None)
    checkpoint = tmp_path / "tiny-clip.pt"
    torch.save(clip.model.state_dict(), checkpoint)
    labels = tmp_path / "animals.txt"
    labels.write_text("dog\ncat\nAnimals|Bird\n", encoding="utf-8")

    result = invoke("export", "--zero-shot", "--labels", labels, "--backbone", TINY, "--pretrained", checkpoint)
    assert result.exit_code == 0, result.output
    path = models_dir() / "animals.onnx"
    model = TaggerModel(path, device="cpu")
    assert model.labels == ["dog", "cat", "Animals|Bird"]
    assert model.info.thresholds == [0.5, 0.5, 0.5]
    assert model.info.model["kind"] == "zero-shot" and model.info.model["pretrained"] == str(checkpoint)

    # Scores are CLIP's two-way softmax of "a photo of a {tag}." against "a photo." (α = 1: CLS view).
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (4, 64, 64, 3), dtype=np.uint8)
    with torch.no_grad():
        pixels = (torch.from_numpy(images).float() / 255 - torch.tensor(clip.mean)) / torch.tensor(clip.std)
        f = torch.nn.functional.normalize(clip.model.encode_image(pixels.permute(0, 3, 1, 2)), dim=-1)
        texts = clip.tokenizer(["a photo of a dog.", "a photo of a cat.", "a photo of a bird.", "a photo."])
        t = torch.nn.functional.normalize(clip.model.encode_text(texts), dim=-1)
        sims = f @ t.T
        expected = torch.sigmoid(clip.model.logit_scale.exp() * (sims[:, :3] - sims[:, 3:])).numpy()
    assert np.abs(model.predict(images) - expected).max() <= 1e-4


def test_bad_input_is_one_line(tmp_path, run_dir):
    missing = invoke("export", tmp_path / "nope")
    assert missing.exit_code == 1 and "run folder not found" in missing.output
    assert "Traceback" not in missing.output
    empty = tmp_path / "empty"
    empty.mkdir()
    not_run = invoke("export", empty)
    assert not_run.exit_code == 1 and "not a training run" in not_run.output
    assert invoke("export").exit_code == 2
    assert invoke("export", run_dir, "--out", tmp_path / "a.onnx", "--name", "a").exit_code == 2
    usage = invoke("export", "--zero-shot", "--backbone", TINY)
    assert usage.exit_code == 2 and "--labels" in usage.output
    bad_ckpt = tmp_path / "broken.pt"
    bad_ckpt.write_bytes(b"not a checkpoint")
    labels = tmp_path / "tags.txt"
    labels.write_text("dog\n", encoding="utf-8")
    broken = invoke("export", "--zero-shot", "--labels", labels, "--backbone", TINY, "--pretrained", bad_ckpt,
                    "--out", tmp_path / "x.onnx")
    assert broken.exit_code == 1 and str(bad_ckpt) in broken.output
    assert not (tmp_path / "x.onnx").exists()
