"""Camera RAW decoding: real DNG files (made at test time by bench/dng.py) decoded by real LibRaw."""
from __future__ import annotations

import io
import json
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image, ImageOps

from bench.dng import preview_jpeg, write_dng
from tagger.cli import cli
from tagger.discover import iter_photos
from tagger.errors import ImageError
from tagger.images import Preprocess, load_image, open_oriented, resize_image
from tagger.raw import INSTALL_HINT, embed_refusal
from tests.conftest import _importable
from tests.test_bad_input import failures

needs_rawpy = pytest.mark.skipif(not _importable("rawpy"), reason='RAW decoding needs rawpy: pip install ".[raw]"')

# A scene whose quadrants tell every rotation and mirror apart: red | green over blue | green.
SCENE = np.zeros((300, 400, 3), np.uint8)
SCENE[:150, :200] = (230, 20, 20)
SCENE[150:, :200] = (20, 20, 230)
SCENE[:, 200:] = (20, 230, 20)
SPEC = Preprocess(64, "shortest", "bilinear")


def corners(img: Image.Image) -> tuple[str, str, str, str]:
    """The dominant colour at the four corners: top-left, top-right, bottom-left, bottom-right."""
    pixels = np.asarray(img)
    names = ("red", "green", "blue")
    return tuple(names[int(np.argmax(pixels[y, x]))] for y, x in ((3, 3), (3, -4), (-4, 3), (-4, -4)))


@needs_rawpy
@pytest.mark.parametrize("orientation, expected", [
    (1, ("red", "green", "blue", "green")),
    (3, ("green", "blue", "green", "red")),
    (6, ("blue", "red", "green", "green")),   # 90° clockwise: the left column becomes the top row
    (8, ("green", "green", "red", "blue")),
])
def test_preview_gets_the_raw_files_orientation_not_its_own(tmp_path, orientation, expected):
    # The preview carries EXIF saying the opposite of the RAW file (as some cameras' do): ignored.
    wrong = {1: 3, 3: 1, 6: 8, 8: 6}[orientation]
    jpeg = preview_jpeg(SCENE, orientation=wrong)
    dng = write_dng(tmp_path / f"IMG_{orientation}.dng", SCENE, orientation=orientation, preview=jpeg)
    # The same preview JPEG, told the right orientation, through the JPEG path: pixel-identical.
    reference = Image.open(io.BytesIO(preview_jpeg(SCENE, orientation=orientation)))
    reference.draft("RGB", (SPEC.size, SPEC.size))
    reference = ImageOps.exif_transpose(reference)

    assert np.array_equal(load_image(dng, SPEC), resize_image(reference.convert("RGB"), SPEC))
    img = open_oriented(dng, min_side=SPEC.size)
    assert img.size == reference.size  # DCT draft scale, as for a JPEG of that size
    assert corners(img) == expected


@needs_rawpy
def test_uncompressed_preview_is_used_and_turned_upright(tmp_path):
    dng = write_dng(tmp_path / "old_camera.dng", SCENE, preview=SCENE, bitmap_preview=True, orientation=6)
    assert np.array_equal(np.asarray(open_oriented(dng, min_side=SPEC.size)), np.rot90(SCENE, k=-1))


@needs_rawpy
@pytest.mark.parametrize("orientation, expected", [
    (1, ("red", "green", "blue", "green")),
    (3, ("green", "blue", "green", "red")),
    (6, ("blue", "red", "green", "green")),
    (8, ("green", "green", "red", "blue")),
])
def test_raw_without_preview_is_demosaiced_at_half_size(tmp_path, orientation, expected):
    dng = write_dng(tmp_path / "bare.dng", SCENE, orientation=orientation)
    img = open_oriented(dng, min_side=SPEC.size)
    assert sorted(img.size) == [150, 200]  # half of 400x300, upright
    assert corners(img) == expected
    assert img.mode == "RGB"


@needs_rawpy
def test_preview_too_small_for_the_model_falls_back_to_the_sensor_data(tmp_path):
    small = np.asarray(Image.fromarray(SCENE).resize((80, 60)))
    # A wrong preview (all blue), so whichever path ran shows in the result.
    blue = np.zeros_like(small)
    blue[...] = (0, 0, 255)
    dng = write_dng(tmp_path / "small_preview.dng", SCENE, preview=blue)
    demosaiced = open_oriented(write_dng(tmp_path / "bare.dng", SCENE), min_side=64)

    assert np.array_equal(load_image(dng, SPEC), resize_image(demosaiced, SPEC))  # 60 px < 64: not used
    assert corners(open_oriented(dng, min_side=32)) == ("blue",) * 4  # large enough for a 32 px model


