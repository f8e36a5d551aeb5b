"""dicom.py: UID validation, Part-10 header parsing into a Header or a Failure, index values."""

from __future__ import annotations

import io
import random
import warnings
import zlib
from typing import Any

import pytest
from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.uid import (
    DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    generate_uid,
)

from dicomweb_server.dicom.index import fold, index_values, person_name
from dicomweb_server.dicom.part10 import Failure, Header, parse_header
from dicomweb_server.dicom.resources import is_valid_uid
from dicomweb_server.dicom.status import (
    CANNOT_UNDERSTAND,
    DATASET_DOES_NOT_MATCH_SOP_CLASS,
    REFUSED_OUT_OF_RESOURCES,
    TRANSFER_SYNTAX_NOT_SUPPORTED,
)
from dicomweb_server.dicom.transfer_syntaxes import DEFLATED
from tests.support.testdata import bundled, meta_end, part10, with_meta_transfer_syntax

SECONDARY_CAPTURE = "1.2.840.10008.5.1.4.1.1.7"


# is_valid_uid -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "valid"),
    [
        ("1.2.840.10008.1.2.1", True),
        ("0", True),
        ("1.0.2", True),
        ("2.25.329800735698586629295641978511506172918", True),
        ("1." + "2" * 62, True),  # 64 characters
        ("1." + "2" * 63, False),  # 65 characters
        ("1.02", False),  # leading zero in a component
        ("01.2", False),
        ("1.2.", False),  # trailing dot
        (".1.2", False),
        ("1..2", False),
        ("", False),
        ("1.2.abc", False),
        ("1.2.3a", False),
        (" 1.2", False),
        ("1.2 ", False),
        ("1.2\0", False),
        ("1.2\n", False),
        ("1.2.٣", False),  # a non-ASCII digit
        (None, False),
        (b"1.2.3", False),
        (123, False),
    ],
)
def test_is_valid_uid(value: object, valid: bool) -> None:
    assert is_valid_uid(value) is valid


# parse_header on real files -----------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "transfer_syntax", "pixel_data"),
    [
        ("CT_small.dcm", ExplicitVRLittleEndian, ("7FE00010", "OW")),
        ("MR_small.dcm", ExplicitVRLittleEndian, ("7FE00010", "OW")),
        ("MR_small_implicit.dcm", ImplicitVRLittleEndian, ("7FE00010", "OW")),
        ("MR_small_bigendian.dcm", ExplicitVRBigEndian, ("7FE00010", "OW")),
        ("ExplVR_BigEnd.dcm", ExplicitVRBigEndian, ("7FE00010", "OB")),
        ("JPEG2000.dcm", "1.2.840.10008.1.2.4.91", ("7FE00010", "OB")),
        ("image_dfl.dcm", DeflatedExplicitVRLittleEndian, ("7FE00010", "OB")),
        ("rtplan.dcm", ImplicitVRLittleEndian, None),
        ("waveform_ecg.dcm", ExplicitVRLittleEndian, None),
    ],
)
def test_parse_header_real_files(name: str, transfer_syntax: str, pixel_data: tuple[str, str] | None) -> None:
    path = bundled(name)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ref = dcmread(path, stop_before_pixels=True)
    header = parse_header(path.read_bytes(), complete=True)
    assert isinstance(header, Header), header
    assert header.transfer_syntax_uid == transfer_syntax == ref.file_meta.TransferSyntaxUID
    assert header.pixel_data == pixel_data
    assert (header.sop_class_uid, header.sop_uid, header.study_uid, header.series_uid) == (
        ref.SOPClassUID,
        ref.SOPInstanceUID,
        ref.StudyInstanceUID,
        ref.SeriesInstanceUID,
    )
    # The data set stops before the pixel data and holds no file meta elements.
    assert all(elem.tag.group > 0x0002 and elem.tag < 0x7FE00008 for elem in header.dataset)
    assert {elem.tag for elem in header.dataset} == {elem.tag for elem in ref}


