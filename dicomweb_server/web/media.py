"""Media types and Accept negotiation (PS3.18 §8.7): pure tables and functions, used by every handler.

A request names what it accepts in the Accept header or, overriding it, in the ``accept``
query parameter (PS3.18 §8.3.3.1, Table 8.3.3.1-2), on every DICOMweb transaction that
returns a representation: retrieve, search and capabilities alike.  ``negotiate_request``
reads both, so no handler reads either itself.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Protocol

from dicomweb_server.errors import BadRequest, NotAcceptable
from dicomweb_server.web.multipart import MediaType, parse_media_type

DICOM = "application/dicom"
DICOM_JSON = "application/dicom+json"
MULTIPART = "multipart/related"


@dataclass(frozen=True)
class Offer:
    """A representation the server can produce: its media type and part type (multipart only)."""

    media_type: str
    part_type: str | None = None


@dataclass(frozen=True)
class Choice:
    offer: Offer
    transfer_syntax: str | None  # as requested: a UID, "*", or None when not given


MAX_ACCEPT = 4096  # characters of an Accept value (header or ``accept`` parameter)
_QVALUE = re.compile(r"[0-9]{1,5}(\.[0-9]{0,5})?")  # RFC 9110 §12.4.2, leniently; ASCII digits only


def parse_accept(value: str) -> list[tuple[MediaType, float]]:
    """Split an Accept header (or the ``accept`` query parameter) into media ranges with q values.

    A header is ISO-8859-1 by construction, but the query parameter is UTF-8 and may hold any
    character: media types are ASCII tokens (RFC 9110 §8.3.1), so a value with a character
    beyond ISO-8859-1, or an overlong one, is a 400 that says so.  A q value that is not a
    number from 0 to 1 in ASCII digits counts as 0 (the range is ignored).
    """
    if len(value) > MAX_ACCEPT:
        raise BadRequest(f"The Accept value is longer than {MAX_ACCEPT} characters")
    bad = next((ch for ch in value if ord(ch) > 0xFF), None)
    if bad is not None:
        raise BadRequest(
            f"The Accept value (header or accept parameter) holds U+{ord(bad):04X}: "
            "media types and their parameters are ASCII"
        )
    ranges = []
    for item in _split(value):
        media = parse_media_type(item)
        if not media.type:
            continue
        q_text = media.params.pop("q", "1")
        q = min(float(q_text), 1.0) if _QVALUE.fullmatch(q_text) else 0.0
        ranges.append((media, q))
    return ranges


def _split(value: str) -> list[str]:
    """Split on commas outside quoted strings (parameters such as type="a,b" may be quoted)."""
    items: list[str] = []
    current: list[str] = []
    quoted = False
    for ch in value:
        if ch == '"':
            quoted = not quoted
        if ch == "," and not quoted:
            items.append("".join(current))
            current = []
        else:
            current.append(ch)
    items.append("".join(current))
    return [i.strip() for i in items if i.strip()]


def _specificity(media: MediaType, offer: Offer) -> int | None:
    """How specifically a media range names an offer (RFC 9110 §12.5.1), or None if it does not."""
    if media.type == "*/*":
        return 0
    if media.type == offer.media_type.split("/")[0] + "/*":
        return 1
    if media.type != offer.media_type:
        return None
    part = media.params.get("type")
    if part is None or offer.part_type is None:
        return 2
    part = part.lower()
    if part == offer.part_type:
        return 3
    # A wildcard part type (dicomweb-client sends type="*/*") names any part of that kind.
    if part == "*/*" or (part.endswith("/*") and offer.part_type.startswith(part[:-1])):
        return 2
    return None


def negotiate(
    accept: str | None, offers: list[Offer], producible: Callable[[Offer, str | None], bool] | None = None
) -> Choice:
    """Pick the offer with the highest q; the first offer is the default when Accept is absent.

    Each offer takes the q of the most specific range that names it, so
    ``application/dicom; q=0, */*`` refuses application/dicom.  Ties go to the
    range listed first, then to the earlier offer.  A range whose transfer-syntax
    the server cannot produce (``producible`` says no) does not count, so a lower-q
    alternative in the same header is chosen instead of a 406 (PS3.18 §8.7.3.5).
    """
    if not accept:
        return Choice(offers[0], None)
    ranges = parse_accept(accept)
    best: tuple[tuple[float, int, int], Choice] | None = None
    for index, offer in enumerate(offers):
        match: tuple[int, float, int, MediaType] | None = None
        for order, (media, q) in enumerate(ranges):
            spec = _specificity(media, offer)
            if spec is not None and producible and not producible(offer, media.params.get("transfer-syntax")):
                continue
            if spec is not None and (match is None or (spec, q) > (match[0], match[1])):
                match = (spec, q, order, media)
        if match is None or match[1] <= 0:
            continue
        rank = (match[1], -match[2], -index)
        if best is None or rank > best[0]:
            best = (rank, Choice(offer, match[3].params.get("transfer-syntax")))
    if best is None:
        wanted = ", ".join(o.media_type + (f'; type="{o.part_type}"' if o.part_type else "") for o in offers)
        raise NotAcceptable(
            f"None of the accepted media types and transfer syntaxes can be produced; available: {wanted}"
        )
    return best[1]


class _Request(Protocol):
    """What negotiation reads of a request (a Starlette ``Request`` is one)."""

    @property
    def query_params(self) -> Mapping[str, str]: ...

    @property
    def headers(self) -> Mapping[str, str]: ...


def accept_of(request: _Request) -> str | None:
    """The ``accept`` query parameter overrides the Accept header (PS3.18 Table 8.3.3.1-2)."""
    return request.query_params.get("accept") or request.headers.get("accept")


def negotiate_request(
    request: _Request,
    offers: list[Offer],
    producible: Callable[[Offer, str | None], bool] | None = None,
) -> Choice:
    """``negotiate`` on what the request accepts, by query parameter or header."""
    return negotiate(accept_of(request), offers, producible)
