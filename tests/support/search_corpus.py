"""A small, deliberate QIDO corpus: 6 studies, 7 series, 21 instances with known attributes.

Every value is chosen so that each matching kind selects a different, known subset.
Tests name the expected result sets with the UID constants below.

| Study | Patient (character set)             | Date     | Time   | Accession | Series (instances)    |
|-------|-------------------------------------|----------|--------|-----------|-----------------------|
| S1    | Doe^Jane                            | 20240115 | 083000 | ACC-001   | SE11 MR 1 (3),        |
|       |                                     |          |        |           | SE12 CT 2 (1)         |
| S2    | Doe^Jane                            | 20240220 | 141500 | AC_1      | SE21 CT 1 (2)         |
| S3    | Müller^Jürgen (ISO_IR 192)          | 20240220 | 091000 | ACX1      | SE31 MR 5 (1)         |
| S4    | Müller^Jürgen (ISO_IR 100)          | 20231231 | 235959 | AC%1      | SE41 CT 1 (1)         |
| S5    | Yamada^Tarou=山田^太郎=やまだ^たろう | 20250601 | 120000 | A+1       | SE51 MR 3 (12)        |
|       | (ISO 2022 IR 6 \\ ISO 2022 IR 87)   |          |        |           |                       |
| S6    | Doe^John                            | -        | -      | A 1       | SE61 US, no number (1)|
"""

from __future__ import annotations

from dataclasses import dataclass, field

from pydicom.dataset import Dataset
from pydicom.uid import CTImageStorage, MRImageStorage, UltrasoundImageStorage

from tests.support.dicomfiles import instance

ROOT = "2.25.4242"
S1, S2, S3, S4, S5, S6 = (f"{ROOT}.{n}" for n in range(1, 7))
SE11, SE12, SE21, SE31, SE41, SE51, SE61 = (
    f"{S1}.1",
    f"{S1}.2",
    f"{S2}.1",
    f"{S3}.1",
    f"{S4}.1",
    f"{S5}.1",
    f"{S6}.1",
)
ALL_STUDIES = frozenset({S1, S2, S3, S4, S5, S6})
ALL_SERIES = frozenset({SE11, SE12, SE21, SE31, SE41, SE51, SE61})

YAMADA = "Yamada^Tarou=山田^太郎=やまだ^たろう"
MUELLER = "Müller^Jürgen"


def _request(requested: str, scheduled: str) -> Dataset:
    item = Dataset()
    item.RequestedProcedureID = requested
    item.ScheduledProcedureStepID = scheduled
    return item


@dataclass(frozen=True)
class Series:
    uid: str
    study: str
    modality: str
    count: int
    sop_class: str
    attrs: dict[str, object] = field(default_factory=dict)

    def sop(self, number: int) -> str:
        return f"{self.uid}.{number}"

    @property
    def sops(self) -> frozenset[str]:
        return frozenset(self.sop(n) for n in range(1, self.count + 1))


STUDY_ATTRS: dict[str, dict[str, object]] = {
    S1: dict(
        patient="Doe^Jane",
        PatientID="PID-DOE",
        PatientBirthDate="19800101",
        PatientSex="F",
        PatientAge="044Y",
        StudyDate="20240115",
        StudyTime="083000",
        AccessionNumber="ACC-001",
        StudyID="SID1",
        ReferringPhysicianName="House^Gregory",
        StudyDescription="Brain MRI",
    ),
    S2: dict(
        patient="Doe^Jane",
        PatientID="PID-DOE",
        PatientBirthDate="19800101",
        PatientSex="F",
        StudyDate="20240220",
        StudyTime="141500",
        AccessionNumber="AC_1",
        StudyID="SID2",
        ReferringPhysicianName="Wilson^James",
        StudyDescription="Chest CT",
    ),
    S3: dict(
        patient=MUELLER,
        SpecificCharacterSet="ISO_IR 192",
        PatientID="PID-MUE",
        PatientBirthDate="19750505",
        PatientSex="M",
        StudyDate="20240220",
        StudyTime="091000",
        AccessionNumber="ACX1",
        StudyID="SID3",
        ReferringPhysicianName="Müller^Anna",
    ),
    S4: dict(
        patient=MUELLER,
        SpecificCharacterSet="ISO_IR 100",
        PatientID="PID-MUE",
        PatientBirthDate="19750505",
        PatientSex="M",
        StudyDate="20231231",
        StudyTime="235959",
        AccessionNumber="AC%1",
        StudyID="SID4",
        ReferringPhysicianName="House^Gregory",
    ),
    S5: dict(
        patient=YAMADA,
        SpecificCharacterSet=["ISO 2022 IR 6", "ISO 2022 IR 87"],
        PatientID="PID-YAM",
        PatientBirthDate="19900303",
        PatientSex="M",
        StudyDate="20250601",
        StudyTime="120000",
        AccessionNumber="A+1",
        StudyID="SID5",
        ReferringPhysicianName="Sato^Hanako=佐藤^花子=さとう^はなこ",
    ),
    S6: dict(
        patient="Doe^John",
        PatientID="PID-DOJ",
        PatientSex="O",
        StudyDate=None,
        StudyTime=None,
        AccessionNumber="A 1",
        StudyID="SID6",
    ),
}

