"""The WADO-RS retrieve corpus: what every target stores before the retrieve workloads run.

- a whole-study retrieve study: one series of ``retrieve_instances`` 512x512 CT instances (0.5 MB);
- a metadata study: one series of 100 such instances (its first instance also serves single frames);
- a multi-frame study: the same 256x256 12-bit cine of ``MF_FRAMES`` frames stored three ways, native
  (Explicit VR Little Endian), RLE Lossless and JPEG 2000 Lossless (pydicom 3 encoders; an encoding
  whose plugin is missing is left out and the report says so);
- the big study (its own session): ``count`` multi-frame instances of 128 MiB, streamed to the target
  from one header template, never held in memory.

Everything is generated once with fixed seeds into the cache directory, like bench/corpus.py.
"""

from __future__ import annotations

import io
import json
import struct
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import (
    PYDICOM_IMPLEMENTATION_UID,
    UID,
    ExplicitVRLittleEndian,
    JPEG2000Lossless,
    RLELossless,
)

from bench.corpus.ct import Corpus, CorpusSpec, Series, load_corpus, phantom, uid
from bench.corpus.multipart import BOUNDARY

MF_SOP_CLASS = "1.2.840.10008.5.1.4.1.1.7.3"  # Multi-frame Grayscale Word Secondary Capture Image Storage
MF_FRAMES, MF_ROWS, MF_COLS = 120, 256, 256
MF_FORMAT = 1  # bump when the multi-frame files change
BIG_FRAMES, BIG_ROWS, BIG_COLS = 256, 512, 512  # 128 MiB of 16-bit pixels per big instance
BIG_INSTANCE_BYTES = BIG_FRAMES * BIG_ROWS * BIG_COLS * 2
SEED = 20260

ENCODINGS = (  # (key, transfer syntax, title)
    ("native", ExplicitVRLittleEndian, "native (Explicit VR LE)"),
    ("rle", RLELossless, "RLE Lossless"),
    ("j2k", JPEG2000Lossless, "JPEG 2000 Lossless"),
)


@dataclass(frozen=True)
class FrameInstance:
    """An instance whose frame ``frame`` the frames workload asks for."""

    key: str  # "ct", "mf-native", "mf-rle", "mf-j2k"
    title: str
    study_uid: str
    series_uid: str
    sop_uid: str
    frame: int
    frames: int
    transfer_syntax: str
    native_frame_bytes: int  # size of the frame decoded (rows x cols x 2)
    stored_frame_bytes: int  # size of the frame as stored (the encapsulated fragment for RLE/J2K)
    data: bytes  # the Part-10 file

    def path(self) -> str:
        return (
            f"/studies/{self.study_uid}/series/{self.series_uid}/instances/{self.sop_uid}/frames/{self.frame}"
        )


@dataclass(frozen=True)
class RetrieveCorpus:
    study: Corpus  # whole-study retrieve
    meta: Corpus  # metadata (100 instances)
    frames: tuple[FrameInstance, ...]
    missing: tuple[str, ...]  # encodings that could not be generated here, with the reason

    @property
    def study_series(self) -> Series:
        return self.study.measured[0]

    @property
    def meta_series(self) -> Series:
        return self.meta.measured[0]

    @property
    def uploads(self) -> list[tuple[str, list[bytes]]]:
        """(label, instances) per STOW request: one series per request, the multi-frame ones alone."""
        mf = [f for f in self.frames if f.key.startswith("mf-")]
        return [
            ("retrieve study", list(self.study_series.instances)),
            ("metadata study", list(self.meta_series.instances)),
            *((f.key, [f.data]) for f in mf),
        ]

    @property
    def instance_count(self) -> int:
        return sum(len(instances) for _, instances in self.uploads)


def study_spec(instances: int) -> CorpusSpec:
    return CorpusSpec("wado-study", 512, 512, 1, instances, 0, SEED)


META_SPEC = CorpusSpec("wado-meta", 512, 512, 1, 100, 0, SEED + 1)