def test_deflated_file_is_inflated() -> None:
    header = parse_header(bundled("image_dfl.dcm").read_bytes(), complete=True)
    assert isinstance(header, Header)
    assert header.transfer_syntax_uid == DEFLATED
    assert header.dataset["PatientName"].value == "^^^^"  # a text element read from the inflated stream
    assert header.dataset.Rows == 512


def test_generated_float_pixel_data_explicit_vr() -> None:
    for keyword, expected in (
        ("FloatPixelData", ("7FE00008", "OF")),
        ("DoubleFloatPixelData", ("7FE00009", "OD")),
    ):
        ds = _instance()
        setattr(ds, keyword, b"\0" * 16)
        header = parse_header(part10(ds), complete=True)
        assert isinstance(header, Header)
        assert header.pixel_data == expected


def test_generated_float_pixel_data_implicit_vr() -> None:
    ds = _instance()
    ds.FloatPixelData = b"\0" * 16
    header = parse_header(part10(ds, ImplicitVRLittleEndian), complete=True)
    assert isinstance(header, Header)
    assert header.pixel_data == ("7FE00008", "OF")


# Failures --------------------------------------------------------------------------------


def _instance(**attrs: Any) -> Dataset:
    """A minimal data set with valid UIDs; an attribute given as None is removed."""
    ds = Dataset()
    values = {
        "SOPClassUID": SECONDARY_CAPTURE,
        "SOPInstanceUID": generate_uid(),
        "StudyInstanceUID": generate_uid(),
        "SeriesInstanceUID": generate_uid(),
        "PatientName": "Doe^Jane",
    }
    values.update(attrs)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # invalid values on purpose
        for keyword, value in values.items():
            if value is not None:
                setattr(ds, keyword, value)
    return ds


@pytest.mark.parametrize(
    "prefix",
    [
        pytest.param(b"", id="empty"),
        pytest.param(b"\0" * 131, id="short"),
        pytest.param(b"\0" * 132, id="no-dicm"),
        pytest.param(b"\0" * 128 + b"DICX" + b"\0" * 100, id="wrong-magic"),
        pytest.param(b"DICM" + b"\0" * 200, id="no-preamble"),
    ],
)
def test_no_dicm_prefix_cannot_be_understood(prefix: bytes) -> None:
    result = parse_header(prefix, complete=True)
    assert isinstance(result, Failure)
    assert result.reason == CANNOT_UNDERSTAND == 0xC000
    assert (result.sop_class_uid, result.sop_instance_uid) == (None, None)


def test_data_set_without_file_meta_cannot_be_understood() -> None:
    data = part10(_instance())
    bare = data[:132] + data[meta_end(data) :]  # 'DICM' followed by the data set itself
    result = parse_header(bare, complete=True)
    assert isinstance(result, Failure)
    assert result.reason == CANNOT_UNDERSTAND


@pytest.mark.parametrize(
    ("attrs", "comment", "class_known", "instance_known"),
    [
        ({"SOPInstanceUID": None}, "SOPInstanceUID is missing", True, False),
        ({"SOPInstanceUID": "1.2.abc"}, "SOPInstanceUID is not a valid UID", True, False),
        ({"SOPClassUID": None}, "SOPClassUID is missing", False, True),
        ({"SOPClassUID": "1.2.840.10008.5.1.4.1.1.07"}, "SOPClassUID is not a valid UID", False, True),
        ({"StudyInstanceUID": "1.02.3"}, "StudyInstanceUID is not a valid UID", True, True),
        ({"StudyInstanceUID": None}, "StudyInstanceUID is missing", True, True),
        ({"StudyInstanceUID": ""}, "StudyInstanceUID is missing", True, True),
        ({"SeriesInstanceUID": "1.2." + "3" * 63}, "SeriesInstanceUID is not a valid UID", True, True),
        ({"SeriesInstanceUID": "1.2.3."}, "SeriesInstanceUID is not a valid UID", True, True),
    ],
)
def test_bad_uids_do_not_match_the_sop_class(
    attrs: dict[str, str | None], comment: str, class_known: bool, instance_known: bool
) -> None:
    ds = _instance(**attrs)
    result = parse_header(part10(ds), complete=True)
    assert isinstance(result, Failure)
    assert result.reason == DATASET_DOES_NOT_MATCH_SOP_CLASS == 0xA900
    assert result.comment == comment
    assert result.sop_class_uid == (SECONDARY_CAPTURE if class_known else None)
    assert result.sop_instance_uid == (ds.SOPInstanceUID if instance_known else None)


