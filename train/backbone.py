"""Load an open_clip CLIP ViT by name or JSON config, with weights from a tag, a file, a folder or the Hub.

Every way in ends in the same place: an architecture dict (`config`, kept in the run so a checkpoint
can be rebuilt without any download) and a checkpoint file loaded strictly into `open_clip.CLIP`.
"""
from __future__ import annotations

import json
import os
import socket
from copy import deepcopy
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import open_clip
import torch
from open_clip.constants import OPENAI_DATASET_MEAN, OPENAI_DATASET_STD
from open_clip.transformer import VisionTransformer

from tagger.errors import ModelError
from tagger.images import Preprocess

HF_HOST = "huggingface.co"
CONFIG_DIR = Path(__file__).parent / "model_configs"
# Preferred weights per model when the user names none: LAION-2B first (DESIGN.md §5 default).
DEFAULT_TAG_PREFIXES = ("laion2b_s", "laion2b", "datacomp_xl", "openai")


class BackboneError(ModelError):
    """A backbone or its weights that cannot be found, downloaded or loaded."""


@dataclass
class LoadedClip:
    model: open_clip.CLIP
    tokenizer: Callable  # open_clip tokenizer: list[str] -> LongTensor [N, context_length]
    preprocess: Preprocess  # how photos become the model's uint8 [S, S, 3] input
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    name: str  # the backbone as given (model name, config path or schema:identifier)
    pretrained: str | None = None  # the weights as given, None for random init
    config: dict = field(default_factory=dict)  # open_clip model_cfg: rebuilds the architecture offline


def load_clip(backbone: str, pretrained: str | None, device: str | torch.device = "cpu",
              cache_dir: str | None = None) -> LoadedClip:
    """An open_clip CLIP ViT in eval mode.

    backbone: an open_clip model name (`ViT-B-32`), a JSON config path, `local-dir:DIR` or `hf-hub:ORG/REPO`.
    pretrained: an open_clip tag (`laion2b_s34b_b79k`), a checkpoint file, or None for random weights
    (ignored for `local-dir:`/`hf-hub:`, which carry their own weights).
    """
    backbone = str(backbone)
    config, preprocess_cfg, checkpoint = _resolve(backbone, pretrained, cache_dir)
    model = build_clip(config, name=backbone)
    if checkpoint:
        _load_weights(model, checkpoint, backbone)
    model.to(device).eval()
    mean = tuple(float(v) for v in preprocess_cfg.get("mean", OPENAI_DATASET_MEAN))
    std = tuple(float(v) for v in preprocess_cfg.get("std", OPENAI_DATASET_STD))
    return LoadedClip(
        model=model,
        tokenizer=tokenizer_for(config),
        preprocess=Preprocess(size=image_size(model), resize="shortest", interpolation="bicubic"),
        mean=mean, std=std, name=backbone,
        pretrained=None if backbone.startswith(("local-dir:", "hf-hub:")) else pretrained,
        config=config,
    )


def token_tower(visual: torch.nn.Module) -> torch.nn.Module:
    """`visual` (a CLIP visual tower) set to return (pooled, patch tokens) instead of pooled alone:
    HP-DVAL's local branch scores the patch tokens (train.model.encode_image reads both). Returned
    for chaining; the setting lives on the module, so every holder of the tower sees it."""
    visual.output_tokens = True
    return visual


def build_clip(config: dict, name: str = "<config>") -> open_clip.CLIP:
    """A randomly initialised CLIP from an open_clip model_cfg (the architecture, no weights)."""
    cfg = deepcopy(config)
    cfg.pop("preprocess_cfg", None)
    if "timm_model_name" in cfg.get("vision_cfg", {}) or "hf_model_name" in cfg.get("text_cfg", {}) \
            or cfg.pop("custom_text", False) or "multimodal_cfg" in cfg:
        raise BackboneError(name, "HP-DVAL needs a plain open_clip ViT (built-in vision transformer and "
                                  "text transformer); timm/HF towers and CoCa are not supported")
    try:
        model = open_clip.CLIP(**cfg)
    except (TypeError, ValueError, KeyError, AssertionError) as exc:
        raise BackboneError(name, f"not a valid open_clip model config: {exc}") from None
    if not isinstance(model.visual, VisionTransformer):
        raise BackboneError(name, "HP-DVAL needs a ViT image tower (patch tokens); ResNet CLIPs are not supported")
    return model


