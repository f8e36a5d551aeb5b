"""The DICOMweb resources: the IE levels, the study/series/instance triple and its PS3.18 path.

The URL layout of PS3.18 §10.4.1 and §10.6.1 (``/studies/{study}/series/{series}/instances/{sop}``
under the service root) is written here once: route templates, Retrieve URLs (0008,1190), the
Location of a STOW response and the BulkDataURIs stored at ingest all come from ``path``.  Only
the path: the public base URL (scheme, host, tenant prefix) belongs to the request and is put in
front by the HTTP edge.  Also here, because they are facts of the same resources: the attributes
every QIDO-RS result carries at each level (PS3.18 Tables 10.6.3-3, -4 and -5).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from enum import IntEnum

ROOT = "/dicomweb"  # the service root: every DICOMweb path starts here


class Level(IntEnum):
    """The information entity a resource names (PS3.3 Composite IODs: study ⊃ series ⊃ instance)."""

    STUDY = 1
    SERIES = 2
    INSTANCE = 3


# PS3.18 §10.4.1: the path segment of each level's resource collection.
SEGMENTS: Mapping[Level, str] = {Level.STUDY: "studies", Level.SERIES: "series", Level.INSTANCE: "instances"}
# The route template parameter of each level (Starlette path syntax, read back by ``Scope.of``).
PARAMETERS: Mapping[Level, str] = {Level.STUDY: "study", Level.SERIES: "series", Level.INSTANCE: "instance"}

_UID = re.compile(r"(0|[1-9][0-9]*)(\.(0|[1-9][0-9]*))*")


def is_valid_uid(value: object) -> bool:
    """PS3.5 §9.1: digits and dots, no leading zeros in a component, at most 64 characters."""
    return isinstance(value, str) and 0 < len(value) <= 64 and _UID.fullmatch(value) is not None


@dataclass(frozen=True)
class Scope:
    """The resource a request names: a study, a series of it, or an instance of that."""

    study: str
    series: str | None = None
    sop: str | None = None

    @property
    def level(self) -> Level:
        return Level.INSTANCE if self.sop is not None else Level.SERIES if self.series else Level.STUDY

    @property
    def path(self) -> str:
        """``/dicomweb/studies/{study}[/series/{series}[/instances/{sop}]]``."""
        return path(self.study, self.series, self.sop)

    @classmethod
    def of(cls, params: Mapping[str, str]) -> Scope:
        """The scope named by a route's path parameters (those of ``template``)."""
        return cls(params[PARAMETERS[Level.STUDY]], params.get("series"), params.get("instance"))


def path(study: str, series: str | None = None, sop: str | None = None) -> str:
    """The PS3.18 path of a study, series or instance (its Retrieve URL without the base URL)."""
    out = f"{ROOT}/{SEGMENTS[Level.STUDY]}/{study}"
    if series is not None:
        out += f"/{SEGMENTS[Level.SERIES]}/{series}"
        if sop is not None:
            out += f"/{SEGMENTS[Level.INSTANCE]}/{sop}"
    return out


def bulkdata_base(study_uid: str, series_uid: str, sop_uid: str) -> str:
    """Where an instance's BulkDataURIs point (served by WADO-RS bulkdata retrieve): a path."""
    return path(study_uid, series_uid, sop_uid) + "/bulkdata"


def template(level: Level) -> str:
    """The route template of a resource at ``level``: ``path`` with parameters for the UIDs."""
    names = [f"{{{PARAMETERS[lv]}}}" for lv in Level if lv <= level]
    return path(*names)


def collection(level: Level, scope: Level | None = None) -> str:
    """The route template of a search collection (PS3.18 §10.6.1): all ``level`` resources,
    or those of the study (``scope`` STUDY) or series (``scope`` SERIES) the path names."""
    head = ROOT if scope is None else template(scope)
    return f"{head}/{SEGMENTS[level]}"


# -- Return attributes of QIDO-RS (PS3.18 §10.6.3.3) ------------------------------------------
# Tables 10.6.3-3/-4/-5: attributes every result carries (tag → VR; empty when unknown).
STUDY_RETURN: Mapping[str, str] = {
    "00080020": "DA",  # Study Date
    "00080030": "TM",  # Study Time
    "00080050": "SH",  # Accession Number
    "00080056": "CS",  # Instance Availability
    "00080061": "CS",  # Modalities in Study
    "00080090": "PN",  # Referring Physician's Name
    "00081190": "UR",  # Retrieve URL
    "00100010": "PN",  # Patient's Name
    "00100020": "LO",  # Patient ID
    "00100030": "DA",  # Patient's Birth Date
    "00100040": "CS",  # Patient's Sex
    "0020000D": "UI",  # Study Instance UID
    "00200010": "SH",  # Study ID
    "00201206": "IS",  # Number of Study Related Series
    "00201208": "IS",  # Number of Study Related Instances
}
SERIES_RETURN: Mapping[str, str] = {
    "00080060": "CS",  # Modality
    "00081190": "UR",  # Retrieve URL
    "0020000E": "UI",  # Series Instance UID
    "00200011": "IS",  # Series Number
    "00201209": "IS",  # Number of Series Related Instances
}
INSTANCE_RETURN: Mapping[str, str] = {
    "00080016": "UI",  # SOP Class UID
    "00080018": "UI",  # SOP Instance UID
    "00080056": "CS",  # Instance Availability
    "00080201": "SH",  # Timezone Offset From UTC (conditional)
    "00081190": "UR",  # Retrieve URL
    "00200013": "IS",  # Instance Number
    "00280010": "US",  # Rows (conditional)
    "00280011": "US",  # Columns (conditional)
    "00280100": "US",  # Bits Allocated (conditional)
    "00280008": "IS",  # Number of Frames (conditional)
}
SPECIFIC_CHARACTER_SET = "00080005"
# Returned when the index holds a value, absent otherwise (the tables' conditional rows and the
# series attributes a modality worklist integration asks for).
CONDITIONAL = frozenset(
    {
        SPECIFIC_CHARACTER_SET,
        "00080201",
        "0008103E",
        "00400244",
        "00400245",
        "00400275",
        "00280010",
        "00280011",
        "00280100",
        "00280008",
    }
)
# What an instance result reads from the stored metadata: Table 10.6.3-5 and the character set.
INSTANCE_METADATA = frozenset(INSTANCE_RETURN) | {SPECIFIC_CHARACTER_SET}