def test_uids_padded_with_nul_are_accepted() -> None:
    uid = "1.2.3.4"  # odd length: pydicom pads UI values with NUL
    header = parse_header(part10(_instance(StudyInstanceUID=uid)), complete=True)
    assert isinstance(header, Header)
    assert header.study_uid == uid


@pytest.mark.parametrize(
    ("uid", "reason"),
    [
        ("1.2.3.4", TRANSFER_SYNTAX_NOT_SUPPORTED),  # unknown (private) UID
        ("1.2.840.10008.1.1", TRANSFER_SYNTAX_NOT_SUPPORTED),  # Verification SOP Class: not a transfer syntax
        ("1.2.840.10008.5.1.4.1.1.2", TRANSFER_SYNTAX_NOT_SUPPORTED),  # CT Image Storage
        ("not-a-uid", CANNOT_UNDERSTAND),
        ("1.02", CANNOT_UNDERSTAND),
    ],
)
def test_transfer_syntax_in_file_meta(uid: str, reason: int) -> None:
    data = with_meta_transfer_syntax(part10(_instance()), uid)
    result = parse_header(data, complete=True)
    assert isinstance(result, Failure)
    assert result.reason == reason
    if reason == TRANSFER_SYNTAX_NOT_SUPPORTED:
        assert result.reason == 0xC122
        assert uid in result.comment


def test_missing_transfer_syntax_cannot_be_understood() -> None:
    result = parse_header(bundled("meta_missing_tsyntax.dcm").read_bytes(), complete=True)
    assert isinstance(result, Failure)
    assert result.reason == CANNOT_UNDERSTAND


def _pixel_element_offset(data: bytes) -> int:
    at = data.find(b"\xe0\x7f\x10\x00")
    assert at > 0
    return at


def test_prefix_cut_before_pixel_data_is_refused_when_incomplete() -> None:
    """Every cut between the file meta and the end of the Pixel Data element header."""
    data = bundled("MR_small_implicit.dcm").read_bytes()
    pixels = _pixel_element_offset(data)
    for cut in range(meta_end(data), pixels + 8):  # implicit VR element header: tag + 32-bit length
        result = parse_header(data[:cut], complete=False)
        assert isinstance(result, Failure), cut
        assert result.reason == REFUSED_OUT_OF_RESOURCES == 0xA700, (cut, result)
    header = parse_header(data[: pixels + 8], complete=False)
    assert isinstance(header, Header)
    assert header.pixel_data == ("7FE00010", "OW")


def test_prefix_ending_at_the_explicit_pixel_data_header() -> None:
    data = bundled("CT_small.dcm").read_bytes()
    pixels = _pixel_element_offset(data)
    result = parse_header(data[: pixels + 6], complete=False)  # tag and VR; no length yet
    assert isinstance(result, Failure)
    assert result.reason == REFUSED_OUT_OF_RESOURCES
    header = parse_header(data[: pixels + 12], complete=False)
    assert isinstance(header, Header)
    assert header.pixel_data == ("7FE00010", "OW")


