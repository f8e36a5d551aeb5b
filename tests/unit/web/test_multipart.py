"""MultipartReader and parse_media_type: recorded multipart/related bodies fed in every chunking."""

from __future__ import annotations

import contextlib

import pytest

from dicomweb_server.errors import BadRequest, PayloadTooLarge
from dicomweb_server.web.multipart import (
    MAX_BOUNDARY,
    MAX_PREAMBLE,
    PART_END,
    MediaType,
    MultipartReader,
    MultipartWriter,
    PartData,
    PartEnd,
    PartStart,
    parse_media_type,
)

BOUNDARY = "d1c0m'()+_,-./:=? b0undary"  # every RFC 2046 bchar class, space not last
CONTENT_TYPE = f'multipart/related; type="application/dicom"; boundary="{BOUNDARY}"'
DELIM = b"--" + BOUNDARY.encode()

# Payloads that look like framing: CR/LF, '--', a partial boundary, a boundary not at line start.
BINARY = bytes(range(256)) * 3
PAYLOADS = [
    b"--" + BINARY + b"\r\n--\r\n" + DELIM[:-1] + b"\r\n" + b"\r\n--" + BOUNDARY.encode()[:5],
    b"",
    b"x" + DELIM + b"--\r\nnot a delimiter: no CRLF before it\r\n-",
    b"\r\n\r\n",
    b"\r\n--" + DELIM[2:-3] + b"\r",
]
HEADERS = [
    {"content-type": "application/dicom; transfer-syntax=1.2.840.10008.1.2.1"},
    {"content-type": "application/dicom", "content-location": "/x/y?z=1"},
    {},
    {"content-type": "application/dicom", "content-id": "<part-4@example>"},
    {"content-type": "application/dicom"},
]
RAW_HEADERS = [
    b"Content-Type:   application/dicom; transfer-syntax=1.2.840.10008.1.2.1  \r\n",
    b"Content-Type: application/dicom\r\nCONTENT-Location:/x/y?z=1\r\n",
    b"",
    b"content-type: application/dicom\r\nContent-ID: <part-4@example>\r\n",
    b"Content-Type: application/dicom\r\n",
]
PREAMBLE = b"This is the preamble; a client may put anything here, even " + DELIM[:-2] + b"\r\n"
EPILOGUE = b"\r\nThe epilogue is ignored, even " + DELIM + b"\r\n\r\nand " + DELIM + b"--\r\n"


def body(
    payloads: list[bytes] = PAYLOADS,
    headers: list[bytes] = RAW_HEADERS,
    *,
    preamble: bytes = PREAMBLE,
    epilogue: bytes = EPILOGUE,
) -> bytes:
    out = bytearray(preamble)
    for raw, payload in zip(headers, payloads, strict=True):
        out += DELIM + b"\r\n" + raw + b"\r\n" + payload + b"\r\n"
    return bytes(out + DELIM + b"--" + epilogue)


RECORDED = body()
SMALL_BOUNDARY = "bd"
SMALL = b"p\r\n--bd\r\nA: 1\r\n\r\na\r\n--b\r\n--bd\r\n\r\n\r\n--bd\r\nB:2\r\nc: \r\n\r\n--bd-\r\n--bd--\r\ne"


def chunked(data: bytes, size: int) -> list[bytes]:
    return [data[i : i + size] for i in range(0, len(data), size)]


def parts(chunks: list[bytes], boundary: str = BOUNDARY, **kwargs: int) -> list[tuple[dict[str, str], bytes]]:
    """Feed the chunks, check the event grammar (Start Data* End)*, and reassemble each part."""
    reader = MultipartReader(boundary, **kwargs)
    out: list[tuple[dict[str, str], bytes]] = []
    current: bytearray | None = None
    for chunk in chunks:
        for event in reader.feed(chunk):
            if isinstance(event, PartStart):
                assert current is None, "PartStart inside a part"
                out.append((event.headers, b""))
                current = bytearray()
            elif isinstance(event, PartData):
                assert current is not None, "PartData outside a part"
                assert event.data, "empty PartData event"
                current += event.data
            else:
                assert isinstance(event, PartEnd)
                assert current is not None, "PartEnd outside a part"
                out[-1] = (out[-1][0], bytes(current))
                current = None
    reader.close()
    assert current is None
    return out


EXPECTED = list(zip(HEADERS, PAYLOADS, strict=True))


