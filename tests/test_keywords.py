"""Keyword rules (merge, strip, IPTC fit) and the reader `tagger train` takes labels from."""
from __future__ import annotations

import shutil
import subprocess

import pytest

from tagger.errors import TaggerError
from tagger.keywords import (KeywordFields, check_prefix, iptc_fits, merge_keywords, read_user_keywords,
                             strip_keywords, tag_keywords)
from tagger.writers.embed import EmbedWriter
from tagger.writers.xmp_sidecar import XmpWriter
from tests.metadata_util import copy_sample, result_for
from tests.test_xmp_sidecar import DARKTABLE_SIDECAR

needs_exiftool = pytest.mark.skipif(shutil.which("exiftool") is None, reason="needs exiftool")


def test_tag_keywords_spell_out_every_level():
    assert tag_keywords(["dog", "Animals|Cat", "Animals|Dog"]) == (
        ["dog", "Animals", "Cat", "Dog"], ["Animals|Cat", "Animals|Dog"])
    assert tag_keywords(["dog", "Animals|Cat"], prefix="auto") == (
        ["auto", "dog", "Animals", "Cat"], ["auto|dog", "auto|Animals|Cat"])


def test_merge_keeps_user_keywords_and_records_only_what_it_added():
    current = KeywordFields(("Dog", "holiday"), ("places|beach",), ("Dog",))
    new, added = merge_keywords(current, KeywordFields(iptc=()), ["dog", "places|beach", "cat"], None)
    assert new == KeywordFields(("Dog", "holiday", "places", "beach", "cat"), ("places|beach",),
                                ("Dog", "places", "beach", "cat"))
    assert added == KeywordFields(("places", "beach", "cat"), (), ("places", "beach", "cat"))
    # a re-run with another model takes its predecessor's out first
    newer, added2 = merge_keywords(new, added, ["bird"], None)
    assert newer == KeywordFields(("Dog", "holiday", "bird"), ("places|beach",), ("Dog", "bird"))
    assert strip_keywords(newer, added2) == KeywordFields(("Dog", "holiday"), ("places|beach",), ("Dog",))


def test_strip_removes_one_occurrence_from_the_end():
    # the user typed "dog" again after the tagger added it: one "dog" stays, the user's
    fields = KeywordFields(("dog", "sun", "dog"), (), None)
    assert strip_keywords(fields, KeywordFields(("dog",), (), ())).subject == ("dog", "sun")


def test_files_without_iptc_never_get_iptc():
    new, added = merge_keywords(KeywordFields(), KeywordFields(iptc=()), ["dog"], None)
    assert new.iptc is None and added.iptc == ()


def test_iptc_fit_depends_on_the_files_character_set():
    latin, utf8 = iptc_fits(None), iptc_fits("UTF8")
    assert latin("café") and not latin("собака") and utf8("собака")
    assert latin("x" * 64) and not latin("x" * 65)
    assert utf8("é" * 32) and not utf8("é" * 33)  # 64 bytes, not 64 characters


def test_prefix_validation():
    assert check_prefix(None) is None and check_prefix("  ") is None
    assert check_prefix(" auto | ml ") == "auto|ml"
    with pytest.raises(TaggerError):
        check_prefix("auto|")


@needs_exiftool
def test_reader_returns_user_keywords_not_the_taggers(tmp_path, samples):
    blue = copy_sample(samples, "jpg/xmp/BlueSquare.jpg", tmp_path / "blue.jpg")      # user keywords inside
    plain = copy_sample(samples, "jpg/Canon_40D.jpg", tmp_path / "plain.jpg")         # none anywhere
    darktable = copy_sample(samples, "jpg/Canon_40D.jpg", tmp_path / "dt.jpg")        # user keywords in a sidecar
    (tmp_path / "dt.jpg.xmp").write_text(DARKTABLE_SIDECAR)
    heic = copy_sample(samples, "heic/IMG_5195.HEIC", tmp_path / "phone.HEIC")
    subprocess.run(["exiftool", "-q", "-overwrite_original", "-XMP-dc:Subject=beach",
                    "-XMP-lr:HierarchicalSubject=places|beach", str(heic)], check=True)

    embed = EmbedWriter()
    try:
        embed.write(result_for(blue, ["dog", "Photoshop", "Animals|Cat"]))  # Photoshop was the user's already
        embed.write(result_for(heic, ["dog"]))
    finally:
        embed.close()
    XmpWriter().write(result_for(darktable, ["bird", "places|beach"]))
    XmpWriter().write(result_for(plain, ["sun"]))

    found = read_user_keywords([blue, plain, darktable, heic])
    assert found == {
        blue: ["XMP", "Blue Square", "test file", "Photoshop", ".jpg"],
        plain: [],
        darktable: ["places|beach", "darktable|format|jpg", "holiday"],
        heic: ["places|beach", "beach"],
    }


@needs_exiftool
def test_reader_reports_unreadable_files_and_goes_on(tmp_path, samples):
    good = copy_sample(samples, "jpg/xmp/no_exif.jpg", tmp_path / "good.jpg")
    bad_sidecar = copy_sample(samples, "jpg/Canon_40D.jpg", tmp_path / "bad.jpg")
    (tmp_path / "bad.jpg.xmp").write_text("<not xml")
    missing = tmp_path / "gone.jpg"
    errors: list[TaggerError] = []

    found = read_user_keywords([good, bad_sidecar, missing], on_error=errors.append)

    assert found == {good: ["tag"], bad_sidecar: [], missing: []}
    assert sorted(e.path for e in errors) == sorted([str(tmp_path / "bad.jpg.xmp"), str(missing)])
    assert all("\n" not in str(e) for e in errors)
