"""The model file contract (DESIGN.md §2): one `.onnx` that carries its labels, thresholds and
preprocessing, and the ONNX Runtime session that runs it."""
from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from tagger.errors import LabelsError, ModelError
from tagger.images import Preprocess
from tagger.labels import check_tags, has_control

FORMAT_VERSION = "1"
# A quantized variant that makes the same tag decisions as fp32 on at least this fraction of
# (image, tag) pairs of its validation set counts as validated (export refuses to write below it).
MIN_AGREEMENT = 0.99
INPUT_NAME = "image"
OUTPUT_NAME = "scores"

# What `--device` asks for, mapped to ONNX Runtime providers; `auto` tries them in this order.
DEVICE_PROVIDERS = {
    "cpu": [],
    "cuda": ["CUDAExecutionProvider"],
    "coreml": ["CoreMLExecutionProvider"],
    "directml": ["DmlExecutionProvider"],
}
DEVICES = ("auto", *DEVICE_PROVIDERS)  # the --device choices
AUTO_PREFERENCE = [provider for providers in DEVICE_PROVIDERS.values() for provider in providers]


@dataclass(frozen=True)
class ModelInfo:
    """Everything the runtime knows about a model, read from its metadata."""

    path: Path
    labels: list[str]
    thresholds: list[float]
    preprocess: Preprocess
    model: dict  # tagger.model: name, backbone, created, training summary
    sha256: str = field(repr=False)

    @property
    def name(self) -> str:
        return str(self.model.get("name") or self.path.stem)


def file_sha256(path: str | os.PathLike) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def build_metadata(labels: list[str], thresholds: list[float], preprocess: Preprocess, model: dict) -> dict:
    """The `metadata_props` an exporter writes: string keys to JSON strings."""
    for key in ("name", "backbone", "created"):
        if key not in model:
            raise ValueError(f"tagger.model needs a {key!r} entry")
    check_tags(list(labels), "labels")  # refuse at export what every runtime would refuse at open
    if has_control(str(model["name"])):
        raise ValueError(f"model name {model['name']!r} holds a control character")
    return {
        "tagger.format": FORMAT_VERSION,
        "tagger.labels": json.dumps(list(labels), ensure_ascii=False),
        "tagger.thresholds": json.dumps([float(t) for t in thresholds]),
        "tagger.preprocess": json.dumps(preprocess.to_dict()),
        "tagger.model": json.dumps(model, ensure_ascii=False),
    }


def parse_metadata(path: Path, meta: dict[str, str], sha256: str) -> ModelInfo:
    """Validate the metadata of a model file; every broken rule is a ModelError naming the file."""
    if meta.get("tagger.format") is None:
        raise ModelError(path, "not a tagger model (no tagger.format metadata); "
                               "make one with `tagger export`")
    if meta["tagger.format"] != FORMAT_VERSION:
        raise ModelError(path, f"model format {meta['tagger.format']!r} is not supported by this "
                               f"tagger (reads format {FORMAT_VERSION}); upgrade tagger")
    try:
        labels = json.loads(meta["tagger.labels"])
        thresholds = json.loads(meta["tagger.thresholds"])
        preprocess = Preprocess.from_dict(json.loads(meta["tagger.preprocess"]))
        model = json.loads(meta.get("tagger.model", "{}"))
    except KeyError as exc:
        raise ModelError(path, f"tagger model metadata lacks {exc.args[0]}") from None
    except (ValueError, TypeError) as exc:
        raise ModelError(path, f"tagger model metadata is malformed: {exc}") from None
    if not (isinstance(labels, list) and labels and all(isinstance(t, str) and t for t in labels)):
        raise ModelError(path, "tagger.labels must be a non-empty list of tag strings")
    if len(set(labels)) != len(labels):
        raise ModelError(path, "tagger.labels has duplicate tags")
    try:
        check_tags(labels, path)
    except LabelsError as exc:  # a keyword the writers cannot store: refused before any photo is touched
        raise ModelError(path, f"tagger.labels: {exc.reason}") from None
    if not (isinstance(thresholds, list) and len(thresholds) == len(labels)
            and all(isinstance(t, (int, float)) and 0.0 <= t <= 1.0 for t in thresholds)):
        raise ModelError(path, f"tagger.thresholds must be {len(labels)} numbers in [0, 1]")
    if not isinstance(model, dict):
        raise ModelError(path, "tagger.model must be a JSON object")
    if has_control(str(model.get("name", ""))):
        raise ModelError(path, "tagger.model name holds a control character (it is written into every photo)")
    return ModelInfo(path=path, labels=labels, thresholds=[float(t) for t in thresholds],
                     preprocess=preprocess, model=model, sha256=sha256)


def select_providers(device: str, available: list[str]) -> list[str]:
    """Providers to ask ONNX Runtime for, best first; CPU always last as the fallback."""
    if device == "auto":
        wanted = [p for p in AUTO_PREFERENCE if p in available]
    else:
        if device not in DEVICE_PROVIDERS:
            raise ValueError(f"unknown device {device!r}")
        wanted = DEVICE_PROVIDERS[device]
        missing = [p for p in wanted if p not in available]
        if missing:
            raise ModelError(None, f"--device {device} needs {missing[0]}, which this ONNX Runtime "
                                   f"does not have (available: {', '.join(available)})")
    return wanted + ["CPUExecutionProvider"]