def tokenizer_for(config: dict) -> Callable:
    text_cfg = config.get("text_cfg", {})
    context_length = text_cfg.get("context_length", 77)
    if "hf_tokenizer_name" in text_cfg:
        return open_clip.tokenizer.HFTokenizer(text_cfg["hf_tokenizer_name"], context_length=context_length,
                                               **text_cfg.get("tokenizer_kwargs", {}))
    return open_clip.tokenizer.SimpleTokenizer(context_length=context_length,
                                               **text_cfg.get("tokenizer_kwargs", {}))


def image_size(model: open_clip.CLIP) -> int:
    size = model.visual.image_size
    if isinstance(size, (tuple, list)):
        if size[0] != size[1]:
            raise BackboneError(None, f"non-square model input {size} is not supported")
        size = size[0]
    return int(size)


def default_pretrained(backbone: str) -> str | None:
    """The weights used when the user names none: the model's LAION-2B tag, None for custom configs."""
    if backbone.endswith(".json") or backbone.startswith(("local-dir:", "hf-hub:")):
        return None
    tags = open_clip.list_pretrained_tags_by_model(backbone)
    for prefix in DEFAULT_TAG_PREFIXES:
        for tag in tags:
            if tag.startswith(prefix):
                return tag
    return tags[0] if tags else None


def _resolve(backbone: str, pretrained: str | None, cache_dir: str | None) -> tuple[dict, dict, str | None]:
    """(model_cfg, preprocess_cfg, checkpoint file or None) for any way of naming a backbone."""
    if backbone.startswith("local-dir:"):
        return _resolve_local_dir(Path(backbone[len("local-dir:"):]).expanduser())
    if backbone.startswith("hf-hub:"):
        return _resolve_hf_hub(backbone[len("hf-hub:"):], cache_dir)

    if backbone.endswith(".json") or os.sep in backbone or Path(backbone).is_file():
        config = _read_config_file(Path(backbone).expanduser())
        preprocess_cfg = config.pop("preprocess_cfg", {})
        return config, preprocess_cfg, _checkpoint_file(pretrained, backbone)

    config = open_clip.get_model_config(backbone)
    if config is None:
        vits = [m for m in open_clip.list_models() if m.startswith("ViT-")]
        raise BackboneError(None, f"unknown backbone {backbone!r}: give an open_clip model name "
                                  f"(e.g. {', '.join(vits[:4])}) or a JSON model config path")
    if not pretrained:
        return config, {}, None
    pretrained_cfg = open_clip.get_pretrained_cfg(backbone, pretrained)
    if not pretrained_cfg:
        return config, {}, _checkpoint_file(pretrained, backbone)
    if pretrained_cfg.get("quick_gelu"):  # OpenAI weights were trained with QuickGELU
        config["quick_gelu"] = True
    checkpoint = _download(pretrained_cfg, backbone, pretrained, cache_dir)
    return config, pretrained_cfg, checkpoint


def _read_config_file(path: Path) -> dict:
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise BackboneError(path, "backbone config file not found") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise BackboneError(path, f"cannot read backbone config: {exc}") from None
    config = config.get("model_cfg", config) if isinstance(config, dict) else config
    if not isinstance(config, dict) or not all(k in config for k in ("embed_dim", "vision_cfg", "text_cfg")):
        raise BackboneError(path, "not an open_clip model config (needs embed_dim, vision_cfg and text_cfg)")
    return config


def _checkpoint_file(pretrained: str | None, backbone: str) -> str | None:
    if not pretrained:
        return None
    path = Path(pretrained).expanduser()
    if path.is_file():
        return str(path)
    if os.sep in pretrained or path.suffix in (".pt", ".pth", ".bin", ".safetensors", ".npz"):
        raise BackboneError(path, "pretrained checkpoint file not found")
    tags = [] if backbone.endswith(".json") else open_clip.list_pretrained_tags_by_model(backbone)
    known = f"; known tags: {', '.join(tags)}" if tags else ""
    raise BackboneError(None, f"--pretrained {pretrained!r} is neither a checkpoint file nor an open_clip "
                              f"tag for {backbone}{known}")


def _resolve_local_dir(folder: Path) -> tuple[dict, dict, str | None]:
    cfg_path = folder / "open_clip_config.json"
    if not folder.is_dir():
        raise BackboneError(folder, "local-dir: folder not found")
    raw = json.loads(cfg_path.read_text(encoding="utf-8")) if cfg_path.is_file() else None
    if raw is None:
        raise BackboneError(cfg_path, "local-dir: needs open_clip_config.json in the folder")
    checkpoint = open_clip.factory._find_checkpoint_in_dir(folder)
    if checkpoint is None:
        raise BackboneError(folder, "local-dir: no weights (*.safetensors, *.bin, *.pth) in the folder")
    return _read_config_file(cfg_path), raw.get("preprocess_cfg", {}), checkpoint


