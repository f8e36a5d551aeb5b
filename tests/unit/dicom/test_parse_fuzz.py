"""Fuzzing the ingest parser: mutated and truncated real files never raise, never hang."""

from __future__ import annotations

from pathlib import Path

import pydicom
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dicomweb_server.dicom import dicom_json
from dicomweb_server.dicom import index as dicom_index
from dicomweb_server.dicom import part10 as dicom

DATA = Path(pydicom.data.__file__).parent / "test_files"
SEEDS = [
    (DATA / name).read_bytes()
    for name in (
        "CT_small.dcm",
        "MR_small.dcm",
        "rtplan.dcm",
        "image_dfl.dcm",
        "nested_priv_SQ.dcm",
        "JPEG2000.dcm",
    )
]


@st.composite
def mutated(draw: st.DrawFn) -> tuple[bytes, bool]:
    data = bytearray(draw(st.sampled_from(SEEDS)))
    for _ in range(draw(st.integers(0, 8))):
        at = draw(st.integers(0, len(data) - 1))
        data[at] = draw(st.integers(0, 255))
    if draw(st.booleans()):  # lengths of 0xFFFFFFFF and huge values are the classic crashers
        at = draw(st.integers(132, len(data) - 4))
        data[at : at + 4] = draw(
            st.sampled_from([b"\xff\xff\xff\xff", b"\xfe\xff\xff\x7f", b"\x00\x00\x00\x80"])
        )
    cut = draw(st.integers(0, len(data)))
    return bytes(data[:cut]), cut == len(data)


@settings(max_examples=1500, deadline=2000, suppress_health_check=[HealthCheck.too_slow])
@given(mutated())
def test_parse_header_returns_a_header_or_a_failure(case: tuple[bytes, bool]) -> None:
    data, complete = case
    parsed = dicom.parse_header(data, complete=complete, budget=1 << 20)
    assert isinstance(parsed, dicom.Header | dicom.Failure)
    if isinstance(parsed, dicom.Header):
        meta = dicom_json.to_json(parsed.dataset, lambda path: "/".join(path))
        assert isinstance(meta, dict)
        dicom_index.index_values(meta)
    else:
        assert parsed.reason in (0xA700, 0xA900, 0xC000, 0xC122)
