"""The model store: `models/NAME.onnx` in the user data folder, and resolving `--model NAME|FILE`."""
from __future__ import annotations

import os
from pathlib import Path

from tagger.errors import ModelError

MODEL_SUFFIX = ".onnx"
VARIANTS = ("int8", "fp16")  # stored beside NAME.onnx (fp32) as NAME.int8.onnx, NAME.fp16.onnx


def data_dir() -> Path:
    """TAGGER_HOME overrides the platform's user data folder (tests, portable installs)."""
    override = os.environ.get("TAGGER_HOME")
    if override:
        return Path(override)
    import platformdirs

    return Path(platformdirs.user_data_dir("tagger", appauthor=False))


def models_dir() -> Path:
    return data_dir() / "models"


def installed_models(variants: bool = True) -> list[Path]:
    """Model files in the store; with `variants=False`, one per model (its fp32 file, or the
    variant when that is all there is)."""
    folder = models_dir()
    if not folder.is_dir():
        return []
    paths = sorted((p for p in folder.iterdir() if p.suffix == MODEL_SUFFIX and p.is_file()),
                   key=lambda p: (base_name(p.stem), p.stem))  # a model's variants right after it
    if variants:
        return paths
    stems = {p.stem for p in paths}
    return [p for p in paths if base_name(p.stem) == p.stem or base_name(p.stem) not in stems]


def model_path_for_name(name: str) -> Path:
    if not name or "/" in name or "\\" in name or name.startswith("."):
        raise ModelError(None, f"invalid model name {name!r}: use letters, digits, '-' and '_'")
    return models_dir() / f"{name}{MODEL_SUFFIX}"


def variant_name(name: str, variant: str) -> str:
    return name if variant == "fp32" else f"{name}.{variant}"


def base_name(stem: str) -> str:
    """`mytags.int8` -> `mytags`: the model a stored variant belongs to."""
    head, _, tail = stem.rpartition(".")
    return head if head and tail in VARIANTS else stem


def stored_variant(path: Path, variant: str) -> Path | None:
    """The store's `variant` of the model at `path` (a store file), when there is one."""
    if path.parent.resolve() != models_dir().resolve():
        return None
    candidate = model_path_for_name(variant_name(base_name(path.stem), variant))
    return candidate if candidate.is_file() else None


def resolve_model(spec: str | None) -> Path:
    """A path to an existing file, a name in the store, or (with no spec) the only installed model."""
    if spec is None:
        models = installed_models(variants=False)
        if len(models) == 1:
            return models[0]
        if not models:
            raise ModelError(None, f"no model installed in {models_dir()}: pass --model FILE.onnx, or "
                                   "make one with `tagger export` (see README)")
        names = ", ".join(p.stem for p in models)
        raise ModelError(None, f"several models installed ({names}): choose one with --model NAME")
    candidate = Path(spec).expanduser()
    if candidate.suffix == MODEL_SUFFIX or os.sep in spec or (os.altsep and os.altsep in spec):
        if not candidate.exists():
            raise ModelError(candidate, "model file not found")
        return candidate
    stored = model_path_for_name(spec)
    if stored.exists():
        return stored
    if candidate.exists():
        return candidate
    available = ", ".join(p.stem for p in installed_models()) or "none"
    raise ModelError(None, f"no model named {spec!r} in {models_dir()} (installed: {available})")
