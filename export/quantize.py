"""Smaller and faster variants of an exported fp32 graph: int8 for CPUs, fp16 for GPUs.

int8 is ONNX Runtime's dynamic quantization by default: the weights of the tower's MatMul/Gemm ops
stored as int8 per output channel, activations quantized on the fly per batch. Chosen by measurement
against static QDQ quantization calibrated on training images (2026-11-23, 2 shared cores): on
ViT-B-32, bench/export_speed.py measured dynamic at 2.0–2.3x fp32 and static at 1.7–1.8x; on a tiny
run trained for 10 epochs, dynamic kept 99.5% of tag decisions and static 98.6%; on the demo's better
trained run both kept 100%, with static's largest score change 4x dynamic's (0.034 vs 0.009). And
dynamic needs no calibration data. Static stays available for runtimes with integer-only accelerators.

Everything after the tower's last LayerNorm stays fp32 (a q2l head's linear layers aside, see
`scoring_head_nodes`): the projection into CLIP's embedding space and the cosine scores against the
tag embeddings. That is under 2% of a ViT's FLOPs, but it is where
a quantization step moves a score across a tag's threshold (agreement 98.5% -> 99.5% on the tiny run).
"""
from __future__ import annotations

import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx

from export.onnx_export import ExportError
from tagger.modelfile import INPUT_NAME

INT8_METHODS = ("dynamic", "static")
# Ops whose weights carry almost all the compute in a ViT; quantizing Conv too (the patch embedding,
# one small op) costs agreement for no speed.
INT8_OPS = ["MatMul", "Gemm"]
TOWER_PROJECTION = "visual.proj"  # export.graph.ScoringGraph's tower output projection, an initializer


@dataclass(frozen=True)
class Agreement:
    decisions: float  # fraction of (image, tag) yes/no decisions equal to fp32's
    images: float  # fraction of images whose whole tag set is equal to fp32's
    max_abs_diff: float  # largest score difference
    count: int  # validation images compared

    def __str__(self) -> str:
        return (f"{self.decisions:.2%} of tag decisions agree with fp32 ({self.images:.1%} of images get "
                f"exactly the same tags; max score difference {self.max_abs_diff:.3f}) on {self.count} images")


def decision_agreement(reference: np.ndarray, scores: np.ndarray, thresholds: np.ndarray | list[float]
                       ) -> Agreement:
    """How often a variant makes the same tag decision (score >= per-tag threshold) as the fp32 model."""
    limits = np.asarray(thresholds, dtype=np.float32)[None, :]
    ref_yes, yes = reference >= limits, scores >= limits
    same = ref_yes == yes
    return Agreement(decisions=float(same.mean()), images=float(same.all(axis=1).mean()),
                     max_abs_diff=float(np.abs(reference - scores).max()), count=len(reference))


class _Images:
    """CalibrationDataReader over uint8 images, a batch at a time."""

    def __init__(self, images: np.ndarray, batch: int = 8):
        self._batches = iter([np.ascontiguousarray(images[i:i + batch]) for i in range(0, len(images), batch)])

    def get_next(self):
        chunk = next(self._batches, None)
        return None if chunk is None else {INPUT_NAME: chunk}


def quantize_int8(fp32: bytes, method: str = "dynamic", calibration: np.ndarray | None = None) -> bytes:
    """An int8 copy of an fp32 graph (metadata not carried: the caller attaches it)."""
    from onnxruntime.quantization import (CalibrationMethod, QuantFormat, QuantType, quant_pre_process,
                                          quantize_dynamic, quantize_static)

    if method not in INT8_METHODS:
        raise ValueError(f"int8 method must be one of {INT8_METHODS}, got {method!r}")
    if method == "static" and (calibration is None or not len(calibration)):
        raise ExportError("static int8 quantization needs calibration images")
    with tempfile.TemporaryDirectory(prefix="tagger-quant-") as tmp:
        src, prepared, dst = Path(tmp, "fp32.onnx"), Path(tmp, "prepared.onnx"), Path(tmp, "int8.onnx")
        src.write_bytes(fp32)
        # Shape inference lets the quantizer see every MatMul's weight; ORT's own graph optimisation
        # is skipped here because it would bake CPU-specific fused ops into the file.
        quant_pre_process(str(src), str(prepared), skip_optimization=True, skip_symbolic_shape=True)
        keep_fp32 = scoring_head_nodes(onnx.load(str(prepared), load_external_data=False))
        if method == "dynamic":
            quantize_dynamic(str(prepared), str(dst), op_types_to_quantize=INT8_OPS, per_channel=True,
                             weight_type=QuantType.QInt8, nodes_to_exclude=keep_fp32)
        else:
            quantize_static(str(prepared), str(dst), _Images(calibration), quant_format=QuantFormat.QDQ,
                            op_types_to_quantize=INT8_OPS, per_channel=True,
                            activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                            calibrate_method=CalibrationMethod.MinMax, nodes_to_exclude=keep_fp32)
        return dst.read_bytes()


