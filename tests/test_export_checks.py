"""The export's own checks on small real graphs (no training): parity, agreement, the int8 head rule."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch

from export.build import ExportSettings, build_model_file
from export.graph import ScoringGraph
from export.onnx_export import ExportError, export_graph
from export.parity import check_parity
from export.quantize import decision_agreement, scoring_head_nodes
from tagger.modelfile import TaggerModel, build_metadata
from train.backbone import load_clip
from train.model import HPDVAL, HPDVALConfig, score_images

ROOT = Path(__file__).resolve().parents[1]
TINY = ROOT / "train" / "model_configs" / "tagger-tiny.json"
LABELS = ["dog", "cat", "Animals|Bird"]


def test_parity_fails_loudly_naming_the_worst_score():
    reference = np.array([[0.1, 0.9], [0.5, 0.5]], dtype=np.float32)
    assert check_parity(reference, reference + 5e-5).max_abs_diff == pytest.approx(5e-5, rel=1e-3)
    drifted = reference.copy()
    drifted[1, 0] += 3e-4
    with pytest.raises(ExportError, match=r"parity check failed: .*image 1, tag 0.*not written"):
        check_parity(reference, drifted)
    with pytest.raises(ExportError, match="NaN"):
        check_parity(reference, np.full_like(reference, np.nan))


def test_agreement_counts_tag_decisions_and_whole_images():
    reference = np.array([[0.9, 0.1, 0.6], [0.2, 0.7, 0.4]], dtype=np.float32)
    variant = np.array([[0.9, 0.1, 0.59], [0.2, 0.7, 0.4]], dtype=np.float32)
    result = decision_agreement(reference, variant, [0.5, 0.5, 0.6])
    assert result.decisions == pytest.approx(5 / 6)  # one decision of six flips (0.6 -> 0.59 at 0.6)
    assert result.images == pytest.approx(1 / 2)
    assert result.max_abs_diff == pytest.approx(0.01, abs=1e-6)


@pytest.fixture(scope="module")
def untrained():
    torch.manual_seed(0)
    torch.set_num_threads(2)
    clip = load_clip(str(TINY), None)
    # Both views (α < 1), so the graph holds the global and the local scoring products.
    model = HPDVAL(clip, LABELS, class_bias=torch.tensor([-1.0, 0.0, 1.0]), teacher=False,
                   config=HPDVALConfig(alpha=0.4)).eval()
    return model, clip.preprocess


def test_fp16_variant_keeps_the_contract_and_agrees(untrained, tmp_path):
    model, preprocess = untrained
    parts = model.export_parts()
    images = np.random.default_rng(0).integers(0, 256, (6, parts.image_size, parts.image_size, 3), dtype=np.uint8)
    thresholds = [0.5] * len(LABELS)

    def metadata(report):
        return build_metadata(LABELS, thresholds, preprocess,
                              {"name": "half", "backbone": str(TINY), "created": "today", "export": report})

    result = build_model_file(parts, thresholds, images, metadata, ExportSettings("fp16"))
    path = tmp_path / "half.onnx"
    path.write_bytes(result.data)
    runtime = TaggerModel(path, device="cpu")  # uint8 in, float32 out: the runtime sees the same contract
    with torch.no_grad():
        reference = score_images(parts, torch.from_numpy(images)).numpy()
    assert np.abs(runtime.predict(images) - reference).max() < 5e-3
    assert runtime.info.model["export"]["precision"] == "fp16"
    inits = onnx.load(str(path)).graph.initializer
    assert any(t.data_type == onnx.TensorProto.FLOAT16 for t in inits)


def _cast_twice(second_to: int) -> onnx.ModelProto:
    """y = float32(w) + x, where w's Cast is written twice, as ONNX Runtime's fp16 converter before 1.32
    writes one Cast of a shared weight per node reading it; the copy casts to `second_to`."""
    from onnx import TensorProto, helper
    weight = helper.make_tensor("w", TensorProto.FLOAT16, [2], [1.5, -2.0])
    casts = [helper.make_node("Cast", ["w"], ["w_cast_to_fp32"], name="w_cast_to_fp32_node", to=to)
             for to in (TensorProto.FLOAT, second_to)]
    add = helper.make_node("Add", ["x", "w_cast_to_fp32"], ["y"], name="add")
    graph = helper.make_graph([*casts, add], "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2])], [weight])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def test_fp16_graph_keeps_one_of_each_repeated_cast():
    import onnxruntime as ort
    from export.quantize import without_repeated_nodes

    proto = _cast_twice(onnx.TensorProto.FLOAT)
    with pytest.raises(Exception, match="same node name"):  # what ONNX Runtime says of the converter's graph
        ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])
    fixed = without_repeated_nodes(proto)
    assert [n.op_type for n in fixed.graph.node] == ["Cast", "Add"]
    session = ort.InferenceSession(fixed.SerializeToString(), providers=["CPUExecutionProvider"])
    assert session.run(None, {"x": np.array([1.0, 1.0], np.float32)})[0].tolist() == [2.5, -1.0]
    # Two nodes that write one value differently are not copies: an error, not a silent pick.
    with pytest.raises(ExportError, match="two different nodes write w_cast_to_fp32"):
        without_repeated_nodes(_cast_twice(onnx.TensorProto.DOUBLE))


def test_int8_keeps_the_scoring_head_in_fp32(untrained):
    model, preprocess = untrained
    proto = export_graph(ScoringGraph(model.export_parts()), preprocess.size)
    head = scoring_head_nodes(proto)
    # Projection of the CLS token and of the patch tokens, then the two cosine-score products.
    assert len(head) == 4
    consts = {t.name: tuple(t.dims) for t in proto.graph.initializer}
    by_name = {n.name: n for n in proto.graph.node}
    # The tag matrices hold one row per tag plus the reference prompt of the per-photo normalisation.
    tag_products = [n for n in head if any(consts.get(i, (0,))[-1] == len(LABELS) + 1 for i in by_name[n].input)]
    assert len(tag_products) == 2


def test_export_without_torch_says_what_to_install():
    code = ("import sys; sys.modules['torch'] = None\n"
            "from click.testing import CliRunner\n"
            "from tagger.cli import cli\n"
            "r = CliRunner().invoke(cli, ['export', 'runs/x'])\n"
            "print(r.exit_code); print(r.output)\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60,
                          env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert done.returncode == 0, done.stderr
    exit_code, output = done.stdout.split("\n", 1)
    assert exit_code == "1"
    assert 'pip install "tagger[train]"' in output and "Traceback" not in output


@pytest.mark.parametrize("score_norm,alpha", [("center", 1.0), ("center", 0.4), ("l2", 0.4), ("none", 0.4)])
def test_every_score_normalisation_exports_with_parity(score_norm, alpha, tmp_path):
    """The per-photo normalisation (tags + reference prompt), the learned tag bias and both views go
    into the ONNX graph: ONNX Runtime matches PyTorch within 1e-4 (the export refuses otherwise)."""
    torch.manual_seed(1)
    clip = load_clip(str(TINY), None)
    model = HPDVAL(clip, LABELS, class_bias=torch.tensor([-0.3, 0.0, 0.2]), teacher=False,
                   config=HPDVALConfig(alpha=alpha, score_norm=score_norm)).eval()
    model.init_tag_bias([40, 5, 1], 100)
    with torch.no_grad():
        model.prompts.ctx_local.add_(torch.randn(model.prompts.ctx_local.shape, generator=torch.Generator().manual_seed(2)))
    parts = model.export_parts()
    images = np.random.default_rng(3).integers(0, 256, (5, parts.image_size, parts.image_size, 3), dtype=np.uint8)
    thresholds = [0.5] * len(LABELS)
    result = build_model_file(parts, thresholds, images, lambda report: build_metadata(
        LABELS, thresholds, clip.preprocess, {"name": "n", "backbone": str(TINY), "created": "today", "export": report}))
    assert result.parity.max_abs_diff <= 1e-4
    path = tmp_path / "m.onnx"
    path.write_bytes(result.data)
    with torch.no_grad():
        reference = score_images(parts, torch.from_numpy(images)).numpy()
    assert np.abs(TaggerModel(path, device="cpu").predict(images) - reference).max() <= 1e-4
