"""Where an instance came from: the channel and the party that sent it.

Every channel (STOW-RS today; C-STORE, presigned upload and SFTP next) opens its ingest session
with one of these, as Orthanc's ``DicomInstanceOrigin`` travels with each instance into
``ServerContext::Store`` (DESIGN.md, "Models worth copying" 2).  It is a value: frozen, compared by
content, cheap to keep on every session and, later, on every ``instance.stored`` event.
"""

from __future__ import annotations

from dataclasses import dataclass

# The channels (the ``channel`` field); more join as their adapters are written.
STOW_RS = "stow-rs"  # PS3.18 §10.5 Store Transaction
C_STORE = "c-store"  # PS3.4 Annex B Storage Service Class (DIMSE)
UPLOAD = "upload"  # an object a client put in the store itself (presigned upload)
REPORT = "report"  # our own analysis report, stored back into its study (workflow/delivery.py)


@dataclass(frozen=True, slots=True)
class Origin:
    """The channel and the sender: an authenticated client id over HTTP, the calling and called
    Application Entity Titles over DICOM networking (PS3.8 §7.1.1.4), and the peer's address."""

    channel: str
    client_id: str | None = None
    calling_ae: str | None = None
    called_ae: str | None = None
    peer: str | None = None  # "host:port" of the remote end, when the transport knows it
