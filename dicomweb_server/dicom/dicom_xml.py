"""DICOM JSON → PS3.19 Native DICOM Model XML, for ``multipart/related; type="application/dicom+xml"``."""

from __future__ import annotations

from typing import Any
from xml.etree.ElementTree import Element, SubElement, tostring

from pydicom.datadict import keyword_for_tag

NAMESPACE = "http://dicom.nema.org/PS3.19/models/NativeDICOM"
_PN_PARTS = ("FamilyName", "GivenName", "MiddleName", "NamePrefix", "NameSuffix")


def to_xml(dataset: dict[str, Any]) -> bytes:
    """One data set in DICOM JSON as a NativeDicomModel document."""
    root = Element("NativeDicomModel", xmlns=NAMESPACE)
    _attributes(root, dataset)
    return b'<?xml version="1.0" encoding="UTF-8"?>\n' + tostring(root, encoding="unicode").encode("utf-8")


def _attributes(parent: Element, dataset: dict[str, Any]) -> None:
    for tag, element in sorted(dataset.items()):
        attrs = {"tag": tag, "vr": element["vr"]}
        keyword = keyword_for_tag(int(tag, 16))
        if keyword:
            attrs["keyword"] = keyword
        node = SubElement(parent, "DicomAttribute", attrs)
        if "BulkDataURI" in element:
            SubElement(node, "BulkData", uri=element["BulkDataURI"])
        elif "InlineBinary" in element:
            SubElement(node, "InlineBinary").text = element["InlineBinary"]
        for number, value in enumerate(element.get("Value", []), start=1):
            _value(node, element["vr"], number, value)


def _value(node: Element, vr: str, number: int, value: Any) -> None:
    if vr == "SQ":
        _attributes(SubElement(node, "Item", number=str(number)), value or {})
    elif vr == "PN":
        name = SubElement(node, "PersonName", number=str(number))
        for group in ("Alphabetic", "Ideographic", "Phonetic"):
            if value.get(group):
                group_node = SubElement(name, group)
                for part, text in zip(_PN_PARTS, value[group].split("^"), strict=False):
                    if text:
                        SubElement(group_node, part).text = text
    elif value is not None:
        SubElement(node, "Value", number=str(number)).text = str(value)
