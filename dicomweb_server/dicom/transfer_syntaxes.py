"""The transfer syntaxes this server knows, as one table (PS3.5 §10 and Annex A, PS3.18 §8.7.3).

Every fact about a transfer syntax that some module needs lives in its row here: its name,
whether its Pixel Data is native (a plain value) or encapsulated, its byte order, whether
the data set is deflated, whether pydicom has a decoder for it (PS3.5 Annex A.4; which of
those decoders are installed is asked at run time, see ``transcode.decodable_syntaxes``),
and the media type of one of its frames in WADO-RS (PS3.18 Table 8.7.3-2).  The sets the
other modules use are derived from the table, never written out a second time.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

IMPLICIT_VR_LITTLE_ENDIAN = "1.2.840.10008.1.2"
EXPLICIT_VR_LITTLE_ENDIAN = "1.2.840.10008.1.2.1"  # the default of PS3.18 §8.7.3.5.2
DEFLATED = "1.2.840.10008.1.2.1.99"
EXPLICIT_VR_BIG_ENDIAN = "1.2.840.10008.1.2.2"  # retired, still found in archives


@dataclass(frozen=True)
class TransferSyntax:
    """One row of the table."""

    uid: str
    name: str
    native: bool = False  # Pixel Data is one value, not encapsulated fragments
    big_endian: bool = False
    deflated: bool = False
    decoder: bool = False  # pydicom has a decoder for it (compressed syntaxes only)
    frame_type: str | None = None  # PS3.18 Table 8.7.3-2: the media type of one frame


_ROWS = (
    # -- Native (PS3.5 §10.1, §A.1-A.3) ---------------------------------------------------
    TransferSyntax(IMPLICIT_VR_LITTLE_ENDIAN, "Implicit VR Little Endian", native=True),
    TransferSyntax(EXPLICIT_VR_LITTLE_ENDIAN, "Explicit VR Little Endian", native=True),
    TransferSyntax(DEFLATED, "Deflated Explicit VR Little Endian", native=True, deflated=True),
    TransferSyntax(EXPLICIT_VR_BIG_ENDIAN, "Explicit VR Big Endian", native=True, big_endian=True),
    # -- JPEG (PS3.5 §A.4.1, §A.4.3) --------------------------------------------------------
    TransferSyntax(
        "1.2.840.10008.1.2.4.50", "JPEG Baseline (Process 1)", decoder=True, frame_type="image/jpeg"
    ),
    TransferSyntax(
        "1.2.840.10008.1.2.4.51", "JPEG Extended (Process 2 & 4)", decoder=True, frame_type="image/jpeg"
    ),
    TransferSyntax(
        "1.2.840.10008.1.2.4.57",
        "JPEG Lossless, Non-Hierarchical (Process 14)",
        decoder=True,
        frame_type="image/jpeg",
    ),
    TransferSyntax(
        "1.2.840.10008.1.2.4.70",
        "JPEG Lossless, Non-Hierarchical, First-Order Prediction (Process 14 SV1)",
        decoder=True,
        frame_type="image/jpeg",
    ),
    # -- JPEG-LS (PS3.5 §A.4.3) -------------------------------------------------------------
    TransferSyntax("1.2.840.10008.1.2.4.80", "JPEG-LS Lossless", decoder=True, frame_type="image/jls"),
    TransferSyntax(
        "1.2.840.10008.1.2.4.81", "JPEG-LS Lossy (Near-Lossless)", decoder=True, frame_type="image/jls"
    ),
    # -- JPEG 2000 (PS3.5 §A.4.4, §A.4.5) and High-Throughput JPEG 2000 (§A.4.11) -----------
    TransferSyntax(
        "1.2.840.10008.1.2.4.90", "JPEG 2000 (Lossless Only)", decoder=True, frame_type="image/jp2"
    ),
    TransferSyntax("1.2.840.10008.1.2.4.91", "JPEG 2000", decoder=True, frame_type="image/jp2"),
    TransferSyntax(
        "1.2.840.10008.1.2.4.92", "JPEG 2000 Part 2 Multi-component (Lossless Only)", frame_type="image/jpx"
    ),
    TransferSyntax("1.2.840.10008.1.2.4.93", "JPEG 2000 Part 2 Multi-component", frame_type="image/jpx"),
    TransferSyntax(
        "1.2.840.10008.1.2.4.201",
        "High-Throughput JPEG 2000 (Lossless Only)",
        decoder=True,
        frame_type="image/jphc",
    ),
    TransferSyntax(
        "1.2.840.10008.1.2.4.202",
        "High-Throughput JPEG 2000 with RPCL Options (Lossless Only)",
        decoder=True,
        frame_type="image/jphc",
    ),
    TransferSyntax(
        "1.2.840.10008.1.2.4.203", "High-Throughput JPEG 2000", decoder=True, frame_type="image/jphc"
    ),
    # -- RLE (PS3.5 §A.4.2) -----------------------------------------------------------------
    TransferSyntax("1.2.840.10008.1.2.5", "RLE Lossless", decoder=True, frame_type="image/dicom-rle"),
)
TRANSFER_SYNTAXES: Mapping[str, TransferSyntax] = {row.uid: row for row in _ROWS}

NATIVE = frozenset(t.uid for t in _ROWS if t.native)
# Native, little endian, not deflated: a frame is a byte range of the object as stored.
PLAIN_LITTLE_ENDIAN = frozenset(t.uid for t in _ROWS if t.native and not t.big_endian and not t.deflated)
# Compressed syntaxes that a pydicom decoder exists for, with their names.
COMPRESSED: Mapping[str, str] = {t.uid: t.name for t in _ROWS if t.decoder}
# PS3.18 Table 8.7.3-2: the media type of a frame in each compressed (encapsulated) syntax.
FRAME_MEDIA_TYPES: Mapping[str, str] = {t.uid: t.frame_type for t in _ROWS if t.frame_type is not None}
