"""dicom_json.to_json: equal to pydicom's Dataset.to_json_dict over pydicom's own corpus, plus edge cases."""

from __future__ import annotations

import base64
import io
import json
import struct
import warnings
from pathlib import Path
from typing import Any

import orjson
import pytest
from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.filereader import read_dataset
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian, generate_uid

from dicomweb_server.dicom import dicom_json
from dicomweb_server.dicom.dicom_json import to_json
from dicomweb_server.dicom.part10 import Header, parse_header
from tests.support.testdata import DATA_ROOT, charset_file, corpus, part10

JSON = dict[str, Any]


def _reference(ds: Dataset, threshold: int = 1024) -> JSON:
    """pydicom's DICOM JSON, with the BulkDataURI naming the element's own tag."""
    return ds.to_json_dict(threshold, lambda elem: f"{elem.tag:08X}")


def _ours(ds: Dataset, threshold: int = 1024) -> JSON:
    """Our DICOM JSON; the BulkDataURI is the last path component (the tag), to compare with pydicom's."""
    return to_json(ds, lambda path: path[-1], threshold)


def _normalise(value: JSON) -> JSON:
    """Drop group lengths; an empty sequence is {"vr": "SQ"} (pydicom writes "Value": [])."""
    out: JSON = {}
    for tag, elem in value.items():
        if tag.endswith("0000"):
            continue
        if elem.get("vr") == "SQ":
            items = [_normalise(item) for item in elem.get("Value", [])]
            elem = {"vr": "SQ", "Value": items} if items else {"vr": "SQ"}
        out[tag] = elem
    return out


def _read(path: Path) -> Dataset:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # pydicom's own warnings about the corpus files
        return dcmread(path, stop_before_pixels=True)


def _pydicom_json(path: Path) -> JSON | None:
    """pydicom's normalised JSON for a corpus file, or None when pydicom cannot read or convert it."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return _normalise(_reference(_read(path)))
    except Exception:
        return None


def _eligible() -> list[Any]:
    params = []
    for path in corpus():
        expected = _pydicom_json(path)
        if expected is None:
            continue
        name = str(path.relative_to(DATA_ROOT))
        params.append(pytest.param(path, expected, id=name))
    return params


CORPUS = _eligible()


def test_corpus_is_substantial() -> None:
    """Guards the comparison below from silently shrinking (pydicom 3 bundles ~180 readable files)."""
    assert len(CORPUS) > 150
    names = {p.values[0].name for p in CORPUS}
    assert {"CT_small.dcm", "chrH31.dcm", "chrSQEncoding.dcm", "image_dfl.dcm", "rtplan.dcm"} <= names


@pytest.mark.parametrize(("path", "expected"), CORPUS)
def test_corpus_equals_pydicom(path: Path, expected: JSON) -> None:
    assert _ours(_read(path)) == expected


def _part10_corpus() -> list[Any]:
    params = []
    for param in CORPUS:
        path = param.values[0]
        data = path.read_bytes()
        if data[128:132] == b"DICM" and isinstance(parse_header(data, complete=True), Header):
            params.append(pytest.param(path, param.values[1], id=param.id, marks=param.marks))
    return params


@pytest.mark.parametrize(("path", "expected"), _part10_corpus())
def test_parsed_header_equals_pydicom(path: Path, expected: JSON) -> None:
    """The ingest path: our header parser's data set (deflated ones inflated by us) gives the same JSON."""
    header = parse_header(path.read_bytes(), complete=True)
    assert isinstance(header, Header)
    assert _ours(header.dataset) == expected