@pytest.mark.parametrize("size", [1, 2, 3, 7, 64 * 1024, len(RECORDED)])
def test_recorded_body_in_fixed_chunks(size: int) -> None:
    assert parts(chunked(RECORDED, size)) == EXPECTED


def test_recorded_body_split_at_every_offset() -> None:
    for at in range(len(RECORDED) + 1):
        assert parts([RECORDED[:at], RECORDED[at:]]) == EXPECTED, at


def test_small_body_split_at_every_pair_of_offsets() -> None:
    expected = [({"a": "1"}, b"a\r\n--b"), ({}, b""), ({"b": "2", "c": ""}, b"--bd-")]
    n = len(SMALL)
    for i in range(n + 1):
        for j in range(i, n + 1):
            assert parts([SMALL[:i], SMALL[i:j], SMALL[j:]], SMALL_BOUNDARY) == expected, (i, j)


def test_large_binary_part_in_64k_chunks() -> None:
    payload = (BINARY + b"\r\n--" + DELIM[:-1] + b"\r\n") * 400  # ~330 KB, framing-like bytes throughout
    data = body([payload, b"tail"], RAW_HEADERS[:2])
    for size in (7, 64 * 1024, 64 * 1024 + 1):
        assert parts(chunked(data, size)) == [(HEADERS[0], payload), (HEADERS[1], b"tail")]


def test_events_are_returned_by_the_feed_that_completes_them() -> None:
    """Streaming: headers as soon as they end, data not held back unless it may start a delimiter."""
    reader = MultipartReader("b")
    assert reader.feed(b"--b\r\nContent-Type: application/dicom\r\n") == []
    assert reader.feed(b"\r\n") == [PartStart({"content-type": "application/dicom"})]
    assert reader.feed(b"abc") == [PartData(b"abc")]
    assert reader.feed(b"\r\n-") == []  # may be the start of the next delimiter
    assert reader.feed(b"x") == [PartData(b"\r\n-"), PartData(b"x")]
    assert reader.feed(b"\r\n--b--\r\n") == [PartEnd()]
    reader.close()


def test_no_preamble_and_no_epilogue() -> None:
    data = body(preamble=b"", epilogue=b"")
    for size in (1, 7, 64 * 1024):
        assert parts(chunked(data, size)) == EXPECTED


def test_preamble_that_is_only_a_line_break() -> None:
    assert parts([body(preamble=b"\r\n")]) == EXPECTED


def test_epilogue_chunks_after_close_are_ignored() -> None:
    reader = MultipartReader("b")
    events = reader.feed(b"--b\r\n\r\nx\r\n--b--\r\ngarbage --b\r\n")
    assert events == [PartStart({}), PartData(b"x"), PartEnd()]
    assert reader.feed(b"--b\r\n\r\nmore garbage") == []
    reader.close()


def test_empty_part_payload_has_no_data_events() -> None:
    reader = MultipartReader("b")
    events = reader.feed(b"--b\r\nContent-Type: application/dicom\r\n\r\n\r\n--b--\r\n")
    assert events == [PartStart({"content-type": "application/dicom"}), PartEnd()]
    reader.close()


def test_duplicate_header_last_one_wins() -> None:
    assert parts([b"--b\r\nX-A: 1\r\nx-a: 2\r\n\r\nv\r\n--b--"], "b") == [({"x-a": "2"}, b"v")]


@pytest.mark.parametrize(
    "data",
    [
        pytest.param(b"", id="empty-body"),
        pytest.param(b"preamble only, no delimiter", id="preamble-only"),
        pytest.param(b"--b\r\n", id="first-delimiter-only"),
        pytest.param(b"--b\r\nContent-Type: application/dicom\r\n", id="inside-headers"),
        pytest.param(b"--b\r\n\r\npayload", id="inside-payload"),
        pytest.param(b"--b\r\n\r\npayload\r\n--b", id="before-delimiter-ending"),
        pytest.param(b"--b\r\n\r\npayload\r\n--b\r\n", id="delimiter-not-close-delimiter"),
        pytest.param(b"--b\r\n\r\npayload\r\n--b-", id="half-close-delimiter"),
    ],
)
def test_missing_close_delimiter_is_bad_request_on_close(data: bytes) -> None:
    for size in (1, 7, 64 * 1024):
        reader = MultipartReader("b")
        for chunk in chunked(data, size):
            reader.feed(chunk)
        with pytest.raises(
            BadRequest, match=r"no boundary delimiter found|ends before the close delimiter"
        ) as info:
            reader.close()
        assert info.value.status == 400


