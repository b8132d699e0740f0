"""`--write embed`: keywords written into real camera files by real exiftool, checked by exiftool and exiv2."""
from __future__ import annotations

import os
import shutil
import subprocess

import numpy as np
import pytest
from PIL import Image

from tagger.errors import WriteError
from tagger.exiftool import ExifToolMissing
from tagger.keywords import read_user_keywords
from tagger.writers.embed import EmbedWriter
from tests.conftest import needs_heif
from tests.metadata_util import (MODEL_A, MODEL_B, as_list, changed_tags, copy_sample, exiftool_json, exiv2_values,
                                 keywords_in, pixels, result_for)

pytestmark = pytest.mark.skipif(shutil.which("exiftool") is None, reason="needs exiftool (libimage-exiftool-perl)")

CAMERA_JPEGS = [
    "jpg/Canon_40D.jpg",                 # EXIF + maker notes, no XMP, no IPTC
    "jpg/xmp/BlueSquare.jpg",            # Photoshop: XMP + IPTC with the user's keywords, IPTC digest
    "jpg/orientation/landscape_1.jpg",   # IPTC envelope, APP14, Ducky
    "jpg/gps/DSCN0010.jpg",              # GPS, Nikon maker notes, XMP
    "jpg/xmp/no_exif.jpg",               # IPTC in UTF-8 (CodedCharacterSet)
]
IPHONE_HEIC = "heic/IMG_5195.HEIC"       # iPhone HEIC: never IPTC
TAGS = ["dog", "Animals|Cat", "Blue Square"]


@pytest.fixture
def embed():
    writer = EmbedWriter()
    yield writer
    writer.close()


@pytest.mark.parametrize("samples_to_embed", [
    pytest.param(CAMERA_JPEGS, id="jpeg"),
    pytest.param([IPHONE_HEIC], id="heic", marks=needs_heif),  # its pixels are compared, so it is decoded
])
def test_embed_changes_only_keyword_fields_and_keeps_pixels(tmp_path, samples, embed, samples_to_embed):
    photos = [copy_sample(samples, rel, tmp_path / f"{i}_{os.path.basename(rel)}")
              for i, rel in enumerate(samples_to_embed)]
    before = exiftool_json(*photos)
    before_pixels = [pixels(p) for p in photos]
    before_mtimes = [p.stat().st_mtime_ns for p in photos]

    for photo in photos:
        embed.write(result_for(photo, TAGS))

    after = exiftool_json(*photos)
    for photo, old, new, old_pixels, mtime in zip(photos, before, after, before_pixels, before_mtimes):
        assert changed_tags(old, new) == set(), photo.name
        assert np.array_equal(pixels(photo), old_pixels), f"{photo.name}: decoded pixels changed"
        assert photo.stat().st_mtime_ns == mtime, f"{photo.name}: modification time not kept"
        # the user's keywords stay first and unchanged; ours follow, never duplicated
        user_subject = as_list(old.get("XMP-dc:Subject"))
        subject = as_list(new.get("XMP-dc:Subject"))
        assert subject[:len(user_subject)] == user_subject
        assert sorted(set(subject)) == sorted(subject)
        assert {"dog", "Animals", "Cat", "Blue Square"} <= set(subject)
        assert as_list(new.get("XMP-lr:HierarchicalSubject")) == ["Animals|Cat"]
        assert new["XMP-tagger:TaggerModelSHA256"] == MODEL_A.sha256
        assert int(new["XMP-tagger:TaggerPhotoSize"]) == photo.stat().st_size
        had_iptc = any(key.startswith("IPTC:") for key in old)
        if had_iptc:
            assert {"dog", "Animals", "Cat"} <= set(as_list(new.get("IPTC:Keywords")))
        else:
            assert not any(key.startswith("IPTC:") for key in new), f"{photo.name}: IPTC created"


def test_keyword_the_user_had_is_not_added_again_nor_recorded_as_ours(tmp_path, samples, embed):
    blue = copy_sample(samples, "jpg/xmp/BlueSquare.jpg", tmp_path / "blue.jpg")  # the user has "Blue Square"
    embed.write(result_for(blue, TAGS))
    entry = exiftool_json(blue)[0]
    assert as_list(entry["XMP-dc:Subject"]).count("Blue Square") == 1
    assert "Blue Square" not in as_list(entry["XMP-tagger:TaggerSubject"])