HEAD_LINEAR_SCOPE = "head.layers."  # a q2l head's decoder layers (train.q2l), as torch.onnx names their scopes


def head_linear_nodes(proto: onnx.ModelProto) -> set[str]:
    """Names of the q2l head's weight products (its attention and MLP linears), found through the scope
    names torch.onnx's exporter records on each node; empty for a graph without a head (or from an
    exporter that records no scopes, which leaves the head in fp32: slower, never less exact)."""
    out = set()
    for node in proto.graph.node:
        props = {p.key: p.value for p in node.metadata_props}
        if node.op_type in INT8_OPS and "aten.linear" in props.get("pkg.torch.onnx.fx_node", "") and \
                HEAD_LINEAR_SCOPE in props.get("pkg.torch.onnx.name_scopes", ""):
            out.add(node.name)
    return out


def scoring_head_nodes(proto: onnx.ModelProto) -> list[str]:
    """Names of the MatMul/Gemm nodes that stay fp32: from the tower's output projection (`visual.proj`)
    on, the projections, the tag-score products and a q2l head's attention products, which decide the
    tags; the tower's blocks before them carry the compute and are quantized. (Nodes are in topological
    order, so everything that reads the projected tokens comes after the first product with `visual.proj`.)

    A q2l head's linears (its attention projections and MLP) are quantized like the tower's: in fp32 they
    held int8 tagging on ViT-B-32 at 100 tags to 0.89x the dual view's speed (loaded machine; 0.94x
    quantized, idle, bench/head_speed.py), and quantizing them moved tag decisions no more than the
    tower does (99.85% vs 99.83% agreement with fp32 on a benchmark run; docs/training.md).
    """
    nodes = list(proto.graph.node)
    start = next((i for i, node in enumerate(nodes) if TOWER_PROJECTION in node.input), None)
    if start is None:
        raise ExportError(f"int8: the graph has no {TOWER_PROJECTION!r} product to keep the scoring head in "
                          "fp32 from; use --variant fp32 or fp16")
    head_linears = head_linear_nodes(proto)
    return [node.name for node in nodes[start:] if node.op_type in INT8_OPS and node.name not in head_linears]


def convert_fp16(fp32: bytes) -> bytes:
    """An fp16 copy for GPUs. Input stays uint8 and `scores` stays float32, so the runtime sees the
    same contract; TopK and the final sigmoid stay fp32 where the score resolution matters."""
    from onnxruntime.transformers.float16 import convert_float_to_float16

    proto = onnx.load_from_string(fp32)
    half = convert_float_to_float16(proto, keep_io_types=True,
                                    op_block_list=["TopK", "Sigmoid", "ReduceL2", "LayerNormalization"])
    return without_repeated_nodes(half).SerializeToString()


def without_repeated_nodes(proto: onnx.ModelProto) -> onnx.ModelProto:
    """Drop nodes that repeat an earlier node exactly (same op, inputs, outputs, attributes).

    The exporter stores equal weights once (an untrained model's LayerNorms all hold ones and zeros),
    and ONNX Runtime's fp16 converter before 1.32 inserts one fp32 Cast of such a weight per blocked
    node that reads it, every one with the same name and output: a graph ONNX Runtime refuses to load
    ("two nodes with same node name"; seen with onnxruntime 1.30 on a GPU machine). The copies compute
    the same value, so one is kept. Two different nodes writing one output are a real error.
    """
    seen: dict[tuple[str, ...], onnx.NodeProto] = {}
    kept = []
    for node in proto.graph.node:
        outputs = tuple(node.output)
        if outputs in seen:
            if seen[outputs] != node:  # protobuf messages compare field by field
                raise ExportError(f"fp16: two different nodes write {', '.join(outputs)}; use --quantize int8 "
                                  "or the fp32 model")
            continue
        seen[outputs] = node
        kept.append(node)
    if len(kept) < len(proto.graph.node):
        del proto.graph.node[:]
        proto.graph.node.extend(kept)
    return proto