@needs_rawpy
def test_truncated_and_broken_raw_files_are_one_line_each(tmp_path, colour_model):
    root = tmp_path / "photos"
    root.mkdir()
    whole = write_dng(tmp_path / "whole.dng", SCENE, preview=SCENE).read_bytes()
    (root / "cut_in_preview.dng").write_bytes(whole[:2000])
    bare = write_dng(tmp_path / "bare.dng", SCENE).read_bytes()
    (root / "cut_in_sensor_data.NEF").write_bytes(bare[:len(bare) // 2])
    (root / "empty.cr2").write_bytes(b"")
    (root / "notes.ARW").write_text("a text file with a raw file's name\n" * 50)
    red = np.full((300, 400, 3), (230, 20, 20), np.uint8)
    write_dng(root / "good.dng", red, preview=red)
    Image.new("RGB", (64, 48), (250, 5, 5)).save(root / "red.jpg")

    result = CliRunner().invoke(cli, ["tag", str(root), "--model", str(colour_model)])

    assert result.exit_code == 3, result.output
    failed = failures(result.output)
    assert failed.get("cut_in_preview.dng") == "cannot decode RAW: truncated or unreadable sensor data", result.output
    assert failed["cut_in_sensor_data.NEF"] == "cannot decode RAW: truncated or unreadable sensor data"
    assert failed["empty.cr2"] == "empty file (0 bytes)"
    assert failed["notes.ARW"].startswith("not a RAW file LibRaw can read")
    assert len(failed) == 4 and "Traceback" not in result.output
    assert "2 tagged" in result.output
    assert (root / "good.dng.json").exists() and (root / "red.jpg.json").exists()


@needs_rawpy
def test_a_cut_raw_file_never_shows_another_photos_preview(tmp_path):
    # LibRaw hands back a preview that runs past the end of a cut file padded from memory it does not
    # clear: right after another RAW photo, a DNG cut at 2,000 bytes "decoded" into that photo's preview
    # (tagged with another photo's tags, not reported). Decoded alone it fails; it must fail every time.
    red = np.full((300, 400, 3), (230, 20, 20), np.uint8)
    good = write_dng(tmp_path / "good.dng", red, preview=red)
    cut = tmp_path / "cut.dng"
    cut.write_bytes(write_dng(tmp_path / "whole.dng", SCENE, preview=SCENE).read_bytes()[:2000])
    for _ in range(3):
        assert corners(open_oriented(good, min_side=32)) == ("red",) * 4
        with pytest.raises(ImageError, match="truncated or unreadable sensor data"):
            open_oriented(cut, min_side=32)


def test_without_rawpy_each_raw_file_says_how_to_get_it(tmp_path, colour_model, monkeypatch):
    monkeypatch.setitem(sys.modules, "rawpy", None)  # what an install without the `raw` extra sees
    root = tmp_path / "photos"
    root.mkdir()
    (root / "IMG_1.CR2").write_bytes(b"II*\0 whatever the camera wrote")
    Image.new("RGB", (64, 48), (250, 5, 5)).save(root / "red.jpg")

    result = CliRunner().invoke(cli, ["tag", str(root), "--model", str(colour_model)])

    assert result.exit_code == 3, result.output
    assert failures(result.output) == {"IMG_1.CR2": INSTALL_HINT}
    assert "1 tagged" in result.output and (root / "red.jpg.json").exists()
    with pytest.raises(ImageError, match=r"tagger\[raw\]"):
        load_image(root / "IMG_1.CR2", SPEC)


def test_raw_extensions_are_photos_whatever_their_case(tmp_path):
    names = ["A.CR2", "b.cr3", "c.Nef", "d.ARW", "e.raf", "f.ORF", "g.rw2", "h.PEF", "i.dng", "j.NRW", "k.srw"]
    for name in names + ["notes.txt", "IMG.xmp", "IMG.CR2.xmp"]:
        (tmp_path / name).write_bytes(b"x")
    assert sorted(p.name for p in iter_photos([tmp_path])) == sorted(names)


def test_only_proprietary_raw_files_are_refused_for_embedding():
    for name in ("IMG_1.CR2", "DSC_1.nef", "x.ARW", "x.raf", "x.orf", "x.rw2", "x.pef", "x.cr3"):
        assert "--write xmp" in embed_refusal(Path(name)), name
    for name in ("IMG_1.dng", "IMG_1.DNG", "a.jpg", "b.tif", "c.heic"):
        assert embed_refusal(Path(name)) is None, name


@needs_rawpy
def test_raw_photos_are_tagged_end_to_end_from_preview_and_sensor(tmp_path, colour_model):
    root = tmp_path / "photos"
    red = np.full((300, 400, 3), (230, 20, 20), np.uint8)
    blue = np.full((300, 400, 3), (20, 20, 230), np.uint8)
    root.mkdir()
    write_dng(root / "IMG_0001.dng", red, preview=red, orientation=6)
    write_dng(root / "IMG_0002.dng", blue)  # no preview: the sensor data is demosaiced
    shutil.copy(root / "IMG_0001.dng", root / "IMG_0003.CR2")  # LibRaw reads by content, not name

    result = CliRunner().invoke(cli, ["tag", str(root), "--model", str(colour_model), "-q"])

    assert result.exit_code == 0, result.output
    top = {name: json.loads((root / f"{name}.json").read_text())["tags"][0]["tag"]
           for name in ("IMG_0001.dng", "IMG_0002.dng", "IMG_0003.CR2")}
    assert top == {"IMG_0001.dng": "red", "IMG_0002.dng": "blue", "IMG_0003.CR2": "red"}