# Character sets -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "tag", "expected"),
    [
        (
            "chrH31.dcm",
            "00100010",
            [{"Alphabetic": "Yamada^Tarou", "Ideographic": "山田^太郎", "Phonetic": "やまだ^たろう"}],
        ),
        ("chrJapMulti.dcm", "00100010", [{"Alphabetic": "やまだ^たろう"}]),
        ("chrKoreanMulti.dcm", "00100010", [{"Alphabetic": "김희중"}]),
        ("chrGerm.dcm", "00100010", [{"Alphabetic": "Äneas^Rüdiger"}]),
        ("chrFren.dcm", "00100010", [{"Alphabetic": "Buc^Jérôme"}]),
        ("chrRuss.dcm", "00100010", [{"Alphabetic": "Люкceмбypг"}]),  # noqa: RUF001 (mixed scripts, as in the file)
        ("chrArab.dcm", "00100010", [{"Alphabetic": "قباني^لنزار"}]),
    ],
)
def test_charset_files(name: str, tag: str, expected: list[JSON]) -> None:
    path = charset_file(name)
    ours = _ours(_read(path))
    assert ours[tag] == {"vr": "PN", "Value": expected}
    assert ours == _pydicom_json(path)


@pytest.mark.parametrize("name", ["chrSQEncoding.dcm", "chrSQEncoding1.dcm"])
def test_sequence_item_character_set(name: str) -> None:
    """An item with its own Specific Character Set, and an item inheriting ISO 2022 from its parent."""
    path = charset_file(name)
    ours = _ours(_read(path))
    item = ours["00321064"]["Value"][0]
    assert item["00100010"] == {
        "vr": "PN",
        "Value": [{"Alphabetic": "ﾔﾏﾀﾞ^ﾀﾛｳ", "Ideographic": "山田^太郎", "Phonetic": "やまだ^たろう"}],
    }
    assert ours == _pydicom_json(path)


def test_sequence_item_inherits_iso_2022_from_its_parent() -> None:
    """ISO 2022 IR 87 text is 7-bit: decoding it as ASCII would succeed and return escape sequences."""
    name = "Yamada^Tarou=山田^太郎=やまだ^たろう"
    item = Dataset()
    item.PatientName = name
    item.CodeMeaning = "山田"
    ds = _with_uids(SpecificCharacterSet=["", "ISO 2022 IR 87"], ConceptNameCodeSequence=[item])
    raw = _roundtrip(ds)
    assert max(raw.ConceptNameCodeSequence[0].get_item(0x00100010).value) < 0x80
    ours = _ours(raw)
    nested = ours["0040A043"]["Value"][0]
    assert nested["00100010"]["Value"] == [
        {"Alphabetic": "Yamada^Tarou", "Ideographic": "山田^太郎", "Phonetic": "やまだ^たろう"}
    ]
    assert nested["00080104"] == {"vr": "LO", "Value": ["山田"]}
    assert ours == _normalise(_reference(_roundtrip(ds)))


def test_pn_trailing_empty_group() -> None:
    ours = _ours(_read(charset_file("chrX1.dcm")))
    assert ours["00100010"] == {
        "vr": "PN",
        "Value": [{"Alphabetic": "Wang^XiaoDong", "Ideographic": "王^小東"}],
    }


def _roundtrip(ds: Dataset, transfer_syntax: str = ExplicitVRLittleEndian) -> Dataset:
    """Write as Part 10 and parse it back with our header parser (raw elements, as at ingest)."""
    header = parse_header(part10(ds, transfer_syntax), complete=True)
    assert isinstance(header, Header), header
    return header.dataset


def _with_uids(**attrs: Any) -> Dataset:
    ds = Dataset()
    ds.SOPClassUID = "1.2.840.10008.5.1.4.1.1.7"
    ds.SOPInstanceUID = generate_uid()
    ds.StudyInstanceUID = generate_uid()
    ds.SeriesInstanceUID = generate_uid()
    for keyword, value in attrs.items():
        setattr(ds, keyword, value)
    return ds