def _undefined_length_sequence_instance(items: int) -> bytes:
    """Enhanced multi-frame style: a long undefined-length Per-Frame Functional Groups Sequence."""
    ds = _instance(SOPClassUID="1.2.840.10008.5.1.4.1.1.4.1", BitsAllocated=16)
    frames = []
    for i in range(items):
        item = Dataset()
        item.InStackPositionNumber = i + 1
        item.is_undefined_length_sequence_item = True
        frames.append(item)
    ds.PerFrameFunctionalGroupsSequence = frames
    ds["PerFrameFunctionalGroupsSequence"].is_undefined_length = True
    ds.PixelData = b"\0" * 64
    return part10(ds)


def test_undefined_length_sequence_instance_parses_when_complete() -> None:
    data = _undefined_length_sequence_instance(20)
    header = parse_header(data, complete=True)
    assert isinstance(header, Header)
    assert len(header.dataset.PerFrameFunctionalGroupsSequence) == 20
    assert header.pixel_data == ("7FE00010", "OW")


@pytest.mark.parametrize("source", ["undefined-length-sequence", "JPEG2000.dcm"])
def test_every_prefix_cut_before_pixel_data_is_refused_not_unreadable(source: str) -> None:
    if source == "undefined-length-sequence":
        data = _undefined_length_sequence_instance(20)
    else:
        data = bundled(source).read_bytes()
    pixels = _pixel_element_offset(data)
    for cut in range(meta_end(data), pixels):
        result = parse_header(data[:cut], complete=False)
        assert isinstance(result, Failure), cut
        assert result.reason == REFUSED_OUT_OF_RESOURCES, (cut - meta_end(data), result)


def test_header_without_pixel_data_must_be_complete() -> None:
    data = bundled("rtplan.dcm").read_bytes()
    result = parse_header(data, complete=False)
    assert isinstance(result, Failure)
    assert result.reason == REFUSED_OUT_OF_RESOURCES
    assert isinstance(parse_header(data, complete=True), Header)


def test_truncated_part_is_not_accepted_with_a_shortened_uid() -> None:
    data = bundled("CT_small.dcm").read_bytes()
    series = data.find(b"\x20\x00\x0e\x00UI")  # (0020,000E) SeriesInstanceUID, explicit VR
    assert series > 0
    cut = data[: series + 8 + 14]  # the value 1.3.6.1.4.1.5962... ends after "1.3.6.1.4.1.59"
    result = parse_header(cut, complete=True)
    assert isinstance(result, Failure), f"accepted with SeriesInstanceUID {result.series_uid!r}"


def _deflated_with_compressible_text() -> tuple[bytes, Dataset]:
    ds = _instance(
        PatientComments="A" * 10000, AdditionalPatientHistory="B" * 10000, StudyDescription="after"
    )
    return part10(ds, DeflatedExplicitVRLittleEndian), ds


def test_deflated_generated_file_is_small() -> None:
    """Guards the premise of the next test: the deflated body is much smaller than its inflated header."""
    data, _ = _deflated_with_compressible_text()
    assert len(data) < 2000
    inflated = zlib.decompressobj(-zlib.MAX_WBITS).decompress(data[meta_end(data) :])
    assert len(inflated) > 20000


def test_deflated_header_larger_than_the_compressed_file() -> None:
    data, ds = _deflated_with_compressible_text()
    header = parse_header(data, complete=True)
    assert isinstance(header, Header), header
    assert header.study_uid == ds.StudyInstanceUID
    assert header.dataset.StudyDescription == "after"


@pytest.mark.parametrize("seed", range(20))
def test_garbage_after_dicm_is_a_failure_not_an_exception(seed: int) -> None:
    rng = random.Random(seed)
    garbage = bytes(rng.randrange(256) for _ in range(rng.randrange(1, 600)))
    result = parse_header(b"\0" * 128 + b"DICM" + garbage, complete=bool(seed % 2))
    assert isinstance(result, Failure)
    assert result.reason == CANNOT_UNDERSTAND


