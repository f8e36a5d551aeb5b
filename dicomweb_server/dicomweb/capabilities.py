"""Retrieve Capabilities (PS3.18 §8.9, Annex H): the route table described as WADL or JSON.

Pure: the app hands over its routes as ``(path, method, transaction)``; what each
transaction consumes, produces and accepts as query parameters is a table here,
so the document cannot drift from the routes that actually exist.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any
from xml.etree.ElementTree import Element, SubElement, tostring

from dicomweb_server.dicom.query import ATTRIBUTES
from dicomweb_server.dicom.resources import Level

WADL = "application/vnd.sun.wadl+xml"
WADL_NS = "http://wadl.dev.java.net/2009/02"
_DICOM = 'multipart/related; type="application/dicom"'
_JSON = ("application/dicom+json", "application/json")
_XML = 'multipart/related; type="application/dicom+xml"'
_RENDERED = ("image/jpeg", "image/png", "image/gif")
_QIDO_PARAMS = ("includefield", "fuzzymatching", "limit", "offset", "accept")


@dataclass(frozen=True)
class Transaction:
    """One PS3.18 transaction as a route serves it."""

    name: str
    consumes: tuple[str, ...] = ()
    produces: tuple[str, ...] = ()
    params: tuple[str, ...] = ()
    statuses: tuple[int, ...] = (200,)


def _matching(level: Level) -> tuple[str, ...]:
    return tuple(a.keyword for a in ATTRIBUTES if a.level <= level)


# Keyed by the transaction id the app gives each route.
TRANSACTIONS = {
    "store": Transaction(
        "StoreInstances", (_DICOM, "application/dicom"), _JSON[:1], statuses=(200, 202, 400, 409, 413, 415)
    ),
    "search-studies": Transaction(
        "SearchForStudies", produces=(*_JSON, _XML), params=_matching(Level.STUDY) + _QIDO_PARAMS
    ),
    "search-series": Transaction(
        "SearchForSeries", produces=(*_JSON, _XML), params=_matching(Level.SERIES) + _QIDO_PARAMS
    ),
    "search-instances": Transaction(
        "SearchForInstances", produces=(*_JSON, _XML), params=_matching(Level.INSTANCE) + _QIDO_PARAMS
    ),
    "retrieve": Transaction(
        "RetrieveInstances", produces=(_DICOM, "application/zip", "application/dicom"), params=("accept",)
    ),
    "metadata": Transaction(
        "RetrieveMetadata", produces=(*_JSON, _XML), params=("accept",), statuses=(200, 304)
    ),
    "frames": Transaction(
        "RetrieveFrames",
        produces=('multipart/related; type="application/octet-stream"', "multipart/related; type=image/*"),
        params=("accept",),
    ),
    "bulkdata": Transaction(
        "RetrieveBulkdata",
        produces=('multipart/related; type="application/octet-stream"', "application/octet-stream"),
        params=("accept",),
        statuses=(200, 206),
    ),
    "rendered": Transaction(
        "RetrieveRendered", produces=_RENDERED, params=("accept", "window", "viewport", "quality")
    ),
    "thumbnail": Transaction("RetrieveThumbnail", produces=_RENDERED, params=("accept", "viewport")),
    "delete": Transaction("DeleteResource", statuses=(204, 404)),
    "capabilities": Transaction("RetrieveCapabilities", produces=(WADL, "application/json")),
}


def _tree(routes: Iterable[tuple[str, str, str]], root: str) -> dict[str, Any]:
    """Nest routes by path segment below ``root``: {"methods": [...], "children": {...}}."""
    tree: dict[str, Any] = {"methods": [], "children": {}}
    for path, method, transaction in routes:
        if not path.startswith(root):
            continue
        node = tree
        for segment in [s for s in path[len(root) :].split("/") if s]:
            node = node["children"].setdefault(segment, {"methods": [], "children": {}})
        node["methods"].append((method, TRANSACTIONS[transaction]))
    return tree


def wadl(routes: Iterable[tuple[str, str, str]], root: str, base: str) -> bytes:
    """The WADL document of Annex H for every route under ``root`` (e.g. ``/dicomweb``)."""
    app = Element("application", xmlns=WADL_NS)
    resources = SubElement(app, "resources", base=f"{base}{root}/")
    _wadl_node(resources, _tree(routes, root))
    return b'<?xml version="1.0" encoding="UTF-8"?>\n' + tostring(app, encoding="unicode").encode()


def _wadl_node(parent: Element, node: dict[str, Any]) -> None:
    for method, t in node["methods"]:
        m = SubElement(parent, "method", name=method, id=t.name)
        request = SubElement(m, "request")
        for name in t.params:
            SubElement(request, "param", name=name, style="query")
        for media in t.consumes:
            SubElement(request, "representation", mediaType=media)
        for status in t.statuses:
            response = SubElement(m, "response", status=str(status))
            if 200 <= status < 300:
                for media in t.produces:
                    SubElement(response, "representation", mediaType=media)
    for segment, child in node["children"].items():
        resource = SubElement(parent, "resource", path=segment)
        if segment.startswith("{"):
            SubElement(resource, "param", name=segment.strip("{}"), style="template", required="true")
        _wadl_node(resource, child)


def as_json(routes: Iterable[tuple[str, str, str]], root: str, base: str) -> dict[str, Any]:
    """The same description as plain JSON, for clients without a WADL reader."""
    return {
        "base": f"{base}{root}/",
        "fuzzyMatching": True,
        "resources": [
            {
                "path": path,
                "method": method,
                "transaction": TRANSACTIONS[transaction].name,
                "consumes": list(TRANSACTIONS[transaction].consumes),
                "produces": list(TRANSACTIONS[transaction].produces),
                "queryParameters": list(TRANSACTIONS[transaction].params),
            }
            for path, method, transaction in routes
            if path.startswith(root)
        ],
    }
