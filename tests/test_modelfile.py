"""The model file contract and provider selection."""
import json

import pytest

from tagger.errors import ModelError
from tagger.images import Preprocess
from tagger.modelfile import TaggerModel, build_metadata, parse_metadata, select_providers
from tests.onnx_models import COLOUR_LABELS, build_colour_model


def test_metadata_round_trip(colour_model):
    model = TaggerModel(colour_model, device="cpu")
    assert model.labels == COLOUR_LABELS
    assert model.info.preprocess == Preprocess(32, "shortest", "bilinear")
    assert model.info.thresholds == [0.5] * 4
    assert model.providers == ["CPUExecutionProvider"]


@pytest.mark.parametrize("change, message", [
    ({"tagger.format": "2"}, "model format '2' is not supported"),
    ({"tagger.labels": "not json"}, "metadata is malformed"),
    ({"tagger.labels": json.dumps(["a", "a", "b", "c"])}, "duplicate tags"),
    ({"tagger.thresholds": json.dumps([0.5, 2.0, 0.5, 0.5])}, "4 numbers in [0, 1]"),
    ({"tagger.thresholds": json.dumps([0.5])}, "4 numbers in [0, 1]"),
    ({"tagger.preprocess": json.dumps({"size": 32, "resize": "stretch"})}, "resize must be one of"),
])
def test_broken_metadata_is_named(tmp_path, change, message):
    meta = build_metadata(COLOUR_LABELS, [0.5] * 4, Preprocess(32), {"name": "x", "backbone": "b", "created": "d"})
    meta.update(change)
    with pytest.raises(ModelError, match=message.replace("[", r"\[").replace("]", r"\]")):
        parse_metadata(tmp_path / "m.onnx", meta, "0" * 64)


def test_input_size_must_match_preprocess(tmp_path):
    meta = build_metadata(COLOUR_LABELS, [0.5] * 4, Preprocess(64), {"name": "x", "backbone": "b", "created": "d"})
    path = build_colour_model(tmp_path / "m.onnx", size=32, metadata=meta)
    with pytest.raises(ModelError, match=r"must be \[B, 64, 64, 3\]"):
        TaggerModel(path)


def test_provider_selection():
    available = ["CUDAExecutionProvider", "CPUExecutionProvider"]
    assert select_providers("auto", available) == ["CUDAExecutionProvider", "CPUExecutionProvider"]
    assert select_providers("auto", ["CPUExecutionProvider"]) == ["CPUExecutionProvider"]
    assert select_providers("cpu", available) == ["CPUExecutionProvider"]
    with pytest.raises(ModelError, match="--device cuda needs CUDAExecutionProvider"):
        select_providers("cuda", ["CPUExecutionProvider"])


def test_asking_for_a_missing_gpu_is_fatal(colour_model):
    from click.testing import CliRunner

    from tagger.cli import cli

    result = CliRunner().invoke(cli, ["tag", str(colour_model.parent), "--model", str(colour_model),
                                      "--device", "cuda"])
    assert result.exit_code == 1 and "--device cuda needs CUDAExecutionProvider" in result.output
