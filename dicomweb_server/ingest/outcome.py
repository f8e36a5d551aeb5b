"""What an ingest session did with each instance: a value each channel maps to its own status.

The session never answers a protocol: STOW-RS turns an ``Outcome`` into a Store Instances
Response and 200/202/409 (PS3.18 §10.5.3), C-STORE will turn the same value into a PS3.4 status
(Annex B.2.3), as Orthanc's STOW plugin and its C-STORE handler read one ``StoreResult``
(DESIGN.md, "Models worth copying" 2).  A failed instance is a ``part10.Failure`` (its PS3.18
FailureReason, which is also the PS3.4 status code, and an Error Comment).
"""

from __future__ import annotations

from dataclasses import dataclass

from dicomweb_server.dicom.part10 import Failure

__all__ = ["Failure", "Outcome", "Stored"]


@dataclass(frozen=True, slots=True)
class Stored:
    """One instance that is now in the index (new, identical to one already stored, or replacing
    one under the overwrite policy): what a response names of it, and its size in bytes."""

    sop_class_uid: str
    sop_uid: str
    study_uid: str
    series_uid: str
    size: int


@dataclass(frozen=True, slots=True)
class Outcome:
    """The result of one session, in the order the instances arrived: failures found while a part
    streamed come first, then those the index found (duplicates, a series in another study)."""

    stored: tuple[Stored, ...] = ()
    failed: tuple[Failure, ...] = ()

    @property
    def studies(self) -> frozenset[str]:
        """The studies the stored instances belong to."""
        return frozenset(s.study_uid for s in self.stored)
