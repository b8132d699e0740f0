"""Tags for RAW photos: sidecars named as Lightroom and darktable expect, DNG written in place with
its pixels kept, proprietary RAW files never written into. Checked with real exiftool and exiv2."""
from __future__ import annotations

import shutil
import subprocess

import numpy as np
import pytest
from click.testing import CliRunner

from bench.dng import preview_jpeg, write_dng
from tagger.cli import cli
from tagger.errors import WriteError
from tagger.keywords import read_user_keywords
from tagger.writers.embed import EmbedWriter
from tests.conftest import _importable
from tests.metadata_util import as_list, changed_tags, exiftool_json, exiv2_values, result_for
from tests.test_bad_input import failures

pytestmark = [
    pytest.mark.skipif(shutil.which("exiftool") is None, reason="needs exiftool (libimage-exiftool-perl)"),
    pytest.mark.skipif(not _importable("rawpy"), reason='RAW decoding needs rawpy: pip install ".[raw]"'),
]

RED = np.full((300, 400, 3), (230, 20, 20), np.uint8)
# Where the image data sits: exiftool moves it when IFD 0 grows by the XMP packet (the data
# itself is compared separately, value by value).
OFFSETS = {"SubIFD:StripOffsets", "IFD0:PreviewImageStart", "IFD0:StripOffsets"}


def raw_pixels(path) -> tuple[np.ndarray, bytes]:
    """The sensor data and the embedded preview, as LibRaw reads them."""
    import rawpy

    with rawpy.imread(str(path)) as raw:
        return raw.raw_image.copy(), raw.extract_thumb().data


def skipped_lines(output: str) -> list[str]:
    return [line.strip() for line in output.splitlines() if line.strip().startswith("skipped: ")]


def test_embed_on_a_proprietary_raw_skips_that_file_only(tmp_path, colour_model):
    root = tmp_path / "photos"
    root.mkdir()
    cr2 = write_dng(root / "IMG_0001.CR2", RED, preview=RED)  # decodable, named as a Canon file
    dng = write_dng(root / "IMG_0002.dng", RED, preview=RED)
    original = cr2.read_bytes()

    result = CliRunner().invoke(cli, ["tag", str(root), "--model", str(colour_model), "--write", "embed,json"])

    assert result.exit_code == 0, result.output
    notes = skipped_lines(result.output)
    assert len(notes) == 1 and "IMG_0001.CR2" in notes[0] and "--write xmp" in notes[0], result.output
    assert "1 not written into" in result.output and not failures(result.output)
    assert cr2.read_bytes() == original
    assert (root / "IMG_0001.CR2.json").exists()  # its other outputs are written
    assert "red" in as_list(exiftool_json(dng)[0].get("XMP-dc:Subject"))

    # Embed alone: the CR2 is not even decoded, still one line, still exit 0; the DNG is up to date.
    again = CliRunner().invoke(cli, ["tag", str(root), "--model", str(colour_model), "--write", "embed"])
    assert again.exit_code == 0, again.output
    assert len(skipped_lines(again.output)) == 1 and "0 tagged, 1 skipped (up to date)" in again.output
    assert cr2.read_bytes() == original


def test_embed_writer_itself_refuses_proprietary_raw(tmp_path):
    nef = write_dng(tmp_path / "DSC_0001.NEF", RED, preview=RED)
    original = nef.read_bytes()
    writer = EmbedWriter()
    try:
        with pytest.raises(WriteError, match="proprietary RAW"):
            writer.write(result_for(nef, ["dog"]))
    finally:
        writer.close()
    assert nef.read_bytes() == original