def _mf_dataset(frames: int, rows: int, cols: int, label: str, index: int) -> Dataset:
    """A Multi-frame Grayscale Word SC header (no Pixel Data), in study/series ``label``."""
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = UID(MF_SOP_CLASS)
    meta.MediaStorageSOPInstanceUID = UID(uid(SEED, label, "sop", index))
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
    ds = Dataset()
    ds.file_meta = meta
    ds.preamble = b"\0" * 128
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.ImageType = ["DERIVED", "SECONDARY"]
    ds.SOPClassUID = meta.MediaStorageSOPClassUID
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.StudyDate = ds.SeriesDate = ds.ContentDate = "20250102"
    ds.StudyTime = ds.SeriesTime = ds.ContentTime = "101500"
    ds.AccessionNumber = f"WADO{index:04d}"
    ds.Modality = "OT"
    ds.ConversionType = "WSD"
    ds.Manufacturer = "BenchCorp"
    ds.ReferringPhysicianName = "Referrer^Bench"
    ds.StudyDescription = f"Bench {label}"
    ds.SeriesDescription = f"{label} {index}"
    ds.PatientName = f"Bench^{label.replace('-', '')}"
    ds.PatientID = f"BENCH-{label}"
    ds.PatientBirthDate = "19700101"
    ds.PatientSex = "O"
    ds.StudyInstanceUID = uid(SEED, label, "study")
    ds.SeriesInstanceUID = uid(SEED, label, "series", index)
    ds.StudyID = "1"
    ds.SeriesNumber = index + 1
    ds.InstanceNumber = 1
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.NumberOfFrames = frames
    ds.FrameIncrementPointer = 0x00181063  # Frame Time
    ds.FrameTime = "33.3"
    ds.Rows, ds.Columns = rows, cols
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
    return ds


def _cine(rng: np.random.Generator) -> np.ndarray:
    """MF_FRAMES frames of a moving 12-bit phantom with noise (compresses like a real image, roughly)."""
    base = np.clip(phantom(MF_ROWS, MF_COLS) * 1.5, 0, 4095)
    frames = np.empty((MF_FRAMES, MF_ROWS, MF_COLS), dtype="<u2")
    for k in range(MF_FRAMES):
        noise = rng.normal(0.0, 10.0, size=base.shape)
        frames[k] = np.clip(np.roll(base, k, axis=1) + noise, 0, 4095).astype("<u2")
    return frames


def _encapsulated_fragment_size(data: bytes, frame: int) -> int:
    """Size of frame ``frame`` (1-based) as stored: one fragment per frame, as pydicom writes them."""
    from pydicom import dcmread
    from pydicom.encaps import generate_frames

    ds = dcmread(io.BytesIO(data))
    for number, fragment in enumerate(generate_frames(ds.PixelData, number_of_frames=MF_FRAMES), 1):
        if number == frame:
            return len(fragment)
    raise ValueError(f"no frame {frame}")


def _generate_mf(directory: Path) -> None:
    tmp = directory.with_name(directory.name + ".partial")
    tmp.mkdir(parents=True, exist_ok=True)
    pixels = _cine(np.random.default_rng(SEED))
    manifest: dict[str, object] = {}
    for index, (key, ts, _title) in enumerate(ENCODINGS):
        ds = _mf_dataset(MF_FRAMES, MF_ROWS, MF_COLS, "wado-mf", index)
        try:
            if ts == ExplicitVRLittleEndian:
                ds.PixelData = pixels.tobytes()
                ds["PixelData"].VR = "OW"
            else:
                ds.compress(ts, pixels, encoding_plugin="pylibjpeg" if ts == JPEG2000Lossless else "")
        except Exception as exc:  # a missing encoder plugin: leave this encoding out
            manifest[key] = {"missing": f"{type(exc).__name__}: {exc}"[:200]}
            continue
        buf = io.BytesIO()
        ds.save_as(buf, enforce_file_format=True)
        (tmp / f"{key}.dcm").write_bytes(buf.getvalue())
        manifest[key] = {"file": f"{key}.dcm"}
    (tmp / "manifest.json").write_text(json.dumps(manifest, indent=1))
    tmp.rename(directory)


