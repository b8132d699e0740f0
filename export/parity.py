"""Does the exported file compute what PyTorch computes? Scores from both on the same real images."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from export.onnx_export import ExportError
from tagger.modelfile import INPUT_NAME, OUTPUT_NAME

FP32_TOLERANCE = 1e-4  # max abs score difference allowed between ONNX Runtime and PyTorch
BATCH = 16


@dataclass(frozen=True)
class Parity:
    max_abs_diff: float
    images: int

    def __str__(self) -> str:
        return f"max |ORT - PyTorch| score difference {self.max_abs_diff:.2e} on {self.images} images"


def torch_scores(module: torch.nn.Module, images: np.ndarray, batch: int = BATCH) -> np.ndarray:
    """float32 [N, C] from the PyTorch module on uint8 [N, S, S, 3] images."""
    module = module.eval()
    out = []
    with torch.no_grad():
        for start in range(0, len(images), batch):
            chunk = torch.from_numpy(np.ascontiguousarray(images[start:start + batch]))
            out.append(module(chunk).float().numpy())
    return np.concatenate(out)


def onnx_session(model: bytes, threads: int | None = None, device: str = "cpu"):
    import onnxruntime as ort

    options = ort.SessionOptions()
    if threads:
        options.intra_op_num_threads = threads
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    providers = ["CUDAExecutionProvider", "CPUExecutionProvider"] if device == "cuda" else ["CPUExecutionProvider"]
    try:
        return ort.InferenceSession(model, options, providers=providers)
    except Exception as exc:  # ORT's own error types: the graph we just wrote does not load
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ExportError(f"ONNX Runtime cannot load the exported graph: {first}") from None


def onnx_scores(session, images: np.ndarray, batch: int = BATCH) -> np.ndarray:
    out = []
    for start in range(0, len(images), batch):
        chunk = np.ascontiguousarray(images[start:start + batch])
        (scores,) = session.run([OUTPUT_NAME], {INPUT_NAME: chunk})
        out.append(np.asarray(scores, dtype=np.float32))
    return np.concatenate(out)


def check_parity(reference: np.ndarray, exported: np.ndarray, tolerance: float = FP32_TOLERANCE) -> Parity:
    """Compare score matrices; an ExportError names the worst image and tag when over tolerance."""
    if reference.shape != exported.shape:
        raise ExportError(f"exported graph gives scores of shape {exported.shape}, PyTorch {reference.shape}")
    if not np.isfinite(exported).all():
        raise ExportError("exported graph produces NaN or infinite scores")
    diff = np.abs(reference.astype(np.float64) - exported.astype(np.float64))
    parity = Parity(float(diff.max()) if diff.size else 0.0, len(reference))
    if parity.max_abs_diff > tolerance:
        image, tag = np.unravel_index(int(diff.argmax()), diff.shape)
        raise ExportError(f"parity check failed: {parity} (image {image}, tag {tag}: PyTorch "
                          f"{reference[image, tag]:.6f}, ONNX Runtime {exported[image, tag]:.6f}); "
                          f"allowed {tolerance:.0e}. The exported file was not written.")
    return parity