@pytest.mark.parametrize(
    "data",
    [
        pytest.param(b"--bjunk\r\n\r\nx\r\n--b--\r\n", id="text-after-first-boundary"),
        pytest.param(b"--b\n\r\nx\r\n--b--\r\n", id="bare-lf-after-first-boundary"),
        pytest.param(b"--b\r\nnot a header line\r\n\r\nx\r\n--b--\r\n", id="header-without-colon"),
        pytest.param(b"pre\r\n--bX\r\n\r\nx\r\n--b--\r\n", id="text-after-boundary-after-preamble"),
    ],
)
def test_garbage_instead_of_a_delimiter_yields_no_part(data: bytes) -> None:
    """A line that is not a delimiter is preamble (RFC 2046): what follows is either malformed
    (BadRequest) or a body with no parts, which STOW answers with 400 (tests/e2e/test_store.py)."""
    for size in (1, 7, 64 * 1024):
        reader = MultipartReader("b")
        events = []
        with contextlib.suppress(BadRequest):
            for chunk in chunked(data, size):
                events += reader.feed(chunk)
            reader.close()
        assert not any(isinstance(e, PartStart) for e in events)


def test_preamble_without_delimiter_is_bounded() -> None:
    reader = MultipartReader("b")
    reader.feed(b"x" * MAX_PREAMBLE)  # within the bound: still looking
    with pytest.raises(BadRequest, match="no boundary delimiter"):
        reader.feed(b"x")


@pytest.mark.parametrize("length", [1, 2, MAX_BOUNDARY])
def test_boundary_lengths_accepted(length: int) -> None:
    boundary = "q" * length
    data = f"--{boundary}\r\n\r\npayload\r\n--{boundary}--\r\n".encode()
    assert parts(chunked(data, 7), boundary) == [({}, b"payload")]


@pytest.mark.parametrize("boundary", ["", "q" * (MAX_BOUNDARY + 1), "q" * 200])
def test_boundary_empty_or_over_70_chars_is_bad_request(boundary: str) -> None:
    with pytest.raises(BadRequest, match="boundary"):
        MultipartReader(boundary)


def test_headers_over_the_limit_in_total_are_payload_too_large() -> None:
    data = b"--b\r\nX-One: " + b"a" * 60 + b"\r\nX-Two: " + b"b" * 60 + b"\r\n\r\nx\r\n--b--"
    for size in (1, 7, 64 * 1024):
        with pytest.raises(PayloadTooLarge) as info:
            parts(chunked(data, size), "b", max_header_bytes=100)
        assert info.value.status == 413


def test_headers_at_the_limit_are_accepted() -> None:
    data = b"--b\r\nX-One: " + b"a" * 45 + b"\r\nX-Two: " + b"b" * 45 + b"\r\n\r\nx\r\n--b--"
    # names and values count, without the colon, the space after it and the CRLF: 5 + 45 + 5 + 45
    for size in (1, 7, 64 * 1024):
        assert parts(chunked(data, size), "b", max_header_bytes=100) == [
            ({"x-one": "a" * 45, "x-two": "b" * 45}, b"x")
        ]
        with pytest.raises(PayloadTooLarge):
            parts(chunked(data, size), "b", max_header_bytes=99)


def test_header_limit_counts_each_part_separately() -> None:
    one = b"--b\r\nX-One: " + b"a" * 80 + b"\r\n\r\nx\r\n"
    data = one * 5 + b"--b--"
    assert parts(chunked(data, 7), "b", max_header_bytes=100) == [({"x-one": "a" * 80}, b"x")] * 5


def test_single_header_line_over_the_limit_is_payload_too_large() -> None:
    data = b"--b\r\nX-Long: " + b"a" * 20000 + b"\r\n\r\nx\r\n--b--"
    with pytest.raises(PayloadTooLarge):
        parts([data], "b")


def test_transport_padding_after_delimiter_is_allowed() -> None:
    """RFC 2046 §5.1.1: linear whitespace may follow a boundary delimiter, in every chunking."""
    data = b"pre\r\n--b  \r\nA: 1\r\n\r\nx\r\n--b\t \r\n\r\ny \r\n--b\r\n\r\n--b  z\r\n--b-- \t\r\nepilogue"
    expected = [({"a": "1"}, b"x"), ({}, b"y "), ({}, b"--b  z")]
    n = len(data)
    for i in range(n + 1):
        for j in range(i, n + 1):
            assert parts([data[:i], data[i:j], data[j:]], "b") == expected, (i, j)
    assert parts([b"--b  \r\n\r\nx\r\n--b-- \t\r\n"], "b") == [({}, b"x")]


