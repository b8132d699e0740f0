"""XMP packets read and written natively: sidecars (`IMG.jpg.xmp`) without exiftool.

Parsing is hardened (defusedxml): a document with a DOCTYPE (the only place entities can be
declared) is rejected before anything is expanded, so entity bombs and external entities never
run. Editing keeps every node we do not own (darktable's history stack, Lightroom's develop
settings, comments, processing instructions, namespace prefixes) and changes only the properties
asked for.
"""
from __future__ import annotations

import base64
from dataclasses import dataclass
from xml.dom import XMLNS_NAMESPACE, minidom
from xml.parsers import expat

import defusedxml
import defusedxml.minidom

from tagger import __version__
from tagger.errors import TaggerError

NS_X = "adobe:ns:meta/"
NS_RDF = "http://www.w3.org/1999/02/22-rdf-syntax-ns#"
NS_DC = "http://purl.org/dc/elements/1.1/"
NS_LR = "http://ns.adobe.com/lightroom/1.0/"
# The tagger's own namespace: what it wrote, for which model and which version of the photo.
# Changing this URI orphans every record already written, so it is fixed forever.
NS_TAGGER = "https://ns.tagger.invalid/xmp/1.0/"

PREFERRED_PREFIXES = {NS_X: "x", NS_RDF: "rdf", NS_DC: "dc", NS_LR: "lr", NS_TAGGER: "tagger"}
MAX_XMP_BYTES = 32 * 1024 * 1024  # darktable sidecars with long histories are well under 1 MB
MAX_XMP_DEPTH = 100  # elements inside elements: real XMP stays under 15; writing nests recursively

_PACKET_ID = "W5M0MpCehiHzreSzNTczkc9d"  # the constant id every XMP packet carries
_NEW_PACKET = (
    f'<?xpacket begin="\ufeff" id="{_PACKET_ID}"?>\n'
    f'<x:xmpmeta xmlns:x="{NS_X}" x:xmptk="tagger {__version__}">\n'
    f' <rdf:RDF xmlns:rdf="{NS_RDF}">\n'
    f'  <rdf:Description rdf:about="" xmlns:dc="{NS_DC}" xmlns:lr="{NS_LR}" xmlns:tagger="{NS_TAGGER}"/>\n'
    f' </rdf:RDF>\n'
    f'</x:xmpmeta>\n'
    f'<?xpacket end="w"?>'
)


class XmpError(TaggerError):
    """An XMP document that is not well-formed, not XMP, or unsafe to parse."""


# Why defusedxml refused a document, in the user's words.
_REFUSALS = (
    (defusedxml.DTDForbidden, "it declares a DOCTYPE (XMP never does; entity expansion refused)"),
    (defusedxml.EntitiesForbidden, "it declares an entity (refused)"),
    (defusedxml.ExternalReferenceForbidden, "it references an external entity (refused)"),
)


def _text(node) -> str:
    return "".join(child.data for child in node.childNodes
                   if child.nodeType in (child.TEXT_NODE, child.CDATA_SECTION_NODE))


def _value(node) -> str:
    """A value in exiftool's -X output: a value XML cannot hold (control characters) comes as base64."""
    if node.getAttributeNS(NS_RDF, "datatype").endswith("#base64Binary"):
        try:
            return base64.b64decode(_text(node), validate=False).decode("utf-8", "replace")
        except ValueError:
            return _text(node)
    return _text(node)


def _elements(node):
    return [child for child in node.childNodes if child.nodeType == child.ELEMENT_NODE]


def _is(node, ns: str, name: str) -> bool:
    return node.nodeType == node.ELEMENT_NODE and node.namespaceURI == ns and node.localName == name


def _depth(node) -> int:
    depth = 0
    while node.parentNode is not None and node.parentNode.nodeType == node.ELEMENT_NODE:
        depth += 1
        node = node.parentNode
    return depth


