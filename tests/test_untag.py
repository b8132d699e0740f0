"""`tagger untag PATH...`: the tagger's keywords go, the user's stay, in sidecars and inside photos."""
from __future__ import annotations

import os
import shutil

import pytest
from click.testing import CliRunner

from tagger.cli import cli
from tagger.writers.embed import EmbedWriter
from tagger.writers.xmp_sidecar import XmpWriter
from tagger.xmp import parse_xmp
from tests.conftest import needs_heif
from tests.metadata_util import changed_tags, copy_sample, exiftool_json, keywords_in, result_for
from tests.test_xmp_sidecar import DARKTABLE_SIDECAR, _exiv2_not_keywords

pytestmark = pytest.mark.skipif(shutil.which("exiftool") is None or shutil.which("exiv2") is None,
                                reason="needs exiftool and exiv2")


@pytest.fixture
def tagged(tmp_path, samples):
    """A folder tagged by the tagger in every way, beside the user's own keywords and edits."""
    root = tmp_path / "Photos 2024"
    blue = copy_sample(samples, "jpg/xmp/BlueSquare.jpg", root / "blue.jpg")          # embedded, user keywords
    plain = copy_sample(samples, "jpg/Canon_40D.jpg", root / "trip" / "plain.jpg")   # sidecar the tagger made
    edited = copy_sample(samples, "jpg/Canon_40D.jpg", root / "edited.jpg")          # darktable sidecar
    (root / "edited.jpg.xmp").write_text(DARKTABLE_SIDECAR)
    untouched = copy_sample(samples, "jpg/gps/DSCN0010.jpg", root / "never tagged.jpg")

    originals = {"blue": exiftool_json(blue)[0]}
    embed = EmbedWriter()
    try:
        embed.write(result_for(blue, ["dog", "Photoshop", "Animals|Cat"]))
    finally:
        embed.close()
    XmpWriter().write(result_for(plain, ["sun"]))
    XmpWriter().write(result_for(edited, ["dog", "places|beach"]))
    return {"root": root, "blue": blue, "plain": plain, "edited": edited,
            "untouched": untouched, "originals": originals,
            "dt_before": _exiv2_not_keywords(root / "edited.jpg.xmp")}


def _snapshot(root):
    return {p: p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_dry_run_changes_nothing_and_lists_files(tagged):
    before = _snapshot(tagged["root"])
    result = CliRunner().invoke(cli, ["untag", "--dry-run", str(tagged["root"])])
    assert result.exit_code == 0, result.output
    assert _snapshot(tagged["root"]) == before
    listed = sorted(line.split("\t")[0] for line in result.stdout.splitlines())
    assert listed == sorted(str(p) for p in (tagged["blue"], tagged["root"] / "edited.jpg.xmp",
                                             tagged["root"] / "trip" / "plain.jpg.xmp"))


def test_untag_removes_only_the_taggers_keywords(tagged):
    untouched_bytes = tagged["untouched"].read_bytes()
    result = CliRunner().invoke(cli, ["untag", str(tagged["root"])])
    assert result.exit_code == 0, result.output
    assert "3 files untagged" in result.stderr

    user = ["XMP", "Blue Square", "test file", "Photoshop", ".jpg"]
    assert keywords_in(tagged["blue"]) == {"IPTC:Keywords": user, "XMP-dc:Subject": user,
                                           "XMP-lr:HierarchicalSubject": []}
    _assert_back_to(tagged["originals"]["blue"], tagged["blue"])

    assert not (tagged["root"] / "trip" / "plain.jpg.xmp").exists()  # the tagger made it; now empty: deleted
    sidecar = tagged["root"] / "edited.jpg.xmp"
    packet = parse_xmp(sidecar.read_bytes())
    assert packet.get_list("http://purl.org/dc/elements/1.1/", "subject") == ["holiday"]
    assert _exiv2_not_keywords(sidecar) == tagged["dt_before"]  # darktable's history untouched
    assert "tagger" not in sidecar.read_text().replace('x:xmptk="XMP Core', "")
    assert tagged["untouched"].read_bytes() == untouched_bytes

    again = CliRunner().invoke(cli, ["untag", str(tagged["root"])])
    assert again.exit_code == 0 and "0 files untagged" in again.stderr


def test_no_embedded_leaves_photos_alone(tagged):
    blue_bytes = tagged["blue"].read_bytes()
    result = CliRunner().invoke(cli, ["untag", "--no-embedded", str(tagged["root"])])
    assert result.exit_code == 0, result.output
    assert tagged["blue"].read_bytes() == blue_bytes
    assert not (tagged["root"] / "trip" / "plain.jpg.xmp").exists()


def test_failures_are_named_and_change_the_exit_status(tagged):
    os.chmod(tagged["blue"], 0o444)
    result = CliRunner().invoke(cli, ["untag", str(tagged["root"])])
    assert result.exit_code == 3
    assert f"failed: {tagged['blue']}: photo is read-only" in result.stderr
    assert not (tagged["root"] / "trip" / "plain.jpg.xmp").exists()  # the others were still done


def _assert_back_to(before: dict, photo) -> None:
    """Every original tag value back, the tagger's record gone."""
    after = exiftool_json(photo)[0]
    assert changed_tags(before, after) == set()
    for field in ("XMP-dc:Subject", "XMP-lr:HierarchicalSubject", "IPTC:Keywords"):
        assert after.get(field) == before.get(field), (photo, field)
    assert not any(key.startswith("XMP-tagger:") for key in after)


@needs_heif  # without a HEIC decoder tagger does not look at .heic files at all
def test_heic_photos_are_untagged_too(tmp_path, samples):
    heic = copy_sample(samples, "heic/IMG_5195.HEIC", tmp_path / "trip" / "phone.HEIC")
    original = exiftool_json(heic)[0]
    embed = EmbedWriter()
    try:
        embed.write(result_for(heic, ["dog", "Animals|Cat"]))
    finally:
        embed.close()
    listed = CliRunner().invoke(cli, ["untag", "--dry-run", str(tmp_path)])
    assert listed.exit_code == 0 and listed.stdout == f"{heic}\t4 keywords\n", listed.output
    result = CliRunner().invoke(cli, ["untag", str(tmp_path)])
    assert result.exit_code == 0 and "1 files untagged" in result.stderr, result.output
    _assert_back_to(original, heic)


def test_missing_path_is_fatal(tmp_path):
    result = CliRunner().invoke(cli, ["untag", str(tmp_path / "nope")])
    assert result.exit_code == 1
    assert "no such file or folder" in result.output
