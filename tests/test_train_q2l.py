"""The q2l head (`tagger train --head q2l`): starts at zero-shot, trains, and exports with parity."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from export.build import ExportSettings, build_model_file
from export.graph import ScoringGraph
from export.onnx_export import export_graph
from export.quantize import head_linear_nodes, scoring_head_nodes
from tagger.modelfile import TaggerModel, build_metadata
from train.backbone import load_clip
from train.model import HPDVAL, HPDVALConfig, encode_image, normalize_pixels, score_images

ROOT = Path(__file__).resolve().parents[1]
TINY = ROOT / "train" / "model_configs" / "tagger-tiny.json"
LABELS = ["dog", "cat", "Animals|Bird", "Animals"]


def model_with(head: str, seed: int = 0) -> HPDVAL:
    torch.manual_seed(seed)
    clip = load_clip(str(TINY), None)
    return HPDVAL(clip, LABELS, class_bias=torch.tensor([-0.3, 0.0, 0.2, 0.1]), teacher=False,
                  config=HPDVALConfig(head=head)).eval()


def images(n: int, size: int, seed: int = 3) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (n, size, size, 3), dtype=np.uint8)


def trained_head(model: HPDVAL) -> HPDVAL:
    """Weights a few updates would give: the classifier away from its zero start, the rest moved too."""
    gen = torch.Generator().manual_seed(5)
    with torch.no_grad():
        for p in model.head.parameters():
            p.add_(0.3 * torch.randn(p.shape, generator=gen))
    return model


def test_untrained_q2l_scores_exactly_as_the_dual_view():
    plain, q2l = model_with("dual-view"), model_with("q2l")
    x = torch.from_numpy(images(4, plain.image_size))
    with torch.no_grad():
        same = score_images(q2l.export_parts(), x)
        assert torch.equal(score_images(plain.export_parts(), x), same)
        assert not torch.allclose(score_images(trained_head(q2l).export_parts(), x), same, atol=1e-3)


def test_head_queries_start_at_the_tag_prompts_and_train_in_stage_1():
    model = model_with("q2l")
    assert torch.allclose(model.head.queries, model.text_hand)
    stage1 = {id(p) for p in model.stage_parameters(1)}
    assert all(id(p) in stage1 for p in model.head.parameters())
    assert not any(id(p) in {id(q) for q in model.stage_parameters(2)} for p in model.head.parameters())


def test_head_gets_gradients_from_the_tag_loss():
    model = trained_head(model_with("q2l")).train()
    pixels = normalize_pixels(torch.from_numpy(images(3, model.image_size)), model.mean, model.std)
    f_cls, f_patch, _ = encode_image(model.student, pixels)
    P_G, P_L = model.text_features()
    loss = torch.nn.functional.binary_cross_entropy_with_logits(
        model.logits(f_cls, f_patch, P_G, P_L), torch.tensor([[1.0, 0, 1, 1], [0, 1, 0, 0], [1, 1, 0, 1]]))
    loss.backward()
    assert model.head.classifier.grad.abs().sum() > 0 and model.head.queries.grad.abs().sum() > 0
    assert model.head.layers[0].cross_attn.k.weight.grad.abs().sum() > 0


@pytest.mark.parametrize("variant", ["fp32", "int8"])
def test_q2l_exports_with_parity_and_int8_keeps_the_head_in_fp32(variant, tmp_path):
    model = trained_head(model_with("q2l"))
    parts = model.export_parts()
    check = images(6, parts.image_size)
    thresholds = [0.5] * len(LABELS)
    result = build_model_file(parts, thresholds, check, lambda report: build_metadata(
        LABELS, thresholds, load_clip(str(TINY), None).preprocess,
        {"name": "q", "backbone": str(TINY), "created": "today", "export": report}),
        ExportSettings(variant=variant, min_agreement=0.0), calibration_images=check)
    path = tmp_path / f"{variant}.onnx"
    path.write_bytes(result.data)
    with torch.no_grad():
        reference = score_images(parts, torch.from_numpy(check)).numpy()
    runtime = TaggerModel(path, device="cpu").predict(check)
    if variant == "fp32":
        assert result.parity.max_abs_diff <= 1e-4
        assert np.abs(runtime - reference).max() <= 1e-4
    else:
        assert result.agreement is not None and result.agreement.decisions >= 0.9


def test_int8_keeps_the_scoring_products_in_fp32_and_quantizes_the_heads_linears():
    model = trained_head(model_with("q2l"))
    proto = export_graph(ScoringGraph(model.export_parts()), model.image_size)
    keep = set(scoring_head_nodes(proto))
    head = head_linear_nodes(proto)
    matmuls = [n for n in proto.graph.node if n.op_type in ("MatMul", "Gemm")]
    first_projection = next(i for i, n in enumerate(matmuls) if "visual.proj" in n.input)
    after = {n.name for n in matmuls[first_projection:]}
    # One layer: q, k, v and out of each attention, two MLP linears; all after the projection.
    assert len(head) == 10 and head <= after and first_projection > 0
    # fp32: the two projections, the two tag-score products, and the four attention products.
    assert keep == after - head and len(keep) == 8
    assert not head_linear_nodes(export_graph(ScoringGraph(model_with("dual-view").export_parts()), model.image_size))


def test_the_queries_self_attention_is_paid_once_not_per_photo(tmp_path):
    """Tagging cost: the first layer's self-attention reads only weights, so it runs on one copy of the
    queries, and ONNX Runtime folds it (and the cross-attention's query projection) into constants."""
    import onnx
    import onnxruntime as ort

    model = trained_head(model_with("q2l"))
    seen = []
    model.head.layers[0].self_attn.register_forward_hook(lambda module, args, out: seen.append(out.shape[0]))
    with torch.no_grad():
        batched = score_images(model.export_parts(), torch.from_numpy(images(4, model.image_size)))
    assert seen == [1] and batched.shape == (4, len(LABELS))

    proto = export_graph(ScoringGraph(model.export_parts()), model.image_size)
    options = ort.SessionOptions()
    options.optimized_model_filepath = str(tmp_path / "folded.onnx")
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
    ort.InferenceSession(proto.SerializeToString(), options, providers=["CPUExecutionProvider"])
    products = lambda p: sum(n.op_type in ("MatMul", "Gemm") for n in p.graph.node)
    # q, k, v, q·kᵀ, weights·v and out of the self-attention, and the cross-attention's q projection.
    assert products(proto) - products(onnx.load(str(tmp_path / "folded.onnx"))) >= 7


@pytest.mark.slow
def test_a_q2l_run_beats_its_untrained_start_and_exports(tmp_path):
    import json

    from click.testing import CliRunner

    from tagger.cli import cli
    from train.runs import load_checkpoint, load_run
    from train.synthetic import generate_dataset

    torch.set_num_threads(1)
    data = generate_dataset(tmp_path / "data", n_train=200, n_test=0, seed=2)
    out = tmp_path / "run"
    result = CliRunner().invoke(cli, [
        "train", "--labels", str(data.labels_file), "--data", str(data.train_dir), "--annotations",
        str(data.train_csv), "--backbone", str(TINY), "--out", str(out), "--no-keywords", "-q",
        "--batch-size", "16", "--epochs", "15", "--stages", "1", "--head", "q2l"])
    assert result.exit_code == 0, result.output
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["val"]["mAP"] >= metrics["before_training"]["mAP"] + 10
    # The kept model has a trained head (its classifier left zero), and load_run hands it to export.
    assert load_checkpoint(out / "best.pt")["model"]["head.classifier"].abs().sum() > 0
    assert load_run(out).parts.head is not None