def test_corrupted_real_headers_never_raise() -> None:
    data = bundled("CT_small.dcm").read_bytes()
    rng = random.Random(1234)
    pixels = _pixel_element_offset(data)
    seen: set[type] = set()
    for _ in range(300):
        corrupted = bytearray(data[: pixels + 200])
        for _ in range(rng.randrange(1, 6)):
            corrupted[rng.randrange(132, pixels)] = rng.randrange(256)
        result = parse_header(bytes(corrupted), complete=rng.random() < 0.5)
        assert isinstance(result, Header | Failure)
        seen.add(type(result))
    assert seen == {Header, Failure}  # the corruption hit both valid-looking and broken headers


def test_every_truncation_of_a_real_header_is_handled() -> None:
    data = bundled("MR_small.dcm").read_bytes()
    pixels = _pixel_element_offset(data)
    for cut in range(0, pixels + 12, 3):
        for complete in (False, True):
            result = parse_header(data[:cut], complete=complete)
            assert isinstance(result, Header | Failure)
            if not complete:
                assert isinstance(result, Failure), cut


# person_name, fold, index_values -----------------------------------------------------


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ({"Alphabetic": "Doe^Jane"}, "Doe^Jane"),
        (
            {"Alphabetic": "Yamada^Tarou", "Ideographic": "山田^太郎", "Phonetic": "やまだ^たろう"},
            "Yamada^Tarou=山田^太郎=やまだ^たろう",
        ),
        ({"Alphabetic": "Wang^XiaoDong", "Ideographic": "王^小東", "Phonetic": ""}, "Wang^XiaoDong=王^小東"),
        ({"Ideographic": "王^小東"}, "=王^小東"),
        ({"Phonetic": "やまだ"}, "==やまだ"),
        ({"Alphabetic": "", "Ideographic": ""}, None),
        ({}, None),
    ],
)
def test_person_name(value: dict[str, str], expected: str | None) -> None:
    assert person_name({"00100010": {"vr": "PN", "Value": [value]}}, "00100010") == expected


@pytest.mark.parametrize(
    "meta",
    [
        {},
        {"00100010": {"vr": "PN"}},
        {"00100010": {"vr": "PN", "Value": []}},
        {"00100010": {"vr": "LO", "Value": ["x"]}},
    ],
)
def test_person_name_absent(meta: dict[str, Any]) -> None:
    assert person_name(meta, "00100010") is None


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("Müller^Jürgen", "MULLER^JURGEN"),
        ("müller^jürgen", "MULLER^JURGEN"),
        ("Ñúñez^José=ニュネス", "NUNEZ^JOSE=ニュネス"),
        ("Øster^Åse", "ØSTER^ASE"),  # Ø has no decomposition
        ("Doe^Jane", "DOE^JANE"),
        ("", ""),
        (None, None),
    ],
)
def test_fold(text: str | None, expected: str | None) -> None:
    assert fold(text) == expected


def test_fold_makes_composed_and_decomposed_forms_equal() -> None:
    assert fold("Jos\u00e9") == fold("Jose\u0301") == "JOSE"


def _meta() -> dict[str, Any]:
    return {
        "00080005": {"vr": "CS", "Value": ["ISO_IR 192"]},
        "00080016": {"vr": "UI", "Value": ["1.2.840.10008.5.1.4.1.1.2"]},
        "00080020": {"vr": "DA", "Value": ["20240131"]},
        "00080030": {"vr": "TM", "Value": ["101112.5"]},
        "00080050": {"vr": "SH", "Value": ["ACC-1"]},
        "00080060": {"vr": "CS", "Value": ["CT"]},
        "00080090": {"vr": "PN", "Value": [{"Alphabetic": "Dr^Who"}]},
        "00080201": {"vr": "SH", "Value": ["+0100"]},
        "00081030": {"vr": "LO", "Value": ["Chest"]},
        "0008103E": {"vr": "LO", "Value": ["Axial"]},
        "00100010": {"vr": "PN", "Value": [{"Alphabetic": "Müller^Jürgen", "Ideographic": "ミュラー"}]},
        "00100020": {"vr": "LO", "Value": ["PID-9"]},
        "00100030": {"vr": "DA", "Value": ["19700101"]},
        "00100040": {"vr": "CS", "Value": ["M"]},
        "00200010": {"vr": "SH", "Value": ["S1"]},
        "00200011": {"vr": "IS", "Value": [7]},
        "00200013": {"vr": "IS", "Value": [3]},
        "00280008": {"vr": "IS", "Value": [2]},
        "00280010": {"vr": "US", "Value": [512]},
        "00280011": {"vr": "US", "Value": [256]},
        "00280100": {"vr": "US", "Value": [16]},
        "00400244": {"vr": "DA", "Value": ["20240130"]},
        "00400245": {"vr": "TM", "Value": ["0900"]},
        "00400275": {
            "vr": "SQ",
            "Value": [
                {"00400009": {"vr": "SH", "Value": ["SPS-1"]}, "00401001": {"vr": "SH", "Value": ["RP-1"]}},
                {"00400009": {"vr": "SH"}},
                {"00401001": {"vr": "SH", "Value": ["RP-2"]}},
            ],
        },
    }