@dataclass
class XmpPacket:
    """One XMP document. Properties are addressed by (namespace URI, local name)."""

    document: minidom.Document
    xml_declaration: bool = False

    # -- reading ---------------------------------------------------------------------------
    def _rdf(self):
        stack = [self.document.documentElement]
        while stack:
            node = stack.pop()
            if _is(node, NS_RDF, "RDF"):
                return node
            stack.extend(reversed(_elements(node)))
        raise XmpError(None, "no rdf:RDF element")

    def _descriptions(self) -> list:
        return [node for node in _elements(self._rdf()) if _is(node, NS_RDF, "Description")]

    def _property_elements(self, ns: str, name: str) -> list:
        return [child for desc in self._descriptions() for child in _elements(desc) if _is(child, ns, name)]

    def get_list(self, ns: str, name: str) -> list[str]:
        """Items of an array property (rdf:Bag, rdf:Seq or rdf:Alt); a simple value is one item."""
        values: list[str] = []
        for desc in self._descriptions():
            if desc.hasAttributeNS(ns, name):
                values.append(desc.getAttributeNS(ns, name))
        for prop in self._property_elements(ns, name):
            containers = [c for c in _elements(prop) if c.namespaceURI == NS_RDF
                          and c.localName in ("Bag", "Seq", "Alt")]
            if containers:
                for container in containers:
                    values.extend(_text(li) for li in _elements(container) if _is(li, NS_RDF, "li"))
            elif not _elements(prop):
                values.append(_text(prop))
        return values

    def get_text(self, ns: str, name: str) -> str | None:
        values = self.get_list(ns, name)
        return values[0] if values else None

    def descriptions(self) -> list[tuple[str, dict[str, list[str] | str]]]:
        """Each rdf:Description as (rdf:about, {prefixed name: value}); an array property's value
        is its list of items. exiftool's `-X` output names properties `Group:Tag` this way."""
        found = []
        for desc in self._descriptions():
            values: dict[str, list[str] | str] = {}
            for prop in _elements(desc):
                containers = [c for c in _elements(prop) if c.namespaceURI == NS_RDF
                              and c.localName in ("Bag", "Seq", "Alt")]
                if containers:
                    values[prop.tagName] = [_value(li) for li in _elements(containers[0]) if _is(li, NS_RDF, "li")]
                elif not _elements(prop):
                    values[prop.tagName] = _value(prop)
            found.append((desc.getAttributeNS(NS_RDF, "about"), values))
        return found

    def has_namespace(self, ns: str) -> bool:
        for desc in self._descriptions():
            if any(child.namespaceURI == ns for child in _elements(desc)):
                return True
            attrs = desc.attributes
            if any(attrs.item(i).namespaceURI == ns for i in range(attrs.length)):
                return True
        return False

    def is_empty(self) -> bool:
        """True when the document holds nothing at all: no property, and nothing else a person or
        program may have put there (a comment, a processing instruction other than the xpacket
        wrapper, an element outside rdf:Description, text). Only such a sidecar may be deleted."""
        for node in self.document.childNodes:
            if node.nodeType == node.PROCESSING_INSTRUCTION_NODE and node.target == "xpacket":
                continue
            if node.nodeType == node.ELEMENT_NODE:
                continue
            if node.nodeType == node.TEXT_NODE and not node.data.strip():
                continue
            return False
        root = self.document.documentElement
        if _is(root, NS_X, "xmpmeta"):
            if not _only_attributes(root, {(NS_X, "xmptk")}) or not _only_whitespace_around(root, [self._rdf()]):
                return False
        elif root is not self._rdf():
            return False
        rdf = self._rdf()
        descriptions = self._descriptions()
        if not _only_attributes(rdf, set()) or not _only_whitespace_around(rdf, descriptions):
            return False
        return all(_only_attributes(desc, {(NS_RDF, "about")}) and _only_whitespace_around(desc, [])
                   for desc in descriptions)

    # -- editing ---------------------------------------------------------------------------
    def remove(self, ns: str, name: str) -> None:
        for desc in self._descriptions():
            if desc.hasAttributeNS(ns, name):
                desc.removeAttributeNS(ns, name)
        for prop in self._property_elements(ns, name):
            _remove_with_indent(prop)

    def remove_namespace(self, ns: str, keep_declaration: bool = False) -> None:
        """Drop every property of one namespace (the tagger's own record, on untag); its
        declaration goes too unless it is about to be used again."""
        for desc in self._descriptions():
            for child in _elements(desc):
                if child.namespaceURI == ns:
                    _remove_with_indent(child)
            attrs = desc.attributes
            for attr in [attrs.item(i) for i in range(attrs.length)]:
                if attr.namespaceURI == ns:
                    desc.removeAttributeNode(attr)
        if not keep_declaration:
            self._drop_declarations(ns)

    def _drop_declarations(self, ns: str) -> None:
        """Remove `xmlns:p="ns"` once nothing uses the namespace, leaving the sidecar as it was."""
        elements, stack = [], [self.document.documentElement]
        while stack:
            node = stack.pop()
            elements.append(node)
            stack.extend(_elements(node))
        for node in elements:
            attrs = node.attributes
            if node.namespaceURI == ns or any(attrs.item(i).namespaceURI == ns for i in range(attrs.length)):
                return
        for node in elements:
            attrs = node.attributes
            for attr in [attrs.item(i) for i in range(attrs.length)]:
                if attr.namespaceURI == XMLNS_NAMESPACE and attr.value == ns:
                    node.removeAttributeNode(attr)

    def set_text(self, ns: str, name: str, value: str | None) -> None:
        existing = self._property_elements(ns, name)
        if value is not None and len(existing) == 1 and not _elements(existing[0]):
            prop = existing[0]
            for child in list(prop.childNodes):
                prop.removeChild(child)
            prop.appendChild(self.document.createTextNode(value))
            return
        self.remove(ns, name)
        if value is not None:
            prop = self._new_property(ns, name)
            prop.appendChild(self.document.createTextNode(value))

    def set_list(self, ns: str, name: str, values: list[str], kind: str = "Bag") -> None:
        """Replace an array property's items, in place when it exists (its position and any
        attributes are kept); an empty list removes the property."""
        existing = self._property_elements(ns, name)
        container = None
        if len(existing) == 1:
            containers = [c for c in _elements(existing[0]) if _is(c, NS_RDF, kind)]
            if len(containers) == 1 and len(_elements(existing[0])) == 1:
                container = containers[0]
        if not values:
            self.remove(ns, name)
            return
        if container is None:
            self.remove(ns, name)
            prop = self._new_property(ns, name)
            container = self.document.createElementNS(NS_RDF, self._prefix_for(NS_RDF, prop) + ":" + kind)
            _append_indented(prop, container)
        else:
            for li in [c for c in container.childNodes]:
                container.removeChild(li)
        li_name = self._prefix_for(NS_RDF, container) + ":li"
        for value in values:
            li = self.document.createElementNS(NS_RDF, li_name)
            li.appendChild(self.document.createTextNode(value))
            _append_indented(container, li, close=False)
        container.appendChild(self.document.createTextNode("\n" + " " * _depth(container)))

    def _new_property(self, ns: str, name: str):
        descriptions = self._descriptions()
        if descriptions:
            desc = descriptions[0]
        else:
            rdf = self._rdf()
            desc = self.document.createElementNS(NS_RDF, self._prefix_for(NS_RDF, rdf) + ":Description")
            desc.setAttributeNS(NS_RDF, self._prefix_for(NS_RDF, rdf) + ":about", "")
            _append_indented(rdf, desc)
        prop = self.document.createElementNS(ns, self._prefix_for(ns, desc) + ":" + name)
        _append_indented(desc, prop)
        return prop

    def _prefix_for(self, ns: str, element) -> str:
        """A prefix bound to `ns` where `element` sits, declaring one on it when there is none."""
        taken: set[str] = set()
        node = element
        while node is not None and node.nodeType == node.ELEMENT_NODE:
            attrs = node.attributes
            for i in range(attrs.length):
                attr = attrs.item(i)
                if attr.namespaceURI == XMLNS_NAMESPACE and attr.prefix == "xmlns":
                    if attr.value == ns and attr.localName not in taken:
                        return attr.localName
                    taken.add(attr.localName)
            node = node.parentNode
        base = PREFERRED_PREFIXES.get(ns, "ns")
        prefix, n = base, 1
        while prefix in taken:
            n += 1
            prefix = f"{base}{n}"
        element.setAttributeNS(XMLNS_NAMESPACE, f"xmlns:{prefix}", ns)
        return prefix

    # -- output ----------------------------------------------------------------------------
    def to_bytes(self) -> bytes:
        parts = [child.toxml() for child in self.document.childNodes]
        head = '<?xml version="1.0" encoding="UTF-8"?>\n' if self.xml_declaration else ""
        return (head + "\n".join(parts) + "\n").encode("utf-8")


