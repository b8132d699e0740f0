"""The native XMP reader/writer: hardened parsing, and edits that keep everything it does not own."""
from __future__ import annotations

import shutil
import subprocess
import time

import pytest

from tagger.xmp import MAX_XMP_BYTES, NS_DC, NS_LR, NS_TAGGER, XmpError, new_xmp, parse_xmp

BILLION_LAUGHS = b"""<?xml version="1.0"?>
<!DOCTYPE x:xmpmeta [
 <!ENTITY a "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa">
""" + b"".join(b' <!ENTITY %s "%s">\n' % (chr(98 + i).encode(), (b"&%s;" % chr(97 + i).encode()) * 10)
               for i in range(9)) + b"""]>
<x:xmpmeta xmlns:x="adobe:ns:meta/"><rdf:RDF xmlns:rdf="http://www.w3.org/1999/02/22-rdf-syntax-ns#">
 <rdf:Description rdf:about="" xmlns:dc="http://purl.org/dc/elements/1.1/">
  <dc:subject><rdf:Bag><rdf:li>&j;</rdf:li></rdf:Bag></dc:subject>
 </rdf:Description></rdf:RDF></x:xmpmeta>
"""

EXTERNAL_ENTITY = b"""<?xml version="1.0"?>
<!DOCTYPE x [<!ENTITY secret SYSTEM "file:///etc/passwd">]>
<x:xmpmeta xmlns:x="adobe:ns:meta/"><rdf:RDF xmlns:rdf="http://www.w3.org/1999/02/22-rdf-syntax-ns#">
 <rdf:Description rdf:about="" xmlns:dc="http://purl.org/dc/elements/1.1/" dc:format="&secret;"/>
</rdf:RDF></x:xmpmeta>
"""


def test_entity_bomb_is_rejected_without_expanding():
    start = time.perf_counter()
    with pytest.raises(XmpError, match="DOCTYPE") as caught:
        parse_xmp(BILLION_LAUGHS, "bomb.xmp")
    assert time.perf_counter() - start < 1.0  # 10^9 expansions would take minutes and gigabytes
    assert str(caught.value).startswith("bomb.xmp: ")
    # the same bomb in UTF-16 hides the DOCTYPE from a byte search, not from the parser
    utf16 = BILLION_LAUGHS.decode().replace('<?xml version="1.0"?>', '<?xml version="1.0" encoding="UTF-16"?>')
    with pytest.raises(XmpError, match="DOCTYPE"):
        parse_xmp(utf16.encode("utf-16"), "bomb16.xmp")


def test_external_entities_are_rejected():
    with pytest.raises(XmpError, match="DOCTYPE"):
        parse_xmp(EXTERNAL_ENTITY, "evil.xmp")


@pytest.mark.parametrize("data", [BILLION_LAUGHS, EXTERNAL_ENTITY])
def test_unsafe_documents_are_refused_in_one_sentence(data):
    with pytest.raises(XmpError) as caught:
        parse_xmp(data, "IMG_1.jpg.xmp")
    assert str(caught.value) == ("IMG_1.jpg.xmp: not a safe XMP document: it declares a DOCTYPE (XMP never does; "
                                 "entity expansion refused)")


def test_oversized_document_is_refused_before_parsing():
    with pytest.raises(XmpError) as caught:
        parse_xmp(b"<" * (MAX_XMP_BYTES + 1), "IMG_1.jpg.xmp")
    assert str(caught.value) == "IMG_1.jpg.xmp: XMP document larger than 32 MB; refused"


@pytest.mark.parametrize("data, reason", [
    (b"", "not well-formed"),
    (b"<x:xmpmeta xmlns:x='adobe:ns:meta/'><unclosed></x:xmpmeta>", "not well-formed"),
    (b"<html><body>hello</body></html>", "no rdf:RDF"),
    (b"\xff\xfe\x00garbage", "not"),
])
def test_malformed_documents_are_clear_errors(data, reason):
    with pytest.raises(XmpError, match=reason) as caught:
        parse_xmp(data, "IMG_1.jpg.xmp")
    assert "\n" not in str(caught.value)