def test_index_values() -> None:
    study, series, instance = index_values(_meta())
    assert study == {
        "study_date": "20240131",
        "study_time": "101112.500000",  # normalised: fixed width sorts correctly
        "accession_number": "ACC-1",
        "referring_physician": "Dr^Who",
        "referring_physician_folded": "DR^WHO",
        "patient_name": "Müller^Jürgen=ミュラー",
        "patient_name_folded": "MULLER^JURGEN=ミュラー",
        "patient_id": "PID-9",
        "patient_birth_date": "19700101",
        "patient_sex": "M",
        "study_id": "S1",
        "study_description": "Chest",
        "timezone_offset": "+0100",
    }
    assert series == {
        "modality": "CT",
        "series_number": 7,
        "series_description": "Axial",
        "pps_start_date": "20240130",
        "pps_start_time": "090000.000000",
        "scheduled_step_ids": '["SPS-1"]',
        "requested_procedure_ids": '["RP-1","RP-2"]',
        "timezone_offset": "+0100",
    }
    assert instance == {
        "sop_class_uid": "1.2.840.10008.5.1.4.1.1.2",
        "instance_number": 3,
        "rows": 512,
        "columns": 256,
        "bits_allocated": 16,
        "number_of_frames": 2,
    }


def test_index_values_of_an_empty_instance() -> None:
    study, series, instance = index_values({})
    assert set(study.values()) == {None}
    assert series == {
        "modality": None,
        "series_number": None,
        "series_description": None,
        "pps_start_date": None,
        "pps_start_time": None,
        "scheduled_step_ids": "[]",
        "requested_procedure_ids": "[]",
        "timezone_offset": None,
    }
    assert set(instance.values()) == {None}


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (2**31 - 1, 2**31 - 1),
        (-(2**31), -(2**31)),
        (2**31, None),
        (-(2**31) - 1, None),
        ("7", None),
        (7.0, None),
    ],
)
def test_index_integers_fit_a_postgres_integer(value: Any, expected: int | None) -> None:
    _, series, _ = index_values({"00200011": {"vr": "IS", "Value": [value]}})
    assert series["series_number"] == expected


def test_index_strings_empty_or_not_strings_are_null() -> None:
    study, _, _ = index_values(
        {
            "00080050": {"vr": "SH", "Value": [""]},
            "00100020": {"vr": "LO", "Value": [None]},
            "00081030": {"vr": "LO"},
            "00080020": {"vr": "DA", "Value": [20240101]},
        }
    )
    assert study["accession_number"] is None
    assert study["patient_id"] is None
    assert study["study_description"] is None
    assert study["study_date"] is None