def cpu_count() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # macOS, Windows
        return os.cpu_count() or 1


class TaggerModel:
    """An ONNX Runtime session over a tagger model file, with its metadata checked."""

    def __init__(self, path: str | os.PathLike, device: str = "auto", threads: int | None = None,
                 spinning: bool = True):
        import onnxruntime as ort  # imported here so `tagger --help` stays instant

        self.path = Path(path)
        try:
            sha256 = file_sha256(self.path)
        except FileNotFoundError:
            raise ModelError(self.path, "model file not found") from None
        except OSError as exc:
            raise ModelError(self.path, f"cannot read model file: {exc.strerror or exc}") from None

        options = ort.SessionOptions()
        options.intra_op_num_threads = threads or cpu_count()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        if not spinning:
            # Spinning intra-op threads would steal the cores the decode workers need.
            options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        providers = select_providers(device, ort.get_available_providers())
        try:
            self.session = ort.InferenceSession(str(self.path), options, providers=providers)
        except Exception as exc:  # ORT raises its own Fail/InvalidProtobuf types; all mean "not a model"
            first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise ModelError(self.path, f"not a valid ONNX model ({first_line})") from None

        self.providers = self.session.get_providers()
        if device not in ("auto", "cpu") and DEVICE_PROVIDERS[device][0] not in self.providers:
            # ORT silently falls back to CPU when a provider fails to initialise; say so instead.
            raise ModelError(self.path, f"--device {device} was asked for but ONNX Runtime fell back to "
                                        f"{', '.join(self.providers)}")
        meta = self.session.get_modelmeta().custom_metadata_map
        self.info = parse_metadata(self.path, meta, sha256)
        self._check_signature()

    def _check_signature(self) -> None:
        inputs, outputs = self.session.get_inputs(), self.session.get_outputs()
        if len(inputs) != 1 or inputs[0].name != INPUT_NAME or inputs[0].type != "tensor(uint8)":
            raise ModelError(self.path, "model input must be one uint8 tensor named 'image'")
        shape = inputs[0].shape
        size = self.info.preprocess.size
        if len(shape) != 4 or shape[3] != 3 or any(isinstance(d, int) and d != size for d in shape[1:3]):
            raise ModelError(self.path, f"model input must be [B, {size}, {size}, 3], got {shape}")
        if not any(o.name == OUTPUT_NAME for o in outputs):
            raise ModelError(self.path, "model has no 'scores' output")

    @property
    def labels(self) -> list[str]:
        return self.info.labels

    def predict(self, batch: np.ndarray) -> np.ndarray:
        """uint8 [B, S, S, 3] -> float32 scores [B, C] in [0, 1]."""
        (scores,) = self.session.run([OUTPUT_NAME], {INPUT_NAME: batch})
        return np.asarray(scores, dtype=np.float32)


def precision_of(info: ModelInfo) -> str:
    return str(info.model.get("export", {}).get("precision", "fp32"))


def is_validated_variant(info: ModelInfo) -> bool:
    agreement = info.model.get("export", {}).get("agreement_with_fp32")
    return isinstance(agreement, (int, float)) and agreement >= MIN_AGREEMENT


def open_model(spec: str | None, device: str = "auto", precision: str = "auto",
               spinning: bool = True) -> tuple[TaggerModel, str]:
    """The model to tag with, and a note on which variant was chosen and why.

    `--model NAME` may have stored variants (NAME.int8.onnx beside NAME.onnx). With precision
    "auto", a CPU run takes the int8 variant when its export validated it against fp32 (about
    twice as fast, same decisions on >= 99% of validation tags); a GPU run keeps fp32.
    """
    from tagger.store import resolve_model, stored_variant

    path = resolve_model(spec)
    if precision in ("int8", "fp16"):
        variant = stored_variant(path, precision)
        if variant is None and path.stem.endswith("." + precision):
            variant = path
        if variant is None:
            raise ModelError(path, f"no {precision} variant of this model in the store: make one with "
                                   f"`tagger export RUN --quantize {precision}`")
        return TaggerModel(variant, device=device, spinning=spinning), f"{precision} variant as asked"
    if precision == "auto":
        variant = stored_variant(path, "int8")
        on_cpu = device == "cpu" or (device == "auto" and not _gpu_available())
        if variant is not None and variant != path and on_cpu:
            model = TaggerModel(variant, device=device, spinning=spinning)
            if is_validated_variant(model.info):
                agreement = model.info.model["export"]["agreement_with_fp32"]
                return model, f"int8 variant (agrees with fp32 on {agreement:.1%} of validation tags)"
    model = TaggerModel(path, device=device, spinning=spinning)
    return model, precision_of(model.info)


def _gpu_available() -> bool:
    import onnxruntime as ort

    return any(p in ort.get_available_providers() for p in AUTO_PREFERENCE)


def read_model_info(path: str | os.PathLike) -> ModelInfo:
    """Metadata only, for `tagger models`: a CPU session with one thread."""
    return TaggerModel(path, device="cpu", threads=1).info
