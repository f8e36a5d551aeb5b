"""A report as a DICOM Encapsulated PDF instance (PS3.3 A.45.1, SOP Class 1.2.840.10008.5.1.4.1.1.104.1).

The analysis report goes back to the PACS as a new series of the study it was made from, so
the viewer shows it beside the images: the Patient and General Study modules are copied from
the source study as the index holds them (its DICOM JSON), the Encapsulated Document module
carries the PDF (PS3.3 C.24.2), the SC Equipment module says it was converted (``SD``: scanned
document / synthetic, PS3.3 C.8.6.1).  Pure: the same inputs give the same bytes, so a
delivery run twice re-sends an identical instance (an idempotent success, PS3.4 B.4.1), which
is why the UIDs are derived from the report and the content time is the report's, never "now".
"""

from __future__ import annotations

import io
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sequence import Sequence
from pydicom.uid import PYDICOM_IMPLEMENTATION_UID, UID, ExplicitVRLittleEndian

ENCAPSULATED_PDF = "1.2.840.10008.5.1.4.1.1.104.1"
PDF = "application/pdf"
MANUFACTURER = "dicomweb-server"
SERIES_NUMBER = 9901  # high, so the report sorts after the acquired series in a viewer
# The document title as a code (PS3.16 CID 7020 has no "brain MRI analysis"; LOINC 18748-4 is
# "Diagnostic imaging study", the generic title used for imaging reports).
TITLE_CODE = ("18748-4", "LN", "Diagnostic imaging study")
_NAMESPACE = uuid.UUID("0f3d2c58-7d0e-4a0b-9a59-6a4f7e1c2b10")  # ours: UIDs of report instances

# Patient (PS3.3 C.7.1.1) and General Study (C.7.2.1) attributes copied from the source study,
# as DICOM JSON tags; Patient Study (C.7.2.2) ones too where the index has them.
COPIED = (
    "00100010",  # PatientName
    "00100020",  # PatientID
    "00100021",  # IssuerOfPatientID
    "00100030",  # PatientBirthDate
    "00100040",  # PatientSex
    "00101010",  # PatientAge
    "00101020",  # PatientSize
    "00101030",  # PatientWeight
    "00080020",  # StudyDate
    "00080030",  # StudyTime
    "00080050",  # AccessionNumber
    "00080090",  # ReferringPhysicianName
    "00081030",  # StudyDescription
    "00200010",  # StudyID
    "00080201",  # TimezoneOffsetFromUTC
    "00080005",  # SpecificCharacterSet (the copied names are in it)
)


@dataclass(frozen=True)
class Report:
    """What one Encapsulated PDF instance is made from."""

    report_id: str
    study_uid: str
    study: dict[str, Any]  # the source study's DICOM JSON (the index's ``study.attrs``)
    pdf: bytes
    title: str
    created_at: datetime  # the content date and time: the report's, so the bytes are stable


def derived_uid(*parts: str) -> str:
    """A UID under 2.25 (PS3.5 B.2) from a UUID v5 of ``parts``: the same parts, the same UID."""
    return f"2.25.{uuid.uuid5(_NAMESPACE, '|'.join(parts)).int}"


def uids(report_id: str, study_uid: str) -> tuple[str, str]:
    """(Series Instance UID, SOP Instance UID) of the report's instance in ``study_uid``."""
    return derived_uid("series", report_id, study_uid), derived_uid("instance", report_id, study_uid)


def _copied(study: dict[str, Any]) -> Dataset:
    wanted = {tag: study[tag] for tag in COPIED if tag in study and study[tag].get("Value")}
    return Dataset.from_json(wanted) if wanted else Dataset()


def build(report: Report) -> bytes:
    """The Part 10 bytes (Explicit VR Little Endian) of the report's Encapsulated PDF instance."""
    series_uid, sop_uid = uids(report.report_id, report.study_uid)
    at = report.created_at.astimezone(UTC)
    date, time = at.strftime("%Y%m%d"), at.strftime("%H%M%S.%f")
    ds = _copied(report.study)
    ds.SOPClassUID = ENCAPSULATED_PDF
    ds.SOPInstanceUID = sop_uid
    ds.StudyInstanceUID = report.study_uid
    ds.SeriesInstanceUID = series_uid
    for keyword in ("PatientName", "PatientID", "PatientBirthDate", "PatientSex"):
        if keyword not in ds:
            setattr(ds, keyword, "")  # Type 2 (PS3.3 C.7.1.1): present, empty when unknown
    for keyword in ("StudyDate", "StudyTime", "ReferringPhysicianName", "StudyID", "AccessionNumber"):
        if keyword not in ds:
            setattr(ds, keyword, "")  # Type 2 (PS3.3 C.7.2.1)
    ds.Modality = "DOC"
    ds.SeriesNumber = SERIES_NUMBER
    ds.SeriesDescription = report.title[:64]
    ds.InstanceNumber = 1
    ds.ConversionType = "SD"
    ds.Manufacturer = MANUFACTURER
    ds.ContentDate = ds.InstanceCreationDate = date
    ds.ContentTime = ds.InstanceCreationTime = time
    ds.AcquisitionDateTime = date + time  # Type 2 in the Encapsulated Document module
    ds.BurnedInAnnotation = "YES"  # a PDF report names the patient in its text
    ds.DocumentTitle = report.title
    code = Dataset()
    code.CodeValue, code.CodingSchemeDesignator, code.CodeMeaning = TITLE_CODE
    ds.ConceptNameCodeSequence = Sequence([code])
    ds.MIMETypeOfEncapsulatedDocument = PDF
    pdf = report.pdf if len(report.pdf) % 2 == 0 else report.pdf + b"\x00"  # PS3.3 C.24.2.1: even
    ds.EncapsulatedDocument = pdf
    ds.EncapsulatedDocumentLength = len(report.pdf)  # the PDF's own length, without the pad
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = UID(ENCAPSULATED_PDF)
    meta.MediaStorageSOPInstanceUID = UID(sop_uid)
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
    meta.ImplementationVersionName = "DICOMWEB_SERVER"
    ds.file_meta = meta
    ds.preamble = bytes(128)
    out = io.BytesIO()
    ds.save_as(out, enforce_file_format=True)
    return out.getvalue()


def pdf_of(ds: Dataset) -> bytes:
    """The PDF inside a read-back instance, without its pad byte (EncapsulatedDocumentLength)."""
    data = bytes(ds.EncapsulatedDocument)
    length = ds.get("EncapsulatedDocumentLength")
    return data[: int(length)] if length is not None else data