@pytest.mark.parametrize(
    ("charset", "name", "expected"),
    [
        ("ISO_IR 100", "Müller^Jürgen", {"Alphabetic": "Müller^Jürgen"}),
        ("ISO_IR 192", "Müller^Jürgen", {"Alphabetic": "Müller^Jürgen"}),
        (
            "ISO_IR 192",
            "Yamada^Tarou=山田^太郎=やまだ^たろう",
            {"Alphabetic": "Yamada^Tarou", "Ideographic": "山田^太郎", "Phonetic": "やまだ^たろう"},
        ),
        ("ISO_IR 192", "=王^小東", {"Alphabetic": "", "Ideographic": "王^小東"}),
    ],
)
@pytest.mark.parametrize("transfer_syntax", [ExplicitVRLittleEndian, ImplicitVRLittleEndian])
def test_non_ascii_person_name_round_trip(
    charset: str, name: str, expected: JSON, transfer_syntax: str
) -> None:
    ds = _with_uids(SpecificCharacterSet=charset, PatientName=name, StudyDescription="Étude «thorax»")
    raw = _roundtrip(ds, transfer_syntax)
    encoded = raw.get_item(0x00100010).value
    assert encoded.rstrip(b" ") == name.encode("latin-1" if charset == "ISO_IR 100" else "utf-8")
    ours = _ours(raw)
    assert ours["00100010"] == {"vr": "PN", "Value": [expected]}
    assert ours["00081030"] == {"vr": "LO", "Value": ["Étude «thorax»"]}
    assert ours == _normalise(_reference(_roundtrip(ds, transfer_syntax)))


# Bulk data ---------------------------------------------------------------------------------


def _document(size: int) -> Dataset:
    item = Dataset()
    item.EncapsulatedDocument = b"\x01" * size
    return item


def test_bulk_data_uri_paths_in_nested_sequences() -> None:
    inner = Dataset()
    inner.ContentSequence = [_document(10), _document(4000)]
    outer = Dataset()
    outer.ContentSequence = [inner]
    ds = _with_uids(
        EncapsulatedDocument=b"\x02" * 2000,
        ContentSequence=[_document(800), outer],
        ReferencedSeriesSequence=[],
    )
    paths: list[tuple[str, ...]] = []

    def bulk(path: tuple[str, ...]) -> str:
        paths.append(path)
        return "bulk/" + "/".join(path)

    out = to_json(_roundtrip(ds), bulk)
    assert out["00420011"] == {"vr": "OB", "BulkDataURI": "bulk/00420011"}
    content = out["0040A730"]["Value"]
    assert content[0]["00420011"] == {"vr": "OB", "BulkDataURI": "bulk/0040A730/0/00420011"}
    nested = content[1]["0040A730"]["Value"][0]["0040A730"]["Value"]
    assert nested[0]["00420011"] == {"vr": "OB", "InlineBinary": base64.b64encode(b"\x01" * 10).decode()}
    assert nested[1]["00420011"] == {
        "vr": "OB",
        "BulkDataURI": "bulk/0040A730/1/0040A730/0/0040A730/1/00420011",
    }
    assert out["00081115"] == {"vr": "SQ"}
    assert sorted(paths) == sorted(
        [
            ("00420011",),
            ("0040A730", "0", "00420011"),
            ("0040A730", "1", "0040A730", "0", "0040A730", "1", "00420011"),
        ]
    )


