"""The report's Encapsulated PDF instance (dicom/encapsulated.py), read back with pydicom."""

from __future__ import annotations

import io
from datetime import UTC, datetime

import pydicom
from pydicom.uid import ExplicitVRLittleEndian

from dicomweb_server.dicom import encapsulated

STUDY = "1.2.826.0.1.3680043.8.498.70"
ATTRS = {
    "00100010": {"vr": "PN", "Value": [{"Alphabetic": "Doe^Jane"}]},
    "00100020": {"vr": "LO", "Value": ["PID-7"]},
    "00100030": {"vr": "DA", "Value": ["19700101"]},
    "00100040": {"vr": "CS", "Value": ["F"]},
    "00080020": {"vr": "DA", "Value": ["20261204"]},
    "00080030": {"vr": "TM", "Value": ["101500"]},
    "00080050": {"vr": "SH", "Value": ["ACC-1"]},
    "00080090": {"vr": "PN", "Value": [{"Alphabetic": "House^Gregory"}]},
    "00200010": {"vr": "SH", "Value": ["S1"]},
    "00080060": {"vr": "CS", "Value": ["MR"]},  # not a study attribute: not copied
}
AT = datetime(2026, 12, 4, 10, 30, 5, 123456, tzinfo=UTC)


def report(pdf: bytes, report_id: str = "5b0f8f0e-3f0e-4c3a-9b7e-1a2b3c4d5e6f") -> encapsulated.Report:
    return encapsulated.Report(report_id, STUDY, ATTRS, pdf, "Brain MRI analysis report", AT)


def test_reads_back_as_an_encapsulated_pdf_of_the_study() -> None:
    pdf = b"%PDF-1.4\n odd length!\n%%EOF"
    assert len(pdf) % 2 == 1
    ds = pydicom.dcmread(io.BytesIO(encapsulated.build(report(pdf))))
    assert ds.file_meta.TransferSyntaxUID == ExplicitVRLittleEndian
    assert ds.SOPClassUID == ds.file_meta.MediaStorageSOPClassUID == "1.2.840.10008.5.1.4.1.1.104.1"
    assert ds.SOPInstanceUID == ds.file_meta.MediaStorageSOPInstanceUID
    assert ds.Modality == "DOC" and ds.ConversionType == "SD" and ds.BurnedInAnnotation == "YES"
    assert ds.MIMETypeOfEncapsulatedDocument == "application/pdf"
    assert len(ds.EncapsulatedDocument) % 2 == 0
    assert encapsulated.pdf_of(ds) == pdf
    assert str(ds.PatientName) == "Doe^Jane" and ds.PatientID == "PID-7"
    assert ds.PatientBirthDate == "19700101" and ds.PatientSex == "F"
    assert ds.StudyInstanceUID == STUDY and ds.StudyDate == "20261204" and ds.StudyTime == "101500"
    assert ds.AccessionNumber == "ACC-1" and ds.StudyID == "S1"
    assert str(ds.ReferringPhysicianName) == "House^Gregory"
    assert ds.DocumentTitle == "Brain MRI analysis report"
    assert ds.ConceptNameCodeSequence[0].CodeValue == encapsulated.TITLE_CODE[0]
    assert ds.ContentDate == "20261204" and ds.ContentTime.startswith("103005")
    assert ds.Manufacturer and ds.SeriesNumber and ds.InstanceNumber == 1
    series, sop = encapsulated.uids("5b0f8f0e-3f0e-4c3a-9b7e-1a2b3c4d5e6f", STUDY)
    assert (ds.SeriesInstanceUID, ds.SOPInstanceUID) == (series, sop)
    assert sop.startswith("2.25.") and len(sop) <= 64 and series != sop


def test_same_inputs_same_bytes_other_report_other_uids() -> None:
    pdf = b"%PDF-1.7 even\n"
    first, again = encapsulated.build(report(pdf)), encapsulated.build(report(pdf))
    assert first == again
    other = pydicom.dcmread(
        io.BytesIO(encapsulated.build(report(pdf, "6c1f9f1e-3f0e-4c3a-9b7e-1a2b3c4d5e6f")))
    )
    assert other.SOPInstanceUID != pydicom.dcmread(io.BytesIO(first)).SOPInstanceUID


def test_unknown_patient_attributes_are_present_and_empty() -> None:
    ds = pydicom.dcmread(
        io.BytesIO(encapsulated.build(encapsulated.Report("r", STUDY, {}, b"%PDF", "T", AT)))
    )
    assert ds.PatientName == "" and ds.PatientID == "" and ds.AccessionNumber == ""
    assert "Modality" in ds and ds.Modality == "DOC"
