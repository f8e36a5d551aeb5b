"""Media types and Accept negotiation (PS3.18 §8.7): pure tables and functions."""

from __future__ import annotations

from dataclasses import dataclass

from .errors import NotAcceptable
from .multipart import MediaType, parse_media_type

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


def parse_accept(value: str) -> list[tuple[MediaType, float]]:
    """Split an Accept header (or the ``accept`` query parameter) into media ranges with q values."""
    ranges = []
    for item in _split(value):
        media = parse_media_type(item)
        if not media.type:
            continue
        try:
            q = float(media.params.pop("q", "1"))
        except ValueError:
            q = 0.0
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


def _matches(media: MediaType, offer: Offer) -> bool:
    if media.type in ("*/*", offer.media_type.split("/")[0] + "/*"):
        return True
    if media.type != offer.media_type:
        return False
    part = media.params.get("type")
    return part is None or offer.part_type is None or part.lower() == offer.part_type


def negotiate(accept: str | None, offers: list[Offer]) -> Choice:
    """Pick the offer with the highest q; the first offer is the default when Accept is absent."""
    if not accept:
        return Choice(offers[0], None)
    best: tuple[float, int, Choice] | None = None
    for order, (media, q) in enumerate(parse_accept(accept)):
        if q <= 0:
            continue
        for offer in offers:
            if _matches(media, offer):
                rank = (q, -order, Choice(offer, media.params.get("transfer-syntax")))
                if best is None or rank[:2] > best[:2]:
                    best = rank
                break
    if best is None:
        wanted = ", ".join(o.media_type + (f'; type="{o.part_type}"' if o.part_type else "") for o in offers)
        raise NotAcceptable(f"None of the accepted media types can be produced; available: {wanted}")
    return best[2]