SERIES = [
    Series(
        SE11,
        S1,
        "MR",
        3,
        MRImageStorage,
        dict(
            SeriesNumber=1,
            SeriesDescription="T1 AX",
            Manufacturer="ACME",
            PerformedProcedureStepStartDate="20240115",
            PerformedProcedureStepStartTime="083500",
            RequestAttributesSequence=[_request("RP-100", "SPS-100")],
        ),
    ),
    Series(
        SE12,
        S1,
        "CT",
        1,
        CTImageStorage,
        dict(
            SeriesNumber=2,
            PerformedProcedureStepStartDate="20240115",
            PerformedProcedureStepStartTime="090000",
            RequestAttributesSequence=[_request("RP-101", "SPS-101"), _request("RP-102", "SPS-102")],
        ),
    ),
    Series(
        SE21,
        S2,
        "CT",
        2,
        CTImageStorage,
        dict(
            SeriesNumber=1,
            PerformedProcedureStepStartDate="20240220",
            PerformedProcedureStepStartTime="141600",
        ),
    ),
    Series(
        SE31,
        S3,
        "MR",
        1,
        MRImageStorage,
        dict(
            SeriesNumber=5,
            PerformedProcedureStepStartDate="20240220",
            PerformedProcedureStepStartTime="091500",
            RequestAttributesSequence=[_request("RP-300", "SPS-300")],
        ),
    ),
    Series(
        SE41,
        S4,
        "CT",
        1,
        CTImageStorage,
        dict(
            SeriesNumber=1,
            PerformedProcedureStepStartDate="20231231",
            PerformedProcedureStepStartTime="235959",
        ),
    ),
    Series(
        SE51,
        S5,
        "MR",
        12,
        MRImageStorage,
        dict(
            SeriesNumber=3,
            PerformedProcedureStepStartDate="20250601",
            PerformedProcedureStepStartTime="120100",
        ),
    ),
    Series(SE61, S6, "US", 1, UltrasoundImageStorage, dict(SeriesNumber=None)),
]
BY_UID = {s.uid: s for s in SERIES}
ALL_INSTANCES = frozenset().union(*(s.sops for s in SERIES))


def sops(*series: str) -> frozenset[str]:
    """Every SOP Instance UID of the given series."""
    return frozenset().union(*(BY_UID[s].sops for s in series))


def sop(series: str, number: int) -> str:
    return BY_UID[series].sop(number)


def files() -> list[bytes]:
    """The corpus as Part-10 files (instance n has InstanceNumber n, except in SE61 which has none)."""
    out = []
    for s in SERIES:
        study = dict(STUDY_ATTRS[s.study])
        patient = str(study.pop("patient"))
        for n in range(1, s.count + 1):
            number: object = None if s.uid == SE61 else n
            out.append(
                instance(
                    s.study,
                    s.uid,
                    s.sop(n),
                    size=8,
                    seed=n,
                    patient=patient,
                    modality=s.modality,
                    SOPClassUID=s.sop_class,
                    InstanceNumber=number,
                    **study,
                    **s.attrs,
                )
            )
    return out