def _only_attributes(element, allowed: set[tuple[str, str]]) -> bool:
    attrs = element.attributes
    return all(attrs.item(i).namespaceURI == XMLNS_NAMESPACE
               or (attrs.item(i).namespaceURI, attrs.item(i).localName) in allowed for i in range(attrs.length))


def _only_whitespace_around(element, children: list) -> bool:
    """The element holds `children` and whitespace, nothing else."""
    for node in element.childNodes:
        if node in children:
            continue
        if node.nodeType == node.TEXT_NODE and not node.data.strip():
            continue
        return False
    return True


def _append_indented(parent, child, close: bool = True) -> None:
    """Append with the line break and indentation a human (and exiftool) would have used."""
    depth = _depth(parent) + 1
    last = parent.lastChild
    if last is not None and last.nodeType == last.TEXT_NODE and not last.data.strip():
        parent.removeChild(last)
    parent.appendChild(parent.ownerDocument.createTextNode("\n" + " " * depth))
    parent.appendChild(child)
    if close:
        parent.appendChild(parent.ownerDocument.createTextNode("\n" + " " * (depth - 1)))


def _remove_with_indent(node) -> None:
    parent = node.parentNode
    before = node.previousSibling
    parent.removeChild(node)
    if before is not None and before.nodeType == before.TEXT_NODE and not before.data.strip():
        parent.removeChild(before)


