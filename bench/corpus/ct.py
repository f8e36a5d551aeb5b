"""Deterministic synthetic DICOM corpus (CT Image Storage, Part-10, Explicit VR Little Endian).

The corpus is generated once with a fixed seed into a cache directory and re-read on later runs.
Every series is its own study (one patient per study) so a STOW request never mixes studies.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import PYDICOM_IMPLEMENTATION_UID, UID, CTImageStorage, ExplicitVRLittleEndian, generate_uid

UID_PREFIX = "1.2.826.0.1.3680043.8.498."  # pydicom's UID root; entropy makes UIDs deterministic
FORMAT_VERSION = 2  # bump when generated files change, so cached corpora are regenerated


@dataclass(frozen=True)
class CorpusSpec:
    name: str
    rows: int
    cols: int
    series_count: int
    instances_per_series: int
    warmup_series: int
    seed: int

    @property
    def key(self) -> str:
        identity = {**asdict(self), "format": FORMAT_VERSION}
        digest = hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()[:10]
        return f"{self.name}-{digest}"


@dataclass(frozen=True)
class Series:
    study_uid: str
    series_uid: str
    instances: tuple[bytes, ...]

    @property
    def nbytes(self) -> int:
        return sum(len(i) for i in self.instances)


@dataclass(frozen=True)
class Corpus:
    spec: CorpusSpec
    warmup: tuple[Series, ...]
    measured: tuple[Series, ...]

    @property
    def measured_instances(self) -> int:
        return sum(len(s.instances) for s in self.measured)

    @property
    def mean_instance_bytes(self) -> float:
        return sum(s.nbytes for s in self.measured) / max(1, self.measured_instances)


def uid(seed: int, *parts: object) -> str:
    # One joined entropy source: generate_uid concatenates sources, so ("1", "10") == ("11", "0").
    return str(generate_uid(prefix=UID_PREFIX, entropy_srcs=["/".join(map(str, (seed, *parts)))]))


def phantom(rows: int, cols: int) -> np.ndarray:
    """A crude CT slice: air outside a water ellipse with a few denser inserts (stored = HU + 1024)."""
    y, x = np.mgrid[0:rows, 0:cols].astype(np.float32)
    cy, cx = rows / 2, cols / 2
    img = np.zeros((rows, cols), dtype=np.float32)  # air: -1024 HU
    body = ((y - cy) / (0.42 * rows)) ** 2 + ((x - cx) / (0.46 * cols)) ** 2 <= 1
    img[body] = 1024
    for fy, fx, radius, value in ((0.35, 0.4, 0.06, 1900), (0.6, 0.65, 0.08, 1064), (0.5, 0.3, 0.05, 1324)):
        insert = (y - fy * rows) ** 2 + (x - fx * cols) ** 2 <= (radius * rows) ** 2
        img[insert] = value
    return img


def _dataset(spec: CorpusSpec, series_index: int, instance_index: int, pixels: np.ndarray) -> Dataset:
    seed, s, i = spec.seed, series_index, instance_index
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = CTImageStorage
    meta.MediaStorageSOPInstanceUID = UID(uid(seed, spec.name, "sop", s, i))
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID

    ds = Dataset()
    ds.file_meta = meta
    ds.preamble = b"\0" * 128
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
    ds.SOPClassUID = CTImageStorage
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.StudyDate = ds.SeriesDate = ds.ContentDate = f"2024{1 + s % 12:02d}{1 + s % 28:02d}"
    ds.StudyTime = ds.SeriesTime = ds.ContentTime = f"{8 + s % 10:02d}{s % 60:02d}00"
    ds.AccessionNumber = f"ACC{spec.seed % 1000:03d}{s:05d}"
    ds.Modality = "CT"
    ds.Manufacturer = "BenchCorp"
    ds.ReferringPhysicianName = "Referrer^Bench"
    ds.StudyDescription = f"Bench {spec.name} study {s}"
    ds.SeriesDescription = f"Axial {spec.rows}x{spec.cols}"
    ds.PatientName = f"Bench^Patient{s:05d}"
    ds.PatientID = f"BENCH-{spec.name}-{s:05d}"
    ds.PatientBirthDate = f"19{50 + s % 50:02d}0101"
    ds.PatientSex = "MF"[s % 2]
    ds.SliceThickness = "1.0"
    ds.KVP = "120"
    ds.StudyInstanceUID = uid(seed, spec.name, "study", s)
    ds.SeriesInstanceUID = uid(seed, spec.name, "series", s)
    ds.StudyID = f"{s}"
    ds.SeriesNumber = 1
    ds.InstanceNumber = i + 1
    ds.ImagePositionPatient = ["-250.0", "-250.0", f"{i * 1.0:.1f}"]
    ds.ImageOrientationPatient = ["1", "0", "0", "0", "1", "0"]
    ds.FrameOfReferenceUID = uid(seed, spec.name, "for", s)
    ds.SliceLocation = f"{i * 1.0:.1f}"
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.Rows, ds.Columns = spec.rows, spec.cols
    ds.PixelSpacing = ["0.9765625", "0.9765625"]
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 0
    ds.WindowCenter, ds.WindowWidth = "40", "400"
    ds.RescaleIntercept, ds.RescaleSlope, ds.RescaleType = "-1024", "1", "HU"
    ds.PixelData = pixels.tobytes()
    return ds


def _generate(spec: CorpusSpec, directory: Path) -> None:
    rng = np.random.default_rng(spec.seed)
    base = phantom(spec.rows, spec.cols)
    tmp = directory.with_name(directory.name + ".partial")
    tmp.mkdir(parents=True, exist_ok=True)
    manifest: list[dict[str, object]] = []
    every_uid: list[str] = []
    for s in range(spec.warmup_series + spec.series_count):
        files: list[str] = []
        sop_uids: list[str] = []
        for i in range(spec.instances_per_series):
            noise = rng.normal(0.0, 12.0, size=base.shape).astype(np.float32)
            pixels = np.clip(base + noise, 0, 65535).astype("<u2")
            name = f"s{s:04d}-i{i:04d}.dcm"
            ds = _dataset(spec, s, i, pixels)
            ds.save_as(tmp / name, enforce_file_format=True)
            files.append(name)
            sop_uids.append(str(ds.SOPInstanceUID))
        manifest.append(
            {
                "study_uid": uid(spec.seed, spec.name, "study", s),
                "series_uid": uid(spec.seed, spec.name, "series", s),
                "files": files,
                "sop_uids": sop_uids,
            }
        )
        every_uid += sop_uids
    if len(set(every_uid)) != len(every_uid):
        raise RuntimeError("corpus generator produced duplicate SOP Instance UIDs")
    (tmp / "manifest.json").write_text(json.dumps({"spec": asdict(spec), "series": manifest}, indent=1))
    tmp.rename(directory)


def load_corpus(spec: CorpusSpec, cache_dir: Path) -> Corpus:
    """Return the corpus for ``spec``, generating it into ``cache_dir`` first if needed."""
    directory = cache_dir / "corpus" / spec.key
    if not (directory / "manifest.json").exists():
        print(f"[corpus] generating {spec.name} into {directory} ...", flush=True)
        _generate(spec, directory)
    manifest = json.loads((directory / "manifest.json").read_text())
    series = tuple(
        Series(
            study_uid=entry["study_uid"],
            series_uid=entry["series_uid"],
            instances=tuple((directory / f).read_bytes() for f in entry["files"]),
        )
        for entry in manifest["series"]
    )
    return Corpus(spec=spec, warmup=series[: spec.warmup_series], measured=series[spec.warmup_series :])


CT_FULL = CorpusSpec("ct512", 512, 512, series_count=24, instances_per_series=50, warmup_series=2, seed=20240)
SMALL_FULL = CorpusSpec(
    "small64", 64, 64, series_count=20, instances_per_series=200, warmup_series=2, seed=20241
)
CT_QUICK = CorpusSpec("ct512", 512, 512, series_count=4, instances_per_series=10, warmup_series=1, seed=20240)
SMALL_QUICK = CorpusSpec(
    "small64", 64, 64, series_count=4, instances_per_series=50, warmup_series=1, seed=20241
)
