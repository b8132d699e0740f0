"""The two things `tagger export` does: a training run to a model file, plain CLIP to a model file."""
from __future__ import annotations

import datetime
from dataclasses import dataclass
from pathlib import Path

from export.build import ExportResult, ExportSettings, build_model_file
from export.onnx_export import save_model
from tagger.errors import TaggerError
from tagger.images import Preprocess
from tagger.labels import read_labels
from tagger.modelfile import build_metadata
from tagger.store import model_path_for_name, variant_name


@dataclass
class ExportJob:
    name: str
    path: Path
    result: ExportResult
    replaced: bool
    min_agreement: float
    check_source: str  # what the checks ran on, in words

    def lines(self) -> list[str]:
        size_mb = len(self.result.data) / 1e6
        verb = "Replaced" if self.replaced else "Wrote"
        out = [f"{verb} {self.path} ({self.result.variant}, {size_mb:.1f} MB)",
               f"  parity (fp32 graph): max |ONNX Runtime - PyTorch| score difference "
               f"{self.result.parity.max_abs_diff:.1e} on {self.result.parity.images} {self.check_source}"]
        agreement = self.result.agreement
        if agreement is not None:
            flag = "" if agreement.decisions >= self.min_agreement else \
                f"  [below {self.min_agreement:.0%}: written because of --force]"
            out.append(f"  {self.result.variant} vs fp32: {agreement}{flag}")
        if self.result.note:
            out.append(f"  {self.result.note}")
        out.append(f"Tag photos with it: tagger tag PHOTOS --model {self.model_arg()}")
        return out

    def model_arg(self) -> str:
        """What to pass to `--model`: the store name when the file is in the store, else its path."""
        try:
            in_store = self.path.resolve() == model_path_for_name(self.path.stem).resolve()
        except TaggerError:
            in_store = False
        return self.path.stem if in_store else str(self.path)


def _destination(name: str, out: Path | None, variant: str) -> Path:
    """`--out` as given; in the store, NAME.onnx for fp32 and NAME.int8.onnx / NAME.fp16.onnx beside it,
    so `tagger tag --model NAME` can pick the validated variant that suits the device."""
    if out is not None:
        return out
    return model_path_for_name(variant_name(name, variant))


def _write(data: bytes, path: Path) -> bool:
    existed = path.exists()
    save_model(data, path)
    return existed


def export_run(run_dir: Path, name: str | None, out: Path | None, settings: ExportSettings,
               calibration_count: int) -> ExportJob:
    from train.runs import load_run

    run = load_run(run_dir)
    name = name or (out.stem if out is not None else None) or run.summary.get("name") or Path(run_dir).resolve().name
    path = _destination(name, out, settings.variant)
    validation = run.validation_images()
    calibration = run.calibration_images(calibration_count) \
        if settings.variant == "int8" and settings.int8_method == "static" else None

    def metadata_for(report: dict) -> dict[str, str]:
        summary = dict(run.summary)
        summary["name"] = name
        summary.setdefault("created", _now())
        summary["export"] = {**report, "exported": _now()}
        return build_metadata(run.labels, run.thresholds, run.preprocess, summary)

    result = build_model_file(run.parts, run.thresholds, validation, metadata_for, settings, calibration)
    replaced = _write(result.data, path)
    return ExportJob(name, path, result, replaced, settings.min_agreement, "validation images")


def export_zero_shot(labels_file: Path, backbone: str, pretrained: str | None, alpha: float | None,
                     images_dir: Path | None, name: str | None, out: Path | None,
                     settings: ExportSettings) -> ExportJob:
    from export.check_images import folder_images, probe_images
    from export.zero_shot import THRESHOLD, ZERO_SHOT_ALPHA, zero_shot_parts, zero_shot_summary
    from train.backbone import BackboneError, default_pretrained, load_clip

    labels = read_labels(labels_file)
    name = name or (out.stem if out is not None else labels_file.stem)
    path = _destination(name, out, settings.variant)
    pretrained = pretrained or default_pretrained(backbone)
    if not pretrained:
        raise BackboneError(backbone, "zero-shot tagging needs trained CLIP weights: pass --pretrained TAG|PATH")
    clip = load_clip(backbone, pretrained)
    alpha = ZERO_SHOT_ALPHA if alpha is None else alpha
    parts = zero_shot_parts(clip, labels, alpha=alpha)
    preprocess: Preprocess = clip.preprocess
    if images_dir is not None:
        images, source = folder_images(images_dir, preprocess), f"photos from {images_dir}"
    else:
        images, source = probe_images(preprocess), "synthetic check images"
    thresholds = [THRESHOLD] * len(labels)

    def metadata_for(report: dict) -> dict[str, str]:
        summary = zero_shot_summary(clip, labels, name, alpha)
        summary["export"] = {**report, "exported": _now()}
        return build_metadata(labels, thresholds, preprocess, summary)

    result = build_model_file(parts, thresholds, images, metadata_for, settings, calibration_images=images)
    replaced = _write(result.data, path)
    return ExportJob(name, path, result, replaced, settings.min_agreement, source)


def _now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
