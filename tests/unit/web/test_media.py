"""media.negotiate / parse_accept: Accept tables (PS3.18 §8.7) against the instance retrieve offers."""

from __future__ import annotations

from dataclasses import dataclass

import pytest

from dicomweb_server.errors import BadRequest, NotAcceptable
from dicomweb_server.web.media import (
    DICOM,
    DICOM_JSON,
    MULTIPART,
    Choice,
    Offer,
    accept_of,
    negotiate,
    negotiate_request,
    parse_accept,
)
from dicomweb_server.web.multipart import MediaType

MULTIPART_DICOM = Offer(MULTIPART, DICOM)
BARE_DICOM = Offer(DICOM)
INSTANCE = [MULTIPART_DICOM, BARE_DICOM]  # as wado.INSTANCE_OFFERS: multipart first (the default)
METADATA = [Offer(DICOM_JSON)]
EXPLICIT_LE = "1.2.840.10008.1.2.1"


@pytest.mark.parametrize(
    ("accept", "offer", "transfer_syntax"),
    [
        (None, MULTIPART_DICOM, None),
        ("", MULTIPART_DICOM, None),
        ("application/dicom", BARE_DICOM, None),
        ("Application/DICOM", BARE_DICOM, None),
        ('multipart/related; type="application/dicom"', MULTIPART_DICOM, None),
        ("multipart/related; type=application/dicom", MULTIPART_DICOM, None),
        ("multipart/related;type=Application/Dicom", MULTIPART_DICOM, None),
        ("multipart/related", MULTIPART_DICOM, None),
        ("multipart/related; type=application/dicom; transfer-syntax=*", MULTIPART_DICOM, "*"),
        (
            f'multipart/related; type="application/dicom"; transfer-syntax="{EXPLICIT_LE}"',
            MULTIPART_DICOM,
            EXPLICIT_LE,
        ),
        (f"application/dicom; transfer-syntax={EXPLICIT_LE}", BARE_DICOM, EXPLICIT_LE),
        ("*/*", MULTIPART_DICOM, None),
        ("*/*; transfer-syntax=*", MULTIPART_DICOM, "*"),
        ("application/*", BARE_DICOM, None),
        ("multipart/*", MULTIPART_DICOM, None),
        # q values
        ("multipart/related; type=application/dicom; q=0.5, application/dicom", BARE_DICOM, None),
        ("application/dicom; q=0.4, multipart/related; type=application/dicom; q=0.9", MULTIPART_DICOM, None),
        (
            "application/dicom;q=0.9, multipart/related;type=application/dicom;q=0.9",
            BARE_DICOM,
            None,
        ),  # tie: first
        ("image/png, application/dicom;q=0.1", BARE_DICOM, None),
        ("text/html, application/xhtml+xml, */*;q=0.8", MULTIPART_DICOM, None),  # a browser
        ("application/dicom;q=0, */*;q=0.1", MULTIPART_DICOM, None),
        ("application/dicom;q=abc, */*;q=0.1", MULTIPART_DICOM, None),  # unparsable q counts as 0
        (
            f"application/dicom; transfer-syntax={EXPLICIT_LE}; q=0.3, application/dicom; q=0.2",
            BARE_DICOM,
            EXPLICIT_LE,
        ),
        # quoted commas and semicolons inside parameters
        (
            'multipart/related; type="application/dicom"; x="a,b;c", application/dicom;q=0.5',
            MULTIPART_DICOM,
            None,
        ),
        ('image/png; x="a, application/dicom", application/dicom; q=0.2', BARE_DICOM, None),
        ("  application/dicom  ,  ", BARE_DICOM, None),
    ],
)
def test_negotiate(accept: str | None, offer: Offer, transfer_syntax: str | None) -> None:
    assert negotiate(accept, INSTANCE) == Choice(offer, transfer_syntax)


@pytest.mark.parametrize(
    "accept",
    [
        "image/png",
        "image/*",
        "application/dicom+json",
        'multipart/related; type="application/dicom+json"',
        'multipart/related; type="application/octet-stream"',
        "application/dicom;q=0",
        "application/dicom;q=0.0, multipart/related;type=application/dicom;q=0",
        "*/*;q=0",
        'image/png; x="a, application/dicom"',  # the media type is inside a quoted parameter
        "  ",
        ",",
    ],
)
def test_unacceptable(accept: str) -> None:
    with pytest.raises(NotAcceptable) as info:
        negotiate(accept, INSTANCE)
    assert info.value.status == 406
    assert 'multipart/related; type="application/dicom"' in info.value.message
    assert "application/dicom" in info.value.message