def test_exiv2_reads_the_keywords_we_wrote(tmp_path, samples, embed):
    blue = copy_sample(samples, "jpg/xmp/BlueSquare.jpg", tmp_path / "blue.jpg")
    canon = copy_sample(samples, "jpg/Canon_40D.jpg", tmp_path / "canon.jpg")
    for photo in (blue, canon):
        embed.write(result_for(photo, ["dog", "Animals|Cat"]))

    user = ["XMP", "Blue Square", "test file", "Photoshop", ".jpg"]
    assert exiv2_values(blue, "Xmp.dc.subject") == user + ["dog", "Animals", "Cat"]
    assert exiv2_values(blue, "Iptc.Application2.Keywords") == user + ["dog", "Animals", "Cat"]
    assert exiv2_values(blue, "Xmp.lr.hierarchicalSubject") == ["Animals|Cat"]
    assert exiv2_values(canon, "Xmp.dc.subject") == ["dog", "Animals", "Cat"]
    assert exiv2_values(canon, "Iptc.Application2.Keywords") == []  # Canon_40D had no IPTC


def test_rerun_is_idempotent_and_recognised(tmp_path, samples, embed):
    photo = copy_sample(samples, "jpg/xmp/BlueSquare.jpg", tmp_path / "IMG_1.jpg")
    assert not embed.is_current(photo, photo.stat(), MODEL_A)
    embed.write(result_for(photo, TAGS))
    first = photo.read_bytes()
    assert embed.is_current(photo, photo.stat(), MODEL_A)

    embed.write(result_for(photo, TAGS))  # a --force re-run with the same model: nothing new
    assert photo.read_bytes() == first
    assert embed.is_current(photo, photo.stat(), MODEL_A)
    assert not embed.is_current(photo, photo.stat(), MODEL_B)

    prefixed = EmbedWriter(keyword_prefix="auto", exiftool=embed.tool)
    assert not prefixed.is_current(photo, photo.stat(), MODEL_A)

    os.utime(photo, ns=(photo.stat().st_atime_ns, photo.stat().st_mtime_ns + 1_000_000_000))  # edited since
    assert not embed.is_current(photo, photo.stat(), MODEL_A)


def test_model_swap_replaces_only_the_taggers_keywords(tmp_path, samples, embed):
    photo = copy_sample(samples, "jpg/xmp/BlueSquare.jpg", tmp_path / "IMG_2.jpg")
    embed.write(result_for(photo, ["dog", "Animals|Cat", "Photoshop"], MODEL_A))  # Photoshop: the user's already
    embed.write(result_for(photo, ["bird", "Animals|Bird"], MODEL_B))

    user = ["XMP", "Blue Square", "test file", "Photoshop", ".jpg"]
    assert keywords_in(photo) == {
        "IPTC:Keywords": user + ["bird", "Animals", "Bird"],
        "XMP-dc:Subject": user + ["bird", "Animals", "Bird"],
        "XMP-lr:HierarchicalSubject": ["Animals|Bird"],
    }
    assert exiftool_json(photo)[0]["XMP-tagger:TaggerModel"] == "beta"
    assert embed.is_current(photo, photo.stat(), MODEL_B)


def test_heic_gets_xmp_keywords_but_no_iptc(tmp_path, samples, embed):
    photo = copy_sample(samples, IPHONE_HEIC, tmp_path / "IMG_5195.HEIC")
    embed.write(result_for(photo, ["dog", "Animals|Cat"]))
    entry = exiftool_json(photo)[0]
    assert as_list(entry["XMP-dc:Subject"]) == ["dog", "Animals", "Cat"]
    assert not any(key.startswith("IPTC:") for key in entry)
    assert embed.is_current(photo, photo.stat(), MODEL_A)


