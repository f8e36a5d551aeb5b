"""Real DICOM bytes for tests: generated Part-10 files and multipart bodies."""

from __future__ import annotations

import io
import os
import struct
import warnings
from collections.abc import Iterable

import numpy as np
import pydicom
import pydicom.encaps
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import PYDICOM_IMPLEMENTATION_UID, CTImageStorage, ExplicitVRLittleEndian, generate_uid

BOUNDARY = "d1c0m-b0undary"


def instance(
    study: str | None = None,
    series: str | None = None,
    sop: str | None = None,
    *,
    size: int = 64,
    seed: int = 0,
    patient: str = "Doe^Jane",
    modality: str = "CT",
    preamble: bytes = b"\0" * 128,
    **attrs: object,
) -> bytes:
    """A CT Part-10 file, ``size`` x ``size`` 16-bit pixels; attributes set to None are left out."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # tests build invalid data on purpose
        return _instance(study, series, sop, size, seed, patient, modality, preamble, attrs)


def _instance(
    study: str | None,
    series: str | None,
    sop: str | None,
    size: int,
    seed: int,
    patient: str,
    modality: str,
    preamble: bytes,
    attrs: dict[str, object],
) -> bytes:
    ds = Dataset()
    ds.SOPClassUID = CTImageStorage
    ds.SOPInstanceUID = sop or generate_uid()
    ds.StudyInstanceUID = study or generate_uid()
    ds.SeriesInstanceUID = series or generate_uid()
    ds.PatientName = patient
    ds.PatientID = "PID-1"
    ds.StudyDate = "20260102"
    ds.StudyTime = "101112"
    ds.AccessionNumber = "ACC1"
    ds.Modality = modality
    ds.SeriesNumber = 1
    ds.InstanceNumber = 1
    ds.Rows = ds.Columns = size
    ds.BitsAllocated = 16
    ds.BitsStored = 16
    ds.HighBit = 15
    ds.PixelRepresentation = 0
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    for key, value in attrs.items():
        if value is None:
            if key in ds:
                delattr(ds, key)
        else:
            setattr(ds, key, value)
    rng = np.random.default_rng(seed)
    ds.PixelData = rng.integers(0, 4096, size * size, dtype=np.uint16).tobytes()
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = ds.get("SOPClassUID", CTImageStorage)
    meta.MediaStorageSOPInstanceUID = ds.get("SOPInstanceUID", generate_uid())
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
    ds.file_meta = meta
    ds.preamble = preamble
    out = io.BytesIO()
    ds.save_as(out, enforce_file_format=False)
    return out.getvalue()


def nested(study: str, depth: int, *, undefined: bool = True, sop: str | None = None) -> bytes:
    """A CT instance whose ContentSequence nests ``depth`` levels deep (written byte by byte:
    pydicom's own writer recurses too)."""
    leaf = struct.pack("<HH2sH", 0x0008, 0x0100, b"SH", 2) + b"X "  # Code Value
    value = leaf
    for _ in range(depth):
        if undefined:
            item = (
                struct.pack("<HHI", 0xFFFE, 0xE000, 0xFFFFFFFF)
                + value
                + struct.pack("<HHI", 0xFFFE, 0xE00D, 0)
            )
            body = item + struct.pack("<HHI", 0xFFFE, 0xE0DD, 0)
            value = struct.pack("<HH2sHI", 0x0040, 0xA730, b"SQ", 0, 0xFFFFFFFF) + body
        else:
            item = struct.pack("<HHI", 0xFFFE, 0xE000, len(value)) + value
            value = struct.pack("<HH2sHI", 0x0040, 0xA730, b"SQ", 0, len(item)) + item
    data = instance(study, sop=sop)
    at = data.rfind(b"\xe0\x7f\x10\x00")
    return data[:at] + value + data[at:]


def multipart(
    parts: Iterable[bytes], boundary: str = BOUNDARY, part_type: str | None = "application/dicom"
) -> bytes:
    body = bytearray()
    for part in parts:
        body += f"--{boundary}\r\n".encode()
        if part_type:
            body += f"Content-Type: {part_type}\r\n".encode()
        body += b"\r\n" + part + b"\r\n"
    body += f"--{boundary}--\r\n".encode()
    return bytes(body)


def content_type(boundary: str = BOUNDARY, quoted: bool = True, extra: str = "") -> str:
    b = f'"{boundary}"' if quoted else boundary
    return f'multipart/related; type="application/dicom"; boundary={b}{extra}'


def random_bytes(n: int) -> bytes:
    return os.urandom(n)


def multiframe(
    study: str,
    series: str,
    *,
    frames: int,
    size: int = 32,
    compress: str | None = None,
    offset_table: bool = False,
) -> bytes:
    """A multi-frame 16-bit MONOCHROME2 instance whose frame *k* is filled with k (and a gradient),
    optionally compressed with pydicom's own encoders (e.g. RLE Lossless)."""
    ds = pydicom.dcmread(io.BytesIO(instance(study, series, size=size)))
    ramp = np.arange(size * size, dtype=np.uint16).reshape(size, size)
    pixels = np.stack([ramp + 100 * k for k in range(frames)])
    ds.NumberOfFrames = frames
    ds.PixelData = pixels.tobytes()
    if compress:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            ds.compress(compress, encoding_plugin="pydicom", generate_instance_uid=False)
        if not offset_table:  # many encoders leave the Basic Offset Table empty
            ds.PixelData = pydicom.encaps.encapsulate(
                list(pydicom.encaps.generate_frames(ds.PixelData, number_of_frames=frames)), has_bot=False
            )
    out = io.BytesIO()
    ds.save_as(out, enforce_file_format=True)
    return out.getvalue()


def split_multipart(body: bytes, content_type_header: str) -> list[tuple[dict[str, str], bytes]]:
    """A test-side multipart/related reader, independent of the server's: (headers, body) per part."""
    boundary = next(
        p.split("=", 1)[1].strip().strip('"')
        for p in content_type_header.split(";")
        if p.strip().startswith("boundary=")
    )
    delimiter = b"--" + boundary.encode()
    assert body.rstrip(b"\r\n").endswith(delimiter + b"--"), "no closing delimiter"
    chunks = body.split(b"\r\n" + delimiter)
    first = chunks[0]
    assert first.startswith(delimiter + b"\r\n")
    chunks[0] = first[len(delimiter) :]
    parts = []
    for chunk in chunks:
        if chunk.startswith(b"--"):
            break
        head, _, data = chunk[2:].partition(b"\r\n\r\n")
        headers = {}
        for line in head.decode().split("\r\n"):
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
        parts.append((headers, data))
    return parts
