"""Index records built the way ingest builds them: real Part-10 bytes through dicom.describe."""

from __future__ import annotations

import hashlib

from pydicom.uid import generate_uid

from dicomweb_server.db.store import Record
from dicomweb_server.dicom import part10 as dicom
from tests.support.dicomfiles import instance


def record(
    study: str, series: str | None = None, sop: str | None = None, *, seed: int = 0, **attrs: object
) -> Record:
    """One instance's record; its object key is fresh and its SHA-256 that of its bytes."""
    data = instance(study, series or generate_uid(), sop or generate_uid(), seed=seed, **attrs)
    desc = dicom.describe(data, complete=True, budget=1 << 20, threshold=1024)
    assert isinstance(desc, dicom.Description), desc
    fields = vars(desc) | {"checker": None}
    return Record(
        **fields, object_key=f"k/{generate_uid()}", size=len(data), sha256=hashlib.sha256(data).digest()
    )