def test_q_zero_excludes_a_type_even_when_a_wildcard_accepts() -> None:
    assert negotiate("multipart/related; type=application/dicom; q=0, */*", INSTANCE).offer == BARE_DICOM


def test_q_zero_with_only_a_broader_range_left_is_not_acceptable() -> None:
    with pytest.raises(NotAcceptable):
        negotiate("application/dicom; q=0, application/*", INSTANCE)


def test_metadata_offers() -> None:
    assert negotiate(None, METADATA).offer == METADATA[0]
    assert negotiate("application/dicom+json", METADATA).offer == METADATA[0]
    assert negotiate("application/json;q=0.9, application/*;q=0.5", METADATA).offer == METADATA[0]
    with pytest.raises(NotAcceptable):
        negotiate("application/dicom", METADATA)


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("application/dicom", [(MediaType("application/dicom", {}), 1.0)]),
        (
            'multipart/related; type="application/dicom"; x="a,b"; q=0.5, application/dicom',
            [
                (MediaType("multipart/related", {"type": "application/dicom", "x": "a,b"}), 0.5),
                (MediaType("application/dicom", {}), 1.0),
            ],
        ),
        ("a/b;q=0.25,c/d;Q=1", [(MediaType("a/b", {}), 0.25), (MediaType("c/d", {}), 1.0)]),
        ("a/b;q=x", [(MediaType("a/b", {}), 0.0)]),
        (", ,a/b,,", [(MediaType("a/b", {}), 1.0)]),
        (";q=1", []),
        ("", []),
    ],
)
def test_parse_accept(value: str, expected: list[tuple[MediaType, float]]) -> None:
    assert parse_accept(value) == expected


def test_wildcard_part_types_match_any_part_of_that_kind() -> None:
    offers = [Offer(MULTIPART, "application/octet-stream"), Offer(MULTIPART, "image/jpeg")]
    assert negotiate('multipart/related; type="*/*"', offers).offer == offers[0]
    assert negotiate('multipart/related; type="image/*"', offers).offer == offers[1]
    with pytest.raises(NotAcceptable):
        negotiate('multipart/related; type="video/*"', offers)


@pytest.mark.parametrize(
    "accept", ["\u0100", "application/dicom+json\u2603", 'multipart/related; type="\U0001f600"']
)
def test_an_accept_with_a_character_beyond_latin_1_is_a_400_that_names_it(accept: str) -> None:
    with pytest.raises(BadRequest) as raised:
        negotiate(accept, METADATA)
    assert raised.value.status == 400
    assert "U+" in raised.value.message and "ASCII" in raised.value.message


def test_an_overlong_accept_is_a_400() -> None:
    with pytest.raises(BadRequest):
        parse_accept("application/dicom, " * 1000)


@pytest.mark.parametrize("q", ["nan", "inf", "\u00b9", "1_0", "-1", "0x1", ""])
def test_a_q_value_that_is_not_an_ascii_number_counts_as_zero(q: str) -> None:
    ((_, weight),) = parse_accept(f"application/dicom; q={q}")
    assert weight == 0.0


def test_q_values_above_one_are_one() -> None:
    assert parse_accept("application/dicom; q=5")[0][1] == 1.0
    assert parse_accept("application/dicom; q=0.5")[0][1] == 0.5


@dataclass
class _Request:
    query_params: dict[str, str]
    headers: dict[str, str]


def test_accept_parameter_overrides_the_header() -> None:
    """PS3.18 Table 8.3.3.1-2; an empty parameter leaves the header in charge."""
    both = _Request({"accept": "application/json"}, {"accept": "application/dicom+json"})
    assert accept_of(both) == "application/json"
    search = [Offer(DICOM_JSON), Offer("application/json")]
    assert negotiate_request(both, search).offer == Offer("application/json")
    assert accept_of(_Request({"accept": ""}, {"accept": "application/json"})) == "application/json"
    assert negotiate_request(_Request({}, {}), search).offer == search[0]
