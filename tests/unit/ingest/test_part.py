"""ingest.part: the index record a part becomes (pure)."""

from __future__ import annotations

from typing import Any

from dicomweb_server.dicom import part10 as dicom
from dicomweb_server.ingest.part import index_record
from tests.support.dicomfiles import instance


def describe(data: bytes) -> dicom.Description:
    desc = dicom.describe(data, complete=True, budget=1 << 20, threshold=1024)
    assert isinstance(desc, dicom.Description)
    return desc


def test_records_of_one_series_keep_one_copy_of_the_shared_attributes() -> None:
    """A long STOW body keeps every index record until its transaction: the study and series
    attributes, identical across a series, are held once (part.index_record), never mixed between studies."""
    shared: dict[str, Any] = {}
    first, second = (
        index_record(describe(instance("1.2.3", "1.2.3.4", f"1.2.3.4.{n}")), f"k{n}", 1, None, shared)
        for n in (1, 2)
    )
    other = index_record(
        describe(instance("1.2.9", "1.2.9.4", "1.2.9.4.1", patient="Roe^Rick")), "k3", 1, None, shared
    )
    assert first.study_attrs is second.study_attrs and first.study is second.study
    assert first.series_attrs is second.series_attrs and first.series is second.series
    assert first.sop_uid != second.sop_uid and first.metadata != second.metadata
    assert "Roe^Rick" in other.study_attrs and "Roe^Rick" not in first.study_attrs
    assert other.study is not first.study


def test_the_record_leaves_the_structure_walker_behind() -> None:
    desc = describe(instance("1.2.3", "1.2.3.4", "1.2.3.4.1"))
    record = index_record(desc, "k", 10, None, {})
    assert record.checker is None and (record.object_key, record.size, record.sha256) == ("k", 10, b"")