def test_lists_and_text_round_trip_with_special_characters():
    packet = new_xmp()
    packet.set_list(NS_DC, "subject", ["a & b", "<c>", "Ünïcödé", "\"quoted\""])
    packet.set_text(NS_TAGGER, "TaggerModel", "m & n")
    again = parse_xmp(packet.to_bytes())
    assert again.get_list(NS_DC, "subject") == ["a & b", "<c>", "Ünïcödé", "\"quoted\""]
    assert again.get_text(NS_TAGGER, "TaggerModel") == "m & n"
    again.set_list(NS_DC, "subject", [])
    again.remove_namespace(NS_TAGGER)
    assert again.is_empty()


def test_properties_in_attribute_form_and_other_descriptions_are_found():
    data = b"""<x:xmpmeta xmlns:x="adobe:ns:meta/"><rdf:RDF xmlns:rdf="http://www.w3.org/1999/02/22-rdf-syntax-ns#">
     <rdf:Description rdf:about="" xmlns:xmp="http://ns.adobe.com/xap/1.0/" xmp:Rating="3"/>
     <rdf:Description rdf:about="" xmlns:t="https://ns.tagger.invalid/xmp/1.0/" t:TaggerModel="old"
        xmlns:lr="http://ns.adobe.com/lightroom/1.0/">
      <lr:hierarchicalSubject><rdf:Bag><rdf:li>A|B</rdf:li></rdf:Bag></lr:hierarchicalSubject>
     </rdf:Description></rdf:RDF></x:xmpmeta>"""
    packet = parse_xmp(data)
    assert packet.get_text(NS_TAGGER, "TaggerModel") == "old"
    assert packet.get_list(NS_LR, "hierarchicalSubject") == ["A|B"]
    packet.set_text(NS_TAGGER, "TaggerModel", "new")
    packet.set_list(NS_LR, "hierarchicalSubject", ["A|B", "C|D"])
    text = packet.to_bytes().decode()
    again = parse_xmp(text.encode())
    assert again.get_text(NS_TAGGER, "TaggerModel") == "new"
    assert again.get_list(NS_LR, "hierarchicalSubject") == ["A|B", "C|D"]
    assert 'xmp:Rating="3"' in text  # untouched property of another namespace


def test_a_prefix_already_bound_elsewhere_gets_a_fresh_one():
    data = b"""<x:xmpmeta xmlns:x="adobe:ns:meta/"><rdf:RDF xmlns:rdf="http://www.w3.org/1999/02/22-rdf-syntax-ns#">
     <rdf:Description rdf:about="" xmlns:dc="http://example.com/not-dublin-core/" dc:thing="keep"/>
     </rdf:RDF></x:xmpmeta>"""
    packet = parse_xmp(data)
    packet.set_list(NS_DC, "subject", ["dog"])
    again = parse_xmp(packet.to_bytes())
    assert again.get_list(NS_DC, "subject") == ["dog"]
    assert again.get_text("http://example.com/not-dublin-core/", "thing") == "keep"


@pytest.mark.skipif(shutil.which("exiftool") is None, reason="needs exiftool")
def test_exiftool_reads_a_new_packet(tmp_path):
    packet = new_xmp()
    packet.set_list(NS_DC, "subject", ["dog", "Animals"])
    packet.set_list(NS_LR, "hierarchicalSubject", ["Animals|Dog"])
    path = tmp_path / "new.xmp"
    path.write_bytes(packet.to_bytes())
    out = subprocess.run(["exiftool", "-s", "-s", "-s", "-sep", ";", "-XMP-dc:Subject",
                          "-XMP-lr:HierarchicalSubject", str(path)], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["dog;Animals", "Animals|Dog"]
    assert out.stderr == ""