def _resolve_hf_hub(model_id: str, cache_dir: str | None) -> tuple[dict, dict, str]:
    config_file = _hf_file(model_id, "open_clip_config.json", cache_dir, f"hf-hub:{model_id}")
    raw = json.loads(Path(config_file).read_text(encoding="utf-8"))
    weights = None
    for name in ("open_clip_model.safetensors", "open_clip_pytorch_model.bin"):
        try:
            weights = _hf_file(model_id, name, cache_dir, f"hf-hub:{model_id}")
            break
        except BackboneError:
            continue
    if weights is None:
        raise BackboneError(None, f"hf-hub:{model_id} has no open_clip weights file")
    return _read_config_file(Path(config_file)), raw.get("preprocess_cfg", {}), weights


def _download(pretrained_cfg: dict, backbone: str, tag: str, cache_dir: str | None) -> str:
    hub = pretrained_cfg.get("hf_hub", "")
    if hub:
        model_id, filename = os.path.split(hub)
        names = [filename] if filename else ["open_clip_model.safetensors", "open_clip_pytorch_model.bin"]
        for name in names:
            cached = _hf_cached(model_id, name, cache_dir)
            if cached:
                return cached
    _require_network(backbone, tag)
    try:
        return open_clip.pretrained.download_pretrained(pretrained_cfg, cache_dir=cache_dir)
    except Exception as exc:  # hub/HTTP errors come in many types; all mean the same to the user
        raise BackboneError(None, f"cannot download {backbone} weights {tag!r}: {exc}. "
                                  f"{_offline_hint(backbone, tag)}") from None


def _hf_file(model_id: str, filename: str, cache_dir: str | None, what: str) -> str:
    cached = _hf_cached(model_id, filename, cache_dir)
    if cached:
        return cached
    _require_network(what, None)
    from huggingface_hub import hf_hub_download

    try:
        return hf_hub_download(model_id, filename, cache_dir=cache_dir)
    except Exception as exc:
        raise BackboneError(None, f"cannot download {filename} from {what}: {exc}") from None


def _hf_cached(model_id: str, filename: str, cache_dir: str | None) -> str | None:
    try:
        from huggingface_hub import hf_hub_download

        return hf_hub_download(model_id, filename, cache_dir=cache_dir, local_files_only=True)
    except Exception:  # not cached (or hub library missing): the caller downloads or explains
        return None


def _require_network(backbone: str, tag: str | None) -> None:
    # huggingface_hub retries for about a minute before failing offline; a DNS lookup answers at once.
    try:
        socket.getaddrinfo(HF_HOST, 443)
    except OSError:
        raise BackboneError(None, f"{backbone} weights {tag or ''} are not downloaded and {HF_HOST} cannot "
                                  f"be reached (offline?). {_offline_hint(backbone, tag)}".replace("  ", " ")) from None


def _offline_hint(backbone: str, tag: str | None) -> str:
    """How to get the weights without a network: an open_clip `tag` can be passed as a file;
    an hf-hub repository (no tag) carries its own weights, so only its folder can stand in."""
    if tag:
        return (f"Download the {backbone} {tag!r} checkpoint on a connected machine (it is cached under "
                "~/.cache/huggingface) or copy the file here and pass it as --pretrained /path/to/"
                "open_clip_pytorch_model.bin (or --backbone local-dir:/path/to/folder).")
    return (f"Download {backbone} on a connected machine (it is cached under ~/.cache/huggingface) or copy "
            "its folder (open_clip_config.json and the weights) here and pass it as "
            "--backbone local-dir:/path/to/folder.")


def _load_weights(model: open_clip.CLIP, checkpoint: str, backbone: str) -> None:
    try:
        open_clip.load_checkpoint(model, checkpoint, strict=True)
    except RuntimeError as exc:
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise BackboneError(checkpoint, f"checkpoint does not fit backbone {backbone}: {first}") from None
    except (OSError, EOFError, ValueError, KeyError) as exc:
        raise BackboneError(checkpoint, f"cannot read checkpoint: {exc}") from None
    except Exception as exc:  # torch.load raises pickle/Unpickling errors for files that are not checkpoints
        raise BackboneError(checkpoint, f"not a PyTorch/open_clip checkpoint: {type(exc).__name__}: {exc}") from None