def test_lf_only_body_says_lines_must_end_in_crlf() -> None:
    with pytest.raises(BadRequest, match="bare LF; multipart lines must end in CRLF"):
        parts([b"--b\nContent-Type: application/dicom\n\nx\n--b--\n"], "b")


def test_wrong_boundary_says_no_delimiter_was_found() -> None:
    with pytest.raises(
        BadRequest, match="no boundary delimiter found: the body does not contain --b followed"
    ):
        parts([b"--other\r\n\r\nx\r\n--other--\r\n"], "b")


def test_body_cut_before_the_close_delimiter_says_so() -> None:
    with pytest.raises(BadRequest, match="ends before the close delimiter --b--"):
        parts([b"--b\r\n\r\nx\r\n"], "b")


# parse_media_type -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (
            'multipart/related; type="application/dicom"; boundary="abc"',
            MediaType("multipart/related", {"type": "application/dicom", "boundary": "abc"}),
        ),
        (
            "multipart/related; type=application/dicom; boundary=abc",
            MediaType("multipart/related", {"type": "application/dicom", "boundary": "abc"}),
        ),
        (
            '  Multipart/Related ;  Type = "application/dicom" ;boundary = AbC  ',
            MediaType("multipart/related", {"type": "application/dicom", "boundary": "AbC"}),
        ),
        (
            'multipart/related;type="application/dicom";boundary=x;transfer-syntax=1.2.840.10008.1.2.4.50',
            MediaType(
                "multipart/related",
                {"type": "application/dicom", "boundary": "x", "transfer-syntax": "1.2.840.10008.1.2.4.50"},
            ),
        ),
        (
            'multipart/related; boundary="a;b=c d, e"; type=application/dicom',
            MediaType("multipart/related", {"boundary": "a;b=c d, e", "type": "application/dicom"}),
        ),
        ("multipart/related; BOUNDARY=xyz", MediaType("multipart/related", {"boundary": "xyz"})),
        ("application/dicom", MediaType("application/dicom", {})),
        ("", MediaType("", {})),
        (None, MediaType("", {})),
    ],
)
def test_parse_media_type(value: str | None, expected: MediaType) -> None:
    assert parse_media_type(value) == expected


def test_content_type_header_drives_the_reader() -> None:
    media = parse_media_type(CONTENT_TYPE)
    assert media.params["boundary"] == BOUNDARY
    assert parts(chunked(RECORDED, 7), media.params["boundary"]) == EXPECTED


# -- writing ----------------------------------------------------------------------------------


def test_writer_assembles_parts_and_reads_back() -> None:
    """What MultipartWriter writes, MultipartReader reads: delimiters, headers, bytes, close."""
    writer = MultipartWriter("application/dicom+xml", "b0undary")
    assert writer.media_type == 'multipart/related; type="application/dicom+xml"; boundary=b0undary'
    body = writer.body([b"<a/>", b"<b/>\r\n--not-a-boundary"])
    assert body.startswith(b"--b0undary\r\nContent-Type: application/dicom+xml\r\n\r\n<a/>\r\n")
    assert body.endswith(b"\r\n--b0undary--\r\n")
    reader = MultipartReader("b0undary")
    events = reader.feed(body)
    reader.close()
    data = [bytes(e.data) for e in events if isinstance(e, PartData)]
    assert data == [b"<a/>", b"<b/>\r\n--not-a-boundary"]
    assert [e.headers for e in events if isinstance(e, PartStart)] == [
        {"content-type": "application/dicom+xml"}
    ] * 2


def test_writer_lengths_and_size() -> None:
    writer = MultipartWriter("image/jpeg")
    assert len(writer.boundary) == 32 and writer.boundary != MultipartWriter("image/jpeg").boundary
    part = writer.part(b"\xff\xd8", "image/jpeg; x=1", length=True)
    assert part == writer.head("image/jpeg; x=1", 2) + b"\xff\xd8" + PART_END
    assert b"Content-Length: 2\r\n" in part
    streamed = writer.head("image/png", 3) + b"abc" + PART_END + writer.part(b"", length=True) + writer.end()
    assert writer.size([("image/png", 3), ("image/jpeg", 0)]) == len(streamed)