def _max_depth(document) -> int:
    deepest, stack = 0, [(document.documentElement, 1)]
    while stack:
        node, depth = stack.pop()
        deepest = max(deepest, depth)
        if depth <= MAX_XMP_DEPTH:
            stack.extend((child, depth + 1) for child in _elements(node))
    return deepest


def parse_xmp(data: bytes, source: object = None) -> XmpPacket:
    """Parse an XMP document; anything malformed or unsafe raises XmpError naming `source`."""
    if len(data) > MAX_XMP_BYTES:
        raise XmpError(source, f"XMP document larger than {MAX_XMP_BYTES // (1024 * 1024)} MB; refused")
    try:
        document = defusedxml.minidom.parseString(data, forbid_dtd=True)
    except defusedxml.DefusedXmlException as exc:
        reason = next((text for kind, text in _REFUSALS if isinstance(exc, kind)), f"refused ({exc})")
        raise XmpError(source, f"not a safe XMP document: {reason}") from None
    except expat.ExpatError as exc:
        raise XmpError(source, f"not well-formed XML ({expat.ErrorString(exc.code)}, line {exc.lineno})") from None
    except (ValueError, LookupError) as exc:  # unknown encodings and the like
        raise XmpError(source, f"not a readable XML document ({exc})") from None
    if _max_depth(document) > MAX_XMP_DEPTH:
        raise XmpError(source, f"elements nested more than {MAX_XMP_DEPTH} deep; refused")
    packet = XmpPacket(document, xml_declaration=document.version is not None)
    try:
        packet._rdf()
    except XmpError:
        raise XmpError(source, "not an XMP document (no rdf:RDF element)") from None
    return packet


def new_xmp() -> XmpPacket:
    return parse_xmp(_NEW_PACKET.encode("utf-8"), "<new>")