def test_dng_is_written_in_place_keeping_pixels_and_every_other_tag(tmp_path):
    dng = write_dng(tmp_path / "IMG_0001.dng", RED, preview=preview_jpeg(RED), orientation=6)
    before, before_pixels = exiftool_json(dng)[0], raw_pixels(dng)
    mtime = dng.stat().st_mtime_ns
    writer = EmbedWriter()
    try:
        writer.write(result_for(dng, ["dog", "Animals|Cat"]))
        assert writer.is_current(dng, dng.stat(), result_for(dng, []).model)
    finally:
        writer.close()

    after = exiftool_json(dng)[0]
    assert changed_tags(before, after) - OFFSETS == set()
    sensor, preview = raw_pixels(dng)
    assert np.array_equal(sensor, before_pixels[0]) and preview == before_pixels[1]
    assert dng.stat().st_mtime_ns == mtime
    assert set(as_list(after["XMP-dc:Subject"])) == {"dog", "Animals", "Cat"}
    assert set(exiv2_values(dng, "Xmp.dc.subject")) == {"dog", "Animals", "Cat"}
    assert exiv2_values(dng, "Xmp.lr.hierarchicalSubject") == ["Animals|Cat"]
    assert exiftool_json(dng)[0]["IFD0:Orientation"] == 6


@pytest.mark.parametrize("xmp_name, sidecar", [("extension", "IMG_0001.CR2.xmp"), ("basename", "IMG_0001.xmp")])
def test_raw_sidecars_are_named_for_darktable_or_lightroom(tmp_path, colour_model, xmp_name, sidecar):
    root = tmp_path / "photos"
    root.mkdir()
    cr2 = write_dng(root / "IMG_0001.CR2", RED, preview=RED)
    original = cr2.read_bytes()

    result = CliRunner().invoke(cli, ["tag", str(root), "--model", str(colour_model), "--write", "xmp",
                                      "--xmp-name", xmp_name, "-q"])

    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in root.iterdir()) == sorted(["IMG_0001.CR2", sidecar])
    assert "red" in as_list(exiftool_json(root / sidecar)[0].get("XMP-dc:Subject"))
    assert "red" in exiv2_values(root / sidecar, "Xmp.dc.subject")
    assert cr2.read_bytes() == original


def test_raw_plus_jpeg_pair_gets_one_sidecar_each_and_an_existing_lightroom_one_is_updated(tmp_path, colour_model):
    root = tmp_path / "photos"
    root.mkdir()
    write_dng(root / "IMG_0002.CR2", RED, preview=RED)
    from PIL import Image

    Image.fromarray(RED).save(root / "IMG_0002.JPG")
    write_dng(root / "IMG_0003.NEF", RED, preview=RED)
    lightroom = root / "IMG_0003.xmp"
    subprocess.run(["exiftool", "-q", "-o", str(lightroom), "-XMP-dc:Subject=holiday"], check=True)

    result = CliRunner().invoke(cli, ["tag", str(root), "--model", str(colour_model), "--write", "xmp",
                                      "--xmp-name", "basename", "-q"])

    assert result.exit_code == 0, result.output
    # IMG_0002.xmp would mix the RAW's and the JPEG's keywords: each gets its own, named in full.
    assert not (root / "IMG_0002.xmp").exists()
    for sidecar in ("IMG_0002.CR2.xmp", "IMG_0002.JPG.xmp"):
        assert "red" in exiv2_values(root / sidecar, "Xmp.dc.subject"), sidecar
    # Lightroom's existing sidecar is updated, the user's keyword kept, no second sidecar made.
    assert not (root / "IMG_0003.NEF.xmp").exists()
    assert exiv2_values(lightroom, "Xmp.dc.subject") == ["holiday", "red"]


def test_training_keywords_come_from_raw_files_and_their_sidecars(tmp_path):
    cr2 = write_dng(tmp_path / "IMG_0001.CR2", RED, preview=RED)
    dng = write_dng(tmp_path / "IMG_0002.dng", RED, preview=RED)
    subprocess.run(["exiftool", "-q", "-o", str(tmp_path / "IMG_0001.xmp"), "-XMP-dc:Subject=beach",
                    "-XMP-lr:HierarchicalSubject=Places|Beach"], check=True)  # Lightroom's sidecar
    subprocess.run(["exiftool", "-q", "-overwrite_original", "-XMP-dc:Subject=dog", "-IPTC:Keywords=sea",
                    str(dng)], check=True)  # keywords inside the DNG
    subprocess.run(["exiftool", "-q", "-o", str(tmp_path / "IMG_0002.dng.xmp"), "-XMP-dc:Subject=cat"], check=True)

    found = read_user_keywords([cr2, dng])

    assert set(found[cr2]) == {"beach", "Places|Beach"}
    assert set(found[dng]) == {"dog", "sea", "cat"}