def load_retrieve_corpus(retrieve_instances: int, cache_dir: Path) -> RetrieveCorpus:
    study = load_corpus(study_spec(retrieve_instances), cache_dir)
    meta = load_corpus(META_SPEC, cache_dir)
    directory = cache_dir / "corpus" / f"wado-mf-{MF_FRAMES}x{MF_ROWS}x{MF_COLS}-v{MF_FORMAT}"
    if not (directory / "manifest.json").exists():
        print(f"[corpus] generating the multi-frame instances into {directory} ...", flush=True)
        _generate_mf(directory)
    manifest = json.loads((directory / "manifest.json").read_text())
    first = meta.measured[0]
    frames = [
        FrameInstance(
            "ct",
            "CT 512x512 (native, 1 frame)",
            *_uids(first.instances[0]),
            1,
            1,
            str(ExplicitVRLittleEndian),
            512 * 512 * 2,
            512 * 512 * 2,
            first.instances[0],
        )
    ]
    missing = []
    middle = MF_FRAMES // 2
    for key, ts, title in ENCODINGS:
        entry = manifest.get(key, {})
        if "file" not in entry:
            missing.append(f"{title}: {entry.get('missing', 'not generated')}")
            continue
        data = (directory / entry["file"]).read_bytes()
        native = MF_ROWS * MF_COLS * 2
        frames.append(
            FrameInstance(
                f"mf-{key}",
                f"{MF_FRAMES}-frame 256x256, {title}",
                *_uids(data),  # pydicom's compress() gives the instance a new SOP Instance UID
                middle,
                MF_FRAMES,
                str(ts),
                native,
                native if ts == ExplicitVRLittleEndian else _encapsulated_fragment_size(data, middle),
                data,
            )
        )
    return RetrieveCorpus(study, meta, tuple(frames), tuple(missing))


def _uids(data: bytes) -> tuple[str, str, str]:
    from pydicom import dcmread

    ds = dcmread(io.BytesIO(data), stop_before_pixels=True)
    return str(ds.StudyInstanceUID), str(ds.SeriesInstanceUID), str(ds.SOPInstanceUID)


# ---------------------------------------------------------------------------
# The big study: streamed, never in memory


_PART_HEAD = f"--{BOUNDARY}\r\nContent-Type: application/dicom\r\n\r\n".encode()
_CLOSE = f"--{BOUNDARY}--\r\n".encode()
_CHUNK_FRAMES = 8  # frames per yielded chunk (4 MiB)


@dataclass(frozen=True)
class BigStudy:
    """``count`` instances of 128 MiB (256 frames of 512x512 16-bit) in one study, one series each pair."""

    count: int

    @property
    def label(self) -> str:
        return "wado-big"

    @property
    def study_uid(self) -> str:
        return uid(SEED, self.label, "study")

    @property
    def instance_bytes(self) -> int:
        return len(self._header(0)) + BIG_INSTANCE_BYTES

    @property
    def nbytes(self) -> int:
        return sum(len(self._header(i)) + BIG_INSTANCE_BYTES for i in range(self.count))

    def _header(self, index: int) -> bytes:
        """Part-10 bytes up to and including the Pixel Data element header (OW, explicit length)."""
        ds = _mf_dataset(BIG_FRAMES, BIG_ROWS, BIG_COLS, self.label, index)
        ds.SeriesInstanceUID = uid(SEED, self.label, "series", index // 2)
        ds.SeriesNumber = index // 2 + 1
        ds.InstanceNumber = index % 2 + 1
        ds.BitsStored, ds.HighBit = 16, 15
        buf = io.BytesIO()
        ds.save_as(buf, enforce_file_format=True)
        return buf.getvalue() + struct.pack("<HH2sHI", 0x7FE0, 0x0010, b"OW", 0, BIG_INSTANCE_BYTES)

    def request_length(self, index: int) -> int:
        return len(_PART_HEAD) + len(self._header(index)) + BIG_INSTANCE_BYTES + 2 + len(_CLOSE)

    async def body(self, index: int) -> AsyncIterator[bytes]:
        """One STOW request holding instance ``index`` (Content-Length known: Orthanc wants no chunking)."""
        frame = np.clip(phantom(BIG_ROWS, BIG_COLS) + index, 0, 65535).astype("<u2").tobytes()
        yield _PART_HEAD + self._header(index)
        chunk = frame * _CHUNK_FRAMES
        for _ in range(BIG_FRAMES // _CHUNK_FRAMES):
            yield chunk
        yield b"\r\n" + _CLOSE


def big_study(gib: float) -> BigStudy:
    return BigStudy(max(1, round(gib * 2**30 / BIG_INSTANCE_BYTES)))
