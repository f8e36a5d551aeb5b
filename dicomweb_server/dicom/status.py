"""Status codes of the standard, as tables with a section per kind, like ``pynetdicom/status.py``.

A per-instance problem is data, never an exception: an intake records the failure with one of
these codes, and each protocol maps it to its own wire form.  STOW-RS puts it in the Failure
Reason (0008,1197) of a FailedSOPSequence item (PS3.18 §10.5.3, Table I.2-2); C-STORE puts the
same number in the Status (0000,0900) of its response (PS3.4 Table B.2-1).  The two tables share
their codes on purpose (PS3.18 borrows them from PS3.4 and PS3.7 Annex C), so they sit side by
side here, and CONFORMANCE.md lists which condition gives which code.
"""

from __future__ import annotations

from collections.abc import Mapping

# -- Failure reasons of the Store Instances Response (PS3.18 Table I.2-2) -----------------------
# Also used for a conflicting duplicate: the PS3.7 Annex C general status 0x0111.
REFUSED_OUT_OF_RESOURCES = 0xA700
DATASET_DOES_NOT_MATCH_SOP_CLASS = 0xA900
CANNOT_UNDERSTAND = 0xC000
TRANSFER_SYNTAX_NOT_SUPPORTED = 0xC122
PROCESSING_FAILURE = 0x0110
DUPLICATE_SOP_INSTANCE = 0x0111

FAILURE_REASONS: Mapping[int, str] = {
    REFUSED_OUT_OF_RESOURCES: "Refused: out of resources",
    DATASET_DOES_NOT_MATCH_SOP_CLASS: "Data set does not match SOP Class",
    CANNOT_UNDERSTAND: "Cannot understand",
    TRANSFER_SYNTAX_NOT_SUPPORTED: "Transfer Syntax not supported",
    PROCESSING_FAILURE: "Processing failure",
    DUPLICATE_SOP_INSTANCE: "Duplicate SOP Instance",
}

# -- C-STORE response statuses (PS3.4 Table B.2-1, PS3.7 Annex C) -------------------------------
# The C-STORE status of each failure reason is the same code (PS3.4 gives ranges: A7xx, A9xx,
# Cxxx; we send the first of each).  Successes and warnings have no STOW failure reason.
SUCCESS = 0x0000
COERCION_OF_DATA_ELEMENTS = 0xB000
DATASET_DOES_NOT_MATCH_SOP_CLASS_WARNING = 0xB007
ELEMENTS_DISCARDED = 0xB006
SOP_CLASS_NOT_SUPPORTED = 0x0122

C_STORE_STATUSES: Mapping[int, tuple[str, str]] = {
    SUCCESS: ("Success", "Success"),
    COERCION_OF_DATA_ELEMENTS: ("Warning", "Coercion of data elements"),
    DATASET_DOES_NOT_MATCH_SOP_CLASS_WARNING: ("Warning", "Data set does not match SOP Class"),
    ELEMENTS_DISCARDED: ("Warning", "Elements discarded"),
    REFUSED_OUT_OF_RESOURCES: ("Failure", "Refused: out of resources"),
    DATASET_DOES_NOT_MATCH_SOP_CLASS: ("Failure", "Error: data set does not match SOP Class"),
    CANNOT_UNDERSTAND: ("Failure", "Error: cannot understand"),
    SOP_CLASS_NOT_SUPPORTED: ("Failure", "Refused: SOP Class not supported"),
    PROCESSING_FAILURE: ("Failure", "Processing failure"),
    DUPLICATE_SOP_INSTANCE: ("Failure", "Duplicate SOP Instance"),
    TRANSFER_SYNTAX_NOT_SUPPORTED: ("Failure", "Error: cannot understand (Transfer Syntax not supported)"),
}


def c_store_status(reason: int) -> int:
    """The C-STORE Status (0000,0900) for a STOW failure reason: the same code, by design."""
    return reason if reason in C_STORE_STATUSES else PROCESSING_FAILURE