def test_iptc_gets_only_keywords_that_fit(tmp_path, samples, embed):
    long_tag = "a keyword far longer than the sixty-four bytes IPTC allows for one"
    assert len(long_tag.encode()) > 64
    latin = copy_sample(samples, "jpg/xmp/BlueSquare.jpg", tmp_path / "latin.jpg")   # no CodedCharacterSet: cp1252
    utf8 = copy_sample(samples, "jpg/xmp/no_exif.jpg", tmp_path / "utf8.jpg")        # CodedCharacterSet UTF8
    tags = ["café", "собака", long_tag]
    for photo in (latin, utf8):
        embed.write(result_for(photo, tags))

    for photo in (latin, utf8):  # XMP holds every keyword, in full
        assert set(tags) <= set(keywords_in(photo)["XMP-dc:Subject"])
    assert set(keywords_in(latin)["IPTC:Keywords"]) >= {"café"}
    assert not {"собака", long_tag} & set(keywords_in(latin)["IPTC:Keywords"])  # not encodable / too long
    assert {"café", "собака"} <= set(keywords_in(utf8)["IPTC:Keywords"])
    assert long_tag not in keywords_in(utf8)["IPTC:Keywords"]  # never truncated into a different keyword
    assert "собака" in exiv2_values(utf8, "Iptc.Application2.Keywords")


def test_unicode_and_spaces_in_paths(tmp_path, samples, embed):
    photo = copy_sample(samples, "jpg/Canon_40D.jpg", tmp_path / "Fotos 2024" / "ünï cödé" / "Ζ phötö 1.jpg")
    embed.write(result_for(photo, ["Straße", "Tiere|Hund & Katze"]))
    assert keywords_in(photo)["XMP-dc:Subject"] == ["Straße", "Tiere", "Hund & Katze"]
    assert embed.is_current(photo, photo.stat(), MODEL_A)


def test_read_only_photo_is_a_write_error_and_untouched(tmp_path, samples, embed):
    photo = copy_sample(samples, "jpg/Canon_40D.jpg", tmp_path / "locked.jpg")
    os.chmod(photo, 0o444)
    original = photo.read_bytes()
    with pytest.raises(WriteError, match="read-only") as caught:
        embed.write(result_for(photo, ["dog"]))
    assert caught.value.path == str(photo)
    assert photo.read_bytes() == original


def test_files_exiftool_refuses_are_per_file_errors(tmp_path, samples, embed):
    fake = tmp_path / "notes.jpg"
    fake.write_text("not a JPEG at all\n")
    bmp = tmp_path / "scan.bmp"
    Image.new("RGB", (8, 8), (1, 2, 3)).save(bmp)
    good = copy_sample(samples, "jpg/Canon_40D.jpg", tmp_path / "good.jpg")

    with pytest.raises(WriteError) as not_jpeg:
        embed.write(result_for(fake, ["dog"]))
    assert str(fake) in str(not_jpeg.value) and "\n" not in str(not_jpeg.value)
    with pytest.raises(WriteError, match="--write xmp"):
        embed.write(result_for(bmp, ["dog"]))
    assert fake.read_text() == "not a JPEG at all\n"
    embed.write(result_for(good, ["dog"]))  # the same exiftool process carries on
    assert keywords_in(good)["XMP-dc:Subject"] == ["dog"]


def test_backup_keeps_the_first_original(tmp_path, samples):
    photo = copy_sample(samples, "jpg/Canon_40D.jpg", tmp_path / "IMG_3.jpg")
    original = photo.read_bytes()
    writer = EmbedWriter(backup=True)
    try:
        writer.write(result_for(photo, ["dog"], MODEL_A))
        writer.write(result_for(photo, ["cat"], MODEL_B))
    finally:
        writer.close()
    assert (tmp_path / "IMG_3.jpg_original").read_bytes() == original
    assert keywords_in(photo)["XMP-dc:Subject"] == ["cat"]


def test_photo_changed_after_decoding_is_not_written(tmp_path, samples, embed):
    photo = copy_sample(samples, "jpg/Canon_40D.jpg", tmp_path / "IMG_4.jpg")
    result = result_for(photo, ["dog"])
    os.utime(photo, ns=(0, photo.stat().st_mtime_ns + 5_000_000_000))
    with pytest.raises(WriteError, match="changed"):
        embed.write(result)


