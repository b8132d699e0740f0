"""ExportParts -> the bytes of one checked `.onnx` model file (fp32, int8 or fp16).

Every variant is verified before it is returned: the fp32 graph against PyTorch (parity), the int8
and fp16 graphs against the fp32 graph (tag-decision agreement on the same images).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from export.graph import ScoringGraph
from export.onnx_export import ExportError, attach_metadata, export_graph, model_bytes
from export.parity import FP32_TOLERANCE, Parity, check_parity, onnx_scores, onnx_session, torch_scores
from export.quantize import Agreement, convert_fp16, decision_agreement, quantize_int8
from tagger.modelfile import MIN_AGREEMENT
from train.model import ExportParts

VARIANTS = ("fp32", "int8", "fp16")


class AgreementError(ExportError):
    """A quantized model that decides too differently from fp32 (refused unless forced)."""


@dataclass
class ExportSettings:
    variant: str = "fp32"  # fp32 | int8 | fp16
    int8_method: str = "dynamic"  # dynamic | static (see export/quantize.py for why dynamic)
    min_agreement: float = MIN_AGREEMENT  # int8/fp16 must agree with fp32 on this fraction of decisions
    force: bool = False  # write a variant below min_agreement anyway
    tolerance: float = FP32_TOLERANCE  # fp32 parity: max abs score difference ORT vs PyTorch
    threads: int | None = None  # ONNX Runtime threads for the checks


@dataclass
class ExportResult:
    data: bytes  # the model file, metadata attached
    variant: str
    parity: Parity
    agreement: Agreement | None  # int8/fp16 vs fp32; None for fp32 or an fp16 that cannot run here
    note: str = ""  # anything the user should know (e.g. fp16 not checkable on this machine)

    def report(self) -> dict:
        """What goes into `tagger.model` under "export"."""
        out = {"precision": self.variant, "parity_max_abs_diff": self.parity.max_abs_diff,
               "parity_images": self.parity.images}
        if self.agreement is not None:
            out["agreement_with_fp32"] = self.agreement.decisions
            out["images_same_tags_as_fp32"] = self.agreement.images
        return out


def build_model_file(parts: ExportParts, thresholds: list[float], check_images: np.ndarray,
                     metadata_for, settings: ExportSettings | None = None,
                     calibration_images: np.ndarray | None = None) -> ExportResult:
    """Export, verify, optionally quantize, and attach metadata.

    `metadata_for(report: dict) -> dict[str, str]` builds the `metadata_props` once the checks are in,
    so the model file records its own parity and agreement figures.
    """
    settings = settings or ExportSettings()
    if settings.variant not in VARIANTS:
        raise ValueError(f"variant must be one of {VARIANTS}, got {settings.variant!r}")
    if not len(check_images):
        raise ExportError("no images to check the exported graph on")
    graph = ScoringGraph(parts)
    proto = export_graph(graph, parts.image_size)
    fp32 = model_bytes(proto)
    fp32_scores = onnx_scores(onnx_session(fp32, settings.threads), check_images)
    parity = check_parity(torch_scores(graph, check_images), fp32_scores, settings.tolerance)

    agreement, note, data = None, "", fp32
    if settings.variant == "int8":
        data = quantize_int8(fp32, settings.int8_method, calibration_images)
        scores = onnx_scores(onnx_session(data, settings.threads), check_images)
        agreement = decision_agreement(fp32_scores, scores, thresholds)
    elif settings.variant == "fp16":
        data = convert_fp16(fp32)
        agreement, note = _check_fp16(data, fp32_scores, thresholds, check_images, settings)
    if agreement is not None and agreement.decisions < settings.min_agreement and not settings.force:
        raise AgreementError(f"{settings.variant} model refused: only {agreement} (needs "
                             f"{settings.min_agreement:.0%}). Use fp32, or --force to write it anyway.")

    result = ExportResult(data=b"", variant=settings.variant, parity=parity, agreement=agreement, note=note)
    final = proto if data is fp32 else _load(data)
    attach_metadata(final, metadata_for(result.report()))
    result.data = model_bytes(final)
    return result


def _check_fp16(data: bytes, fp32_scores: np.ndarray, thresholds, images: np.ndarray,
                settings: ExportSettings) -> tuple[Agreement | None, str]:
    """fp16 graphs are for GPUs; check on CUDA when present, else on CPU where ORT has the kernels."""
    import onnxruntime as ort

    device = "cuda" if "CUDAExecutionProvider" in ort.get_available_providers() else "cpu"
    try:
        scores = onnx_scores(onnx_session(data, settings.threads, device), images)
    except Exception as exc:  # ORT CPU lacks some fp16 kernels; the file is still right for a GPU
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        return None, f"fp16 agreement not checked: ONNX Runtime on this machine cannot run it ({first})"
    return decision_agreement(fp32_scores, scores, thresholds), f"fp16 checked on {device.upper()}"


def _load(data: bytes):
    import onnx

    return onnx.load_from_string(data)
