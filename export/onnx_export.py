"""A scoring nn.Module to one ONNX file: uint8 NHWC `image` in, `scores` out, metadata attached.

torch.onnx's dynamo exporter (torch.export + onnxscript) is the one used: the TorchScript exporter is
deprecated, and on a ViT the dynamo graph has about a third of the nodes (no Shape/Gather/Concat
chains around every reshape) while ONNX Runtime runs both equally fast once it has optimised them.
"""
from __future__ import annotations

import io
import logging
import warnings
from contextlib import redirect_stdout
from pathlib import Path

import onnx
import torch

from tagger.atomic import write_atomic
from tagger.modelfile import INPUT_NAME, OUTPUT_NAME

OPSET = 18
# ONNX IR 9 is what ONNX Runtime 1.17 (the oldest the runtime allows) reads; our graphs use nothing newer.
IR_VERSION = 9
# torch.export wants a finite upper bound for a symbolic dimension; no batch comes near it.
MAX_BATCH = 65536


class ExportError(RuntimeError):
    """The graph could not be exported, or the export does not compute what PyTorch computes."""


def export_graph(module: torch.nn.Module, size: int, opset: int = OPSET) -> onnx.ModelProto:
    """Trace `module` (uint8 [B, S, S, 3] -> float32 [B, C]) into an ONNX model with a dynamic batch."""
    module = module.eval()
    example = torch.zeros((2, size, size, 3), dtype=torch.uint8)
    batch = torch.export.Dim("batch", min=1, max=MAX_BATCH)
    try:
        with torch.no_grad(), warnings.catch_warnings(), _quiet_exporter():
            warnings.simplefilter("ignore")  # exporter chatter about internals, not about our graph
            program = torch.onnx.export(
                module, (example,), input_names=[INPUT_NAME], output_names=[OUTPUT_NAME],
                dynamic_shapes={INPUT_NAME: {0: batch}}, opset_version=opset, dynamo=True,
                optimize=True, verbose=False,
            )
    except ImportError as exc:
        raise ExportError(f"ONNX export needs onnxscript ({exc}): pip install onnxscript") from None
    except Exception as exc:  # torch.export/onnxscript raise many types; all mean the graph did not export
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ExportError(f"ONNX export failed: {type(exc).__name__}: {first}") from None
    proto = program.model_proto
    proto.ir_version = min(proto.ir_version, IR_VERSION)
    proto.producer_name = "tagger"
    _name_batch_axes(proto)
    onnx.checker.check_model(proto)
    return proto


def _name_batch_axes(proto: onnx.ModelProto) -> None:
    """The exporter names the symbolic batch axis after its own symbols; the runtime only needs it
    dynamic, but a readable name helps anyone opening the file in Netron."""
    for value in list(proto.graph.input) + list(proto.graph.output):
        dims = value.type.tensor_type.shape.dim
        if dims and not dims[0].HasField("dim_value"):
            dims[0].dim_param = "batch"


class _quiet_exporter:
    """torch.onnx prints progress lines ("Obtain model graph ... ✅") to stdout and logs at INFO."""

    def __enter__(self):
        self._stdout = redirect_stdout(io.StringIO())
        self._stdout.__enter__()
        self._logger = logging.getLogger("torch.onnx")
        self._level = self._logger.level
        self._logger.setLevel(logging.ERROR)
        return self

    def __exit__(self, *exc):
        self._logger.setLevel(self._level)
        return self._stdout.__exit__(*exc)


def attach_metadata(proto: onnx.ModelProto, metadata: dict[str, str]) -> None:
    """Replace the model's `metadata_props` with `metadata` (tagger.* keys from build_metadata)."""
    del proto.metadata_props[:]
    onnx.helper.set_model_props(proto, metadata)


def model_bytes(proto: onnx.ModelProto) -> bytes:
    try:
        return proto.SerializeToString()
    except ValueError as exc:  # protobuf refuses messages over 2 GB
        raise ExportError(f"the model is too large for a single .onnx file ({exc}); "
                          "choose a smaller backbone") from None


def save_model(data: bytes, path: Path) -> None:
    """Write atomically: an interrupted export never leaves half a model in the store."""
    path.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(path, data)
