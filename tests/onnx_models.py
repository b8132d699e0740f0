"""Small but real tagger models built with onnx.helper: predictions are known in advance.

The colour model averages the input's pixels and scores each tag with a logistic on the mean
colour, so a pure red photo scores "red" near 1 and "blue" near 0.
"""
from __future__ import annotations

import datetime
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from tagger.images import Preprocess
from tagger.modelfile import build_metadata

COLOUR_LABELS = ["red", "green", "blue", "Light|bright"]
# Each tag's score = sigmoid(W·mean_rgb + b), mean_rgb in [0, 1].
COLOUR_W = np.array([[10, -5, -5, 10 / 3],
                     [-5, 10, -5, 10 / 3],
                     [-5, -5, 10, 10 / 3]], dtype=np.float32)
COLOUR_B = np.array([-5, -5, -5, -8], dtype=np.float32)


def colour_scores(mean_rgb: np.ndarray) -> np.ndarray:
    """What the colour model must output for a photo of this mean colour (NumPy reference)."""
    return 1.0 / (1.0 + np.exp(-(mean_rgb @ COLOUR_W + COLOUR_B)))


def build_colour_model(path: Path, size: int = 32, resize: str = "shortest",
                       thresholds: list[float] | None = None, name: str = "colours",
                       metadata: dict | None = None) -> Path:
    nodes = [
        helper.make_node("Cast", ["image"], ["as_float"], to=TensorProto.FLOAT),
        helper.make_node("ReduceMean", ["as_float"], ["mean"], axes=[1, 2], keepdims=0),
        helper.make_node("Mul", ["mean", "inv255"], ["mean01"]),
        helper.make_node("MatMul", ["mean01", "W"], ["logits0"]),
        helper.make_node("Add", ["logits0", "b"], ["logits"]),
        helper.make_node("Sigmoid", ["logits"], ["scores"]),
    ]
    inits = [numpy_helper.from_array(np.array(1 / 255, dtype=np.float32), "inv255"),
             numpy_helper.from_array(COLOUR_W, "W"), numpy_helper.from_array(COLOUR_B, "b")]
    graph = helper.make_graph(
        nodes, "colour_tagger",
        [helper.make_tensor_value_info("image", TensorProto.UINT8, ["batch", size, size, 3])],
        [helper.make_tensor_value_info("scores", TensorProto.FLOAT, ["batch", len(COLOUR_LABELS)])],
        inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    meta = metadata if metadata is not None else build_metadata(
        COLOUR_LABELS, thresholds or [0.5] * len(COLOUR_LABELS), Preprocess(size, resize, "bilinear"),
        {"name": name, "backbone": "mean-colour", "created": datetime.date.today().isoformat(),
         "training": {"images": 0, "note": "hand-set weights for tests"}})
    helper.set_model_props(model, meta)
    onnx.checker.check_model(model)
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(path))
    return path