def test_missing_exiftool_says_how_to_install(tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path))
    monkeypatch.delenv("TAGGER_EXIFTOOL", raising=False)
    with pytest.raises(ExifToolMissing, match="libimage-exiftool-perl"):
        EmbedWriter()
    monkeypatch.setenv("TAGGER_EXIFTOOL", str(tmp_path / "nowhere" / "exiftool"))
    with pytest.raises(ExifToolMissing, match="TAGGER_EXIFTOOL"):
        EmbedWriter()


def test_keywords_that_look_like_numbers_or_options_survive_exactly(tmp_path, samples, embed):
    photo = copy_sample(samples, "jpg/xmp/BlueSquare.jpg", tmp_path / "odd.jpg")
    odd = ["TRUE", "false", "1.50", "007", "1e3", "null", "-x", "a=b", "${FileName}", "<b>", "#hash", "50%"]
    embed.write(result_for(photo, ["dog"]))
    subprocess.run(["exiftool", "-q", "-overwrite_original", *(f"-XMP-dc:Subject+={k}" for k in odd), str(photo)],
                   check=True)  # the user's own, typed in another program
    embed.write(result_for(photo, odd[:6] + ["cat"], MODEL_B))  # some of ours coincide with theirs
    user = ["XMP", "Blue Square", "test file", "Photoshop", ".jpg"]
    subject = exiv2_values(photo, "Xmp.dc.subject")
    # exiftool puts new list items where the ones taken out were: ours may sit among the user's,
    # whose own order never changes
    assert [k for k in subject if k != "cat"] == user + odd and subject.count("cat") == 1
    assert read_user_keywords([photo]) == {photo: user + odd}


# Container structure that must change for XMP to fit in (all else stays as it was).
STRUCTURAL = {"png": set(), "webp": {"File:FileType", "RIFF:WebP_Flags"},  # simple -> extended WebP
              "tif": {"IFD0:StripOffsets"}, "gif": {"GIF:GIFVersion"}}  # 87a -> 89a for the XMP block


@pytest.mark.parametrize("ext", sorted(STRUCTURAL))
def test_other_formats_keep_their_pixels(tmp_path, embed, ext):
    photo = tmp_path / f"made.{ext}"
    Image.new("RGB", (32, 24), (200, 10, 10)).save(photo)
    before, before_pixels = exiftool_json(photo)[0], pixels(photo)
    embed.write(result_for(photo, ["dog", "Animals|Cat"]))
    assert changed_tags(before, exiftool_json(photo)[0]) == STRUCTURAL[ext]
    assert np.array_equal(pixels(photo), before_pixels)
    assert keywords_in(photo)["XMP-dc:Subject"] == ["dog", "Animals", "Cat"]
    assert embed.is_current(photo, photo.stat(), MODEL_A)


def test_interrupted_write_leaves_a_whole_photo_that_the_next_run_redoes(tmp_path, samples, embed, monkeypatch):
    photo = copy_sample(samples, "jpg/Canon_40D.jpg", tmp_path / "IMG_5.jpg")
    mtime, before_pixels = photo.stat().st_mtime_ns, pixels(photo)

    def ctrl_c(*args):
        raise KeyboardInterrupt

    with monkeypatch.context() as patch:
        patch.setattr(embed, "_fill_in_size", ctrl_c)  # after the keyword write, before the size record
        with pytest.raises(KeyboardInterrupt):
            embed.write(result_for(photo, ["dog"]))
    assert np.array_equal(pixels(photo), before_pixels)
    assert photo.stat().st_mtime_ns == mtime
    assert sorted(p.name for p in tmp_path.iterdir()) == ["IMG_5.jpg"]  # no temporary left behind
    assert not embed.is_current(photo, photo.stat(), MODEL_A)
    embed.write(result_for(photo, ["dog"]))
    assert embed.is_current(photo, photo.stat(), MODEL_A)
    assert keywords_in(photo)["XMP-dc:Subject"] == ["dog"]
