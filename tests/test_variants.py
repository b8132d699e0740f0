"""Stored precision variants: on CPU `--model NAME` runs a validated int8 variant, else fp32."""
import json

from click.testing import CliRunner

from tagger.cli import cli
from tagger.images import Preprocess
from tagger.modelfile import build_metadata, file_sha256
from tests.conftest import solid_photo
from tests.onnx_models import COLOUR_LABELS, build_colour_model


def store_model(home, stem, precision="fp32", agreement=None):
    export = {"precision": precision}
    if agreement is not None:
        export["agreement_with_fp32"] = agreement
    meta = build_metadata(COLOUR_LABELS, [0.5] * 4, Preprocess(32, "shortest", "bilinear"),
                          {"name": "colours", "backbone": "mean-colour", "created": "2026-11-23", "export": export})
    return build_colour_model(home / "models" / f"{stem}.onnx", metadata=meta)


def tagged_with(tmp_path, *args):
    photo = solid_photo(tmp_path / "photos" / "p.jpg", (250, 5, 5))
    result = CliRunner().invoke(cli, ["tag", str(photo.parent), "--force", *args])
    assert result.exit_code == 0, result.output
    return json.loads((photo.parent / "p.jpg.json").read_text())["model"]["sha256"], result.output


def test_validated_int8_is_the_cpu_default(tmp_path, tagger_home):
    fp32 = store_model(tagger_home, "colours")
    int8 = store_model(tagger_home, "colours.int8", "int8", agreement=0.995)
    sha, output = tagged_with(tmp_path, "--model", "colours")
    assert sha == file_sha256(int8)
    assert "int8 variant (agrees with fp32 on 99.5% of validation tags)" in output
    assert tagged_with(tmp_path)[0] == file_sha256(int8)  # the only model, by default
    assert tagged_with(tmp_path, "--model", "colours", "--precision", "fp32")[0] == file_sha256(fp32)
    assert tagged_with(tmp_path, "--model", "colours", "--device", "cpu")[0] == file_sha256(int8)


def test_unvalidated_int8_is_not_used_by_default(tmp_path, tagger_home):
    fp32 = store_model(tagger_home, "colours")
    int8 = store_model(tagger_home, "colours.int8", "int8", agreement=0.95)  # written with --force
    assert tagged_with(tmp_path, "--model", "colours")[0] == file_sha256(fp32)
    assert tagged_with(tmp_path, "--model", "colours", "--precision", "int8")[0] == file_sha256(int8)


def test_missing_variant_is_a_clear_error(tmp_path, tagger_home):
    store_model(tagger_home, "colours")
    photo = solid_photo(tmp_path / "p.jpg", (250, 5, 5))
    result = CliRunner().invoke(cli, ["tag", str(photo), "--model", "colours", "--precision", "int8"])
    assert result.exit_code == 1
    assert "no int8 variant of this model in the store" in result.output


def test_models_lists_variants_with_their_precision(tagger_home):
    store_model(tagger_home, "colours")
    store_model(tagger_home, "colours.int8", "int8", agreement=0.995)
    rows = [line.split("\t") for line in CliRunner().invoke(cli, ["models"]).output.splitlines()]
    assert [(r[0], r[-1]) for r in rows] == [("colours", "fp32"), ("colours.int8", "int8")]