@pytest.mark.parametrize(
    ("size", "threshold", "inline"),
    [(768, 1024, True), (770, 1024, False), (0, 1024, None), (2, 4, True), (4, 4, False), (1000, 4096, True)],
)
def test_inline_binary_threshold_matches_pydicom(size: int, threshold: int, inline: bool | None) -> None:
    ds = _with_uids(EncapsulatedDocument=bytes(range(256)) * (size // 256) + bytes(size % 256))
    ours = _ours(_roundtrip(ds), threshold)["00420011"]
    if inline is None:
        assert ours == {"vr": "OB"}
    elif inline:
        assert ours == {"vr": "OB", "InlineBinary": base64.b64encode(ds.EncapsulatedDocument).decode()}
    else:
        assert ours == {"vr": "OB", "BulkDataURI": "00420011"}
    assert ours == _reference(_roundtrip(ds), threshold)["00420011"]


# Raw element values: the lean encoder against pydicom ------------------------------------------


def _explicit(tag: int, vr: str, value: bytes, *, pad: bool = True) -> bytes:
    if pad and len(value) % 2:
        value += b"\0" if vr == "UI" else b" "
    group, element = tag >> 16, tag & 0xFFFF
    if vr in ("OB", "OD", "OF", "OL", "OV", "OW", "SQ", "SV", "UC", "UN", "UR", "UT", "UV"):
        return struct.pack("<HH2sHI", group, element, vr.encode(), 0, len(value)) + value
    return struct.pack("<HH2sH", group, element, vr.encode(), len(value)) + value


def _raw(*elements: bytes) -> Dataset:
    return read_dataset(io.BytesIO(b"".join(elements)), False, True)


def _case(tag: int, vr: str, value: bytes, expected: list[Any] | None) -> Any:
    return pytest.param(tag, vr, value, expected, id=f"{vr}-{value!r}")


@pytest.mark.parametrize(
    ("tag", "vr", "value", "expected"),
    [
        _case(0x00100010, "PN", b"Doe^John", [{"Alphabetic": "Doe^John"}]),
        _case(0x00100010, "PN", b"Doe\\Smith", [{"Alphabetic": "Doe"}, {"Alphabetic": "Smith"}]),
        _case(0x00100010, "PN", b"A==P", [{"Alphabetic": "A", "Ideographic": "", "Phonetic": "P"}]),
        _case(0x00100010, "PN", b"=Ideo", [{"Alphabetic": "", "Ideographic": "Ideo"}]),
        _case(0x00100020, "LO", b"a\\\\b", ["a", "", "b"]),
        _case(0x00100020, "LO", b" a ", [" a"]),
        _case(0x00081030, "LO", b"x\0", ["x"]),
        _case(0x00081030, "LO", b"\0", None),
        _case(0x00280030, "DS", b"1.50\\2", [1.5, 2.0]),
        _case(0x00280030, "DS", b" 1e3", [1000.0]),
        _case(0x00200013, "IS", b" 12 ", [12]),
        _case(0x00200013, "IS", b"+5", [5]),
        _case(0x00200013, "IS", b"1.0", [1]),
        _case(0x00200013, "IS", b"12\\ 3", [12, 3]),
        _case(0x00080060, "CS", b"MR\\\\CT", ["MR", "", "CT"]),
        _case(0x00080020, "DA", b"20200101\\", ["20200101", ""]),
        _case(0x00080054, "AE", b" AE1 \\AE2", ["AE1", "AE2"]),
        _case(0x0008010E, "UR", b"http://x/y ", ["http://x/y"]),
        _case(0x00180015, "CS", b"", None),
        _case(0x00280010, "US", b"\x01\x00\x02\x00", [1, 2]),
        _case(0x00280106, "SS", b"\xff\xff", [-1]),
        _case(0x00186011, "UI", b"1.2\\3.4", ["1.2", "3.4"]),
        _case(0x00204000, "LT", b"line1\\line2  ", ["line1\\line2"]),
        _case(0x00204000, "LT", b" lead", [" lead"]),
        _case(0x00189219, "FD", struct.pack("<d", 1.5), [1.5]),
        _case(0x00181310, "US", b"", None),
        _case(
            0x00080090, "PN", b"Dr\xe9", [{"Alphabetic": "Dré"}]
        ),  # no charset: pydicom's fallback decoding
        _case(0x00209165, "AT", b"\x20\x00\x0d\x00", ["0020000D"]),
        _case(
            0x00100010,
            "PN",
            b"Doe^John=",
            [{"Alphabetic": "Doe^John"}],
        ),
        _case(0x00100010, "PN", b" ", None),
    ],
)
def test_raw_values_equal_pydicom(tag: int, vr: str, value: bytes, expected: list[Any] | None) -> None:
    element = _explicit(tag, vr, value)
    key = f"{tag:08X}"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # pydicom warns about some values (IS "1.0") as it converts them
        ours = _ours(_raw(element))[key]
        reference = _reference(_raw(element))[key]
    assert ours == ({"vr": vr} if expected is None else {"vr": vr, "Value": expected})
    assert ours == reference


@pytest.mark.parametrize(
    ("tag", "vr", "value"),
    [
        pytest.param(0x00280030, "DS", b"1\\", id="DS-empty-second-value"),  # pydicom raises ValueError
        pytest.param(0x00280010, "US", b"\x01\x00\x02", id="US-odd-length"),
        pytest.param(0x00209165, "AT", b"\x01\x00\x02\x00\x03\x00", id="AT-not-multiple-of-4"),
        pytest.param(0x00280030, "DS", b"1.0\\x", id="DS-not-a-number"),
    ],
)
def test_undecodable_value_falls_back_to_un(tag: int, vr: str, value: bytes) -> None:
    out = _ours(_raw(_explicit(tag, vr, value, pad=False), _explicit(0x00100020, "LO", b"PID")))
    assert out[f"{tag:08X}"] == {"vr": "UN", "InlineBinary": base64.b64encode(value).decode()}
    assert out["00100020"] == {"vr": "LO", "Value": ["PID"]}  # the rest of the data set is unaffected


def test_group_length_and_file_meta_are_left_out() -> None:
    data = _raw(
        _explicit(0x00020010, "UI", b"1.2.840.10008.1.2.1"),
        _explicit(0x00080000, "UL", struct.pack("<I", 10)),
        _explicit(0x00080060, "CS", b"CT"),
    )
    assert _ours(data) == {"00080060": {"vr": "CS", "Value": ["CT"]}}


def test_converted_elements_use_pydicom() -> None:
    """Elements pydicom already converted (not raw) are encoded by pydicom, with the same result."""
    ds = _roundtrip(_with_uids(PatientName="Doe^Jane", Rows=512, PixelSpacing=[0.5, 0.25]))
    raw_json = _ours(ds)
    _ = ds.PatientName, ds.Rows, ds.PixelSpacing  # converts these elements in place
    assert _ours(ds) == raw_json
    assert raw_json["00280030"] == {"vr": "DS", "Value": [0.5, 0.25]}


# absolute_bulkdata ----------------------------------------------------------------------------

_BASE = "https://pacs.example/tenant-a"
_PATH = "/dicomweb/studies/1.2/series/1.2.3/instances/1.2.3.4/bulkdata/7FE00010"


def test_absolute_bulkdata_keeps_the_bytes_of_postgresql_text() -> None:
    """jsonb::text prints ``"key": value``: the result is the old replace's, byte for byte."""
    text = f'[{{"00100010": {{"vr": "PN"}}, "7FE00010": {{"vr": "OW", "BulkDataURI": "{_PATH}"}}}}]'
    out = dicom_json.absolute_bulkdata(text.encode(), _BASE)
    assert out == text.replace('"BulkDataURI": "/', f'"BulkDataURI": "{_BASE}/').encode()


@pytest.mark.parametrize(
    "dump",
    [
        lambda v: orjson.dumps(v),  # compact
        lambda v: json.dumps(v, indent=2).encode(),  # newlines and indentation
        lambda v: json.dumps(v, separators=(" , ", " :\t")).encode(),  # odd but valid whitespace
    ],
)
def test_absolute_bulkdata_on_any_valid_printing(dump: Any) -> None:
    tricky = '"BulkDataURI": "/dicomweb/x'  # a value that looks like the key: never rewritten
    value = [
        {
            "00081030": {"vr": "LO", "Value": [tricky]},
            "7FE00010": {"vr": "OW", "BulkDataURI": _PATH},
            "0040A730": {"vr": "SQ", "Value": [{"00420011": {"vr": "OB", "BulkDataURI": _PATH[:-8] + "x"}}]},
            "00091011": {"vr": "OB", "BulkDataURI": "https://elsewhere/bulk"},  # already absolute
        }
    ]
    out = orjson.loads(dicom_json.absolute_bulkdata(dump(value), _BASE))
    assert out[0]["7FE00010"]["BulkDataURI"] == _BASE + _PATH
    assert out[0]["0040A730"]["Value"][0]["00420011"]["BulkDataURI"] == _BASE + _PATH[:-8] + "x"
    assert out[0]["00081030"]["Value"] == [tricky]
    assert out[0]["00091011"]["BulkDataURI"] == "https://elsewhere/bulk"


def test_absolute_bulkdata_escapes_the_base() -> None:
    value = {"7FE00010": {"vr": "OW", "BulkDataURI": _PATH}}
    out = dicom_json.absolute_bulkdata(orjson.dumps(value), 'https://h/"odd\\')
    assert orjson.loads(out)["7FE00010"]["BulkDataURI"] == 'https://h/"odd\\' + _PATH