def test_index_values_from_a_parsed_header() -> None:
    """The path ingest takes: real file → header → DICOM JSON → index columns."""
    from dicomweb_server.dicom.dicom_json import to_json

    header = parse_header(bundled("CT_small.dcm").read_bytes(), complete=True)
    assert isinstance(header, Header)
    study, series, instance = index_values(to_json(header.dataset, lambda path: "/".join(path)))
    ref = dcmread(io.BytesIO(bundled("CT_small.dcm").read_bytes()), stop_before_pixels=True)
    assert study["patient_name"] == str(ref.PatientName) == "CompressedSamples^CT1"
    assert study["patient_name_folded"] == "COMPRESSEDSAMPLES^CT1"
    assert study["study_date"] == ref.StudyDate
    assert series["modality"] == "CT"
    assert instance["rows"] == ref.Rows == 128
    assert instance["sop_class_uid"] == ref.SOPClassUID


# Completeness, NUL and depth (issue 10) ------------------------------------------------------


def _describe(data: bytes, complete: bool = True) -> Any:
    from dicomweb_server.dicom.part10 import describe

    return describe(data, complete=complete, budget=16 * 1024 * 1024, threshold=1024)


def test_a_part_cut_short_names_what_is_missing_and_the_instance() -> None:
    data = bundled("JPEG-lossy.dcm").read_bytes()
    parsed = parse_header(data[:-8], complete=True)
    assert isinstance(parsed, Failure)
    assert parsed.reason == CANNOT_UNDERSTAND
    assert parsed.comment == "Truncated: (7FE0,0010) ends without its sequence delimiter"
    assert parsed.sop_instance_uid == dcmread(io.BytesIO(data)).SOPInstanceUID
    whole = parse_header(data, complete=True)
    assert isinstance(whole, Header) and whole.checker is not None and whole.checker.finish() is None


def test_a_prefix_leaves_the_rest_to_the_checker() -> None:
    data = bundled("CT_small.dcm").read_bytes()
    parsed = parse_header(data[:7000], complete=False)
    assert isinstance(parsed, Header) and parsed.checker is not None
    checker = parsed.checker
    checker.feed(memoryview(data)[checker.seen : len(data) - 1])
    problem = checker.finish()
    assert problem is not None and problem.comment.startswith("Truncated")


def test_nul_in_text_values_becomes_u_fffd_in_the_index_and_json() -> None:
    ds = Dataset()
    ds.SOPClassUID = SECONDARY_CAPTURE
    ds.SOPInstanceUID = generate_uid()
    ds.StudyInstanceUID = generate_uid()
    ds.SeriesInstanceUID = generate_uid()
    ds.PatientName = "Doe\0^Jane"
    ds.PatientID = "a\0b"
    ds.ImageComments = "x\0y"
    described = _describe(part10(ds))
    assert not isinstance(described, Failure), described
    assert "\\u0000" not in described.metadata and "\0" not in described.study_attrs
    assert described.study["patient_name"] == "Doe\ufffd^Jane"
    assert described.study["patient_id"] == "a\ufffdb"
    assert "x\ufffdy" in described.metadata


def test_deep_sequences_fail_without_naming_python() -> None:
    ds = Dataset()
    ds.SOPClassUID = SECONDARY_CAPTURE
    ds.SOPInstanceUID = generate_uid()
    ds.StudyInstanceUID = generate_uid()
    ds.SeriesInstanceUID = generate_uid()
    data = part10(ds)
    value = b"\x08\x00\x00\x01SH\x02\x00X "
    for _ in range(300):
        value = (
            b"\x40\x00\x30\xa7SQ\x00\x00\xff\xff\xff\xff\xfe\xff\x00\xe0\xff\xff\xff\xff"
            + value
            + b"\xfe\xff\x0d\xe0\x00\x00\x00\x00\xfe\xff\xdd\xe0\x00\x00\x00\x00"
        )
    described = _describe(data + value)
    assert isinstance(described, Failure)
    assert described.reason == CANNOT_UNDERSTAND
    assert described.comment == "Sequences are nested deeper than 64 levels"
    assert described.sop_instance_uid == ds.SOPInstanceUID  # named, though pydicom never read it
    assert described.sop_class_uid == SECONDARY_CAPTURE
