"""A deterministic clinical-looking population for the QIDO benchmark, as DICOM files or as index rows.

One model (``Population``) describes patients, studies, series and instances; it is rebuilt from its
seed on every run (a few ms per thousand studies). From it come:

- the 20k scenario: Part-10 files (64x64, 16-bit) grouped one multipart STOW body per series, generated
  once into the cache directory;
- the 1M scenario: the DICOM JSON of each instance, built directly (no pydicom) in exactly the shape
  that ingest produces, checked against the real ingest code path by ``check_against_ingest``;
- the expected result counts of every query, computed from the model (``matches``).
"""

from __future__ import annotations

import datetime as dt
import hashlib
import io
import json
import random
import re
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import orjson
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import PYDICOM_IMPLEMENTATION_UID, UID, ExplicitVRLittleEndian

from bench.corpus import UID_PREFIX
from bench.multipart import build_body

FORMAT_VERSION = 1  # bump when the generated files change, so cached corpora are regenerated
SOP_CLASS = {
    "CT": "1.2.840.10008.5.1.4.1.1.2",
    "MR": "1.2.840.10008.5.1.4.1.1.4",
    "PT": "1.2.840.10008.5.1.4.1.1.128",
}
ROWS = COLS = 64
FIRST_DAY = dt.date(2024, 1, 1)
DAYS = 731  # StudyDate spread over two years: 2024-01-01 .. 2025-12-31

# (family name, weight): a Zipf-like mix with a few non-ASCII names (accents, ø, ł, Vietnamese).
SURNAMES = [
    ("Smith", 8), ("Johnson", 6), ("Williams", 5), ("Brown", 5), ("Jones", 5), ("García", 4),
    ("Miller", 4), ("Davis", 4), ("Rodríguez", 3), ("Martinez", 3), ("Doe", 3), ("Wilson", 3),
    ("Anderson", 3), ("Taylor", 3), ("Thomas", 3), ("Moore", 2), ("Jackson", 2), ("Martin", 2),
    ("Lee", 2), ("Thompson", 2), ("White", 2), ("Harris", 2), ("Clark", 2), ("Lewis", 2),
    ("Robinson", 2), ("Walker", 2), ("Young", 2), ("Allen", 2), ("King", 2), ("Wright", 2),
    ("Müller", 2), ("Schmidt", 1), ("Sørensen", 1), ("Dvořák", 1), ("Nguyễn", 1), ("Poe", 1),
    ("Doerr", 1), ("Monroe", 1), ("Joensen", 1), ("Łukasik", 1), ("O'Neil", 1), ("Ødegård", 1),
]  # fmt: skip
GIVEN = {
    "M": ["John", "James", "Robert", "Michael", "William", "David", "Joe", "José", "Jörg", "Lars"],
    "F": ["Jane", "Mary", "Patricia", "Jennifer", "Linda", "Elizabeth", "Zoë", "Chloé", "Ingrid", "Joan"],
}
REFERRING = ["Hart^Emma", "Okafor^Chidi", "Novak^Petra", "Lindqvist^Erik", "Tanaka^Yui", "Ruiz^Ana"]
STUDY_KINDS = [  # (kind, weight, body parts, series descriptions per modality)
    ("MR", 45, ["BRAIN", "KNEE", "LSPINE"]),
    ("CT", 35, ["CHEST", "ABDOMEN", "HEAD"]),
    ("PETCT", 20, ["WHOLEBODY"]),
]
SERIES_DESCRIPTIONS = {
    "MR": ["T1 SAG", "T2 AX", "FLAIR AX", "DWI", "T1 POST GD", "T2 COR"],
    "CT": ["AXIAL 5mm", "AXIAL 1mm", "CORONAL", "SAGITTAL", "CT AC"],
    "PT": ["PET WB AC", "PET WB NAC", "PET MIP"],
}


@dataclass(frozen=True)
class QidoSpec:
    name: str
    studies: int
    instances_per_study: int = 25
    series_per_study: int = 0  # 0: 1..5 at random (mean 3); otherwise fixed
    seed: int = 20250

    @property
    def instances(self) -> int:
        return self.studies * self.instances_per_study

    @property
    def key(self) -> str:
        identity = {**asdict(self), "format": FORMAT_VERSION}
        digest = hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()[:10]
        return f"{self.name}-{digest}"


@dataclass(slots=True)
class Patient:
    patient_id: str
    name: str
    birth_date: str
    sex: str


@dataclass(slots=True)
class SeriesInfo:
    index: int  # 0-based within the study
    uid: str
    modality: str
    description: str
    instances: int


@dataclass(slots=True)
class StudyInfo:
    index: int
    uid: str
    patient: Patient
    accession: str
    date: str
    time: str
    description: str
    body_part: str
    referring: str
    series: list[SeriesInfo] = field(default_factory=list)

    @property
    def modalities(self) -> list[str]:
        return sorted({s.modality for s in self.series})

    @property
    def instances(self) -> int:
        return sum(s.instances for s in self.series)


def uid_root(seed: int) -> str:
    return f"{UID_PREFIX}7.{seed}."


class Population:
    """Patients and studies of ``spec``; deterministic for a given spec."""

    def __init__(self, spec: QidoSpec) -> None:
        self.spec = spec
        rng = random.Random(spec.seed)
        surnames, weights = zip(*SURNAMES, strict=True)
        self.patients: list[Patient] = []
        for p in range(max(1, spec.studies * 5 // 8)):  # ~1.6 studies per patient
            sex = rng.choice("MF")
            name = f"{rng.choices(surnames, weights)[0]}^{rng.choice(GIVEN[sex])}"
            if rng.random() < 0.2:
                name += f"^{rng.choice('ABCDEFGHJKLMNPRSTW')}"
            birth = FIRST_DAY - dt.timedelta(days=rng.randrange(18 * 365, 90 * 365))
            self.patients.append(Patient(f"MRN{p:07d}", name, birth.strftime("%Y%m%d"), sex))
        kinds, kind_weights = [k[0] for k in STUDY_KINDS], [k[1] for k in STUDY_KINDS]
        parts = {k[0]: k[2] for k in STUDY_KINDS}
        root = uid_root(spec.seed)
        self.studies: list[StudyInfo] = []
        for s in range(spec.studies):
            kind = rng.choices(kinds, kind_weights)[0]
            body = rng.choice(parts[kind])
            day = FIRST_DAY + dt.timedelta(days=rng.randrange(DAYS))
            study = StudyInfo(
                index=s,
                uid=f"{root}{s + 1}",
                patient=self.patients[rng.randrange(len(self.patients))],
                accession=f"ACC{spec.seed % 100:02d}{s + 1:07d}",
                date=day.strftime("%Y%m%d"),
                time=f"{rng.randrange(7, 20):02d}{rng.randrange(60):02d}{rng.randrange(60):02d}",
                description=f"{'PET/CT' if kind == 'PETCT' else kind} {body}",
                body_part=body,
                referring=rng.choice(REFERRING),
            )
            n = spec.series_per_study or rng.randint(1, 5)
            counts = [1] * n
            for _ in range(spec.instances_per_study - n):
                counts[rng.randrange(n)] += 1
            for k in range(n):
                modality = kind if kind != "PETCT" else ("PT" if k % 2 == 0 else "CT")
                study.series.append(
                    SeriesInfo(
                        k,
                        f"{root}{s + 1}.{k + 1}",
                        modality,
                        rng.choice(SERIES_DESCRIPTIONS[modality]),
                        counts[k],
                    )
                )
            self.studies.append(study)

    @property
    def series_count(self) -> int:
        return sum(len(s.series) for s in self.studies)

    @property
    def instance_count(self) -> int:
        return sum(s.instances for s in self.studies)


# ---------------------------------------------------------------------------
# One instance's attributes, as (tag, VR, value) — the single source for both the Part-10 file and
# the DICOM JSON. Values are DICOM strings (DS/IS as text) or ints (US); lists are multi-valued.

Element = tuple[str, str, Any]


def sop_uid(study: StudyInfo, series: SeriesInfo, i: int) -> str:
    return f"{series.uid}.{i + 1}"


def _varying(study: StudyInfo, series: SeriesInfo, i: int) -> list[Element]:
    z = f"{i * 2.5:.1f}"
    return [
        ("00080018", "UI", sop_uid(study, series, i)),
        ("00200013", "IS", str(i + 1)),
        ("00200032", "DS", ["-120.0", "-120.0", z]),
    ]


def elements(study: StudyInfo, series: SeriesInfo, i: int) -> list[Element]:
    m = series.modality
    p = study.patient
    out: list[Element] = [
        ("00080005", "CS", "ISO_IR 192"),
        ("00080008", "CS", ["ORIGINAL", "PRIMARY", "AXIAL"]),
        ("00080016", "UI", SOP_CLASS[m]),
        ("00080020", "DA", study.date),
        ("00080030", "TM", study.time),
        ("00080050", "SH", study.accession),
        ("00080060", "CS", m),
        ("00080070", "LO", "BenchMed"),
        ("00080090", "PN", study.referring),
        ("00081030", "LO", study.description),
        ("0008103E", "LO", series.description),
        ("00100010", "PN", p.name),
        ("00100020", "LO", p.patient_id),
        ("00100030", "DA", p.birth_date),
        ("00100040", "CS", p.sex),
        ("00180015", "CS", study.body_part),
        ("0020000D", "UI", study.uid),
        ("0020000E", "UI", series.uid),
        ("00200010", "SH", str(study.index + 1)),
        ("00200011", "IS", str(series.index + 1)),
        ("00280002", "US", 1),
        ("00280004", "CS", "MONOCHROME2"),
        ("00280010", "US", ROWS),
        ("00280011", "US", COLS),
        ("00280030", "DS", ["0.9765625", "0.9765625"]),
        ("00280100", "US", 16),
        ("00280101", "US", 16),
        ("00280102", "US", 15),
        ("00280103", "US", 0),
    ]
    if m == "CT":
        out += [("00281052", "DS", "-1024"), ("00281053", "DS", "1")]  # Rescale Intercept/Slope
    out += _varying(study, series, i)
    out.sort(key=lambda e: e[0])
    return out


def _json_values(vr: str, value: Any) -> list[Any]:
    values = value if isinstance(value, list) else [value]
    if vr == "PN":
        return [{"Alphabetic": v} for v in values]
    if vr == "DS":
        return [float(v) for v in values]
    if vr == "IS":
        return [int(v) for v in values]
    return list(values)


def bulk_base(study: StudyInfo, series: SeriesInfo, i: int) -> str:
    return f"/dicomweb/studies/{study.uid}/series/{series.uid}/instances/{sop_uid(study, series, i)}/bulkdata"


def instance_json(study: StudyInfo, series: SeriesInfo, i: int) -> dict[str, Any]:
    """The DICOM JSON that ingest stores for this instance (Pixel Data as a BulkDataURI)."""
    meta = {
        tag: {"vr": vr, "Value": _json_values(vr, value)} for tag, vr, value in elements(study, series, i)
    }
    meta["7FE00010"] = {"vr": "OW", "BulkDataURI": f"{bulk_base(study, series, i)}/7FE00010"}
    return meta


class SeriesJson:
    """Fast per-instance DICOM JSON for one series: a base dict with the varying entries replaced."""

    def __init__(self, study: StudyInfo, series: SeriesInfo) -> None:
        self.study, self.series = study, series
        self.base = instance_json(study, series, 0)

    def instance(self, i: int) -> dict[str, Any]:
        meta = dict(self.base)
        for tag, vr, value in _varying(self.study, self.series, i):
            meta[tag] = {"vr": vr, "Value": _json_values(vr, value)}
        meta["7FE00010"] = {"vr": "OW", "BulkDataURI": f"{bulk_base(self.study, self.series, i)}/7FE00010"}
        return meta


def dataset(study: StudyInfo, series: SeriesInfo, i: int, pixels: np.ndarray) -> Dataset:
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = UID(SOP_CLASS[series.modality])
    meta.MediaStorageSOPInstanceUID = UID(sop_uid(study, series, i))
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
    ds = Dataset()
    ds.file_meta = meta
    ds.preamble = b"\0" * 128
    for tag, vr, value in elements(study, series, i):
        ds.add_new(int(tag, 16), vr, value)
    ds.add_new(0x7FE00010, "OW", pixels.tobytes())
    return ds


def part10(ds: Dataset) -> bytes:
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    return buf.getvalue()


def _pixels(rng: np.random.Generator) -> np.ndarray:
    y, x = np.mgrid[0:ROWS, 0:COLS].astype(np.float32)
    body = ((y - ROWS / 2) / (0.42 * ROWS)) ** 2 + ((x - COLS / 2) / (0.46 * COLS)) ** 2 <= 1
    img = np.where(body, 1024.0, 0.0) + rng.normal(0.0, 12.0, size=(ROWS, COLS))
    return np.clip(img, 0, 65535).astype("<u2")


# ---------------------------------------------------------------------------
# The 20k scenario's STOW bodies: one multipart/related body per series, cached on disk.


@dataclass(frozen=True)
class StowCorpus:
    population: Population
    bodies: tuple[tuple[bytes, int], ...]  # (multipart body, instance count), one per series

    @property
    def payload_bytes(self) -> int:
        return sum(len(b) for b, _ in self.bodies)


def _generate_bodies(pop: Population, directory: Path) -> None:
    rng = np.random.default_rng(pop.spec.seed)
    tmp = directory.with_name(directory.name + ".partial")
    tmp.mkdir(parents=True, exist_ok=True)
    names: list[str] = []
    for study in pop.studies:
        for series in study.series:
            files = [part10(dataset(study, series, i, _pixels(rng))) for i in range(series.instances)]
            name = f"{study.index:06d}-{series.index}.body"
            (tmp / name).write_bytes(build_body(files))
            names.append(name)
    (tmp / "manifest.json").write_text(json.dumps({"spec": asdict(pop.spec), "bodies": names}))
    tmp.rename(directory)


def load_stow_corpus(spec: QidoSpec, cache_dir: Path) -> StowCorpus:
    pop = Population(spec)
    directory = cache_dir / "corpus" / spec.key
    if not (directory / "manifest.json").exists():
        print(
            f"[corpus] generating {spec.name} ({spec.instances} instances) into {directory} ...", flush=True
        )
        _generate_bodies(pop, directory)
    names = json.loads((directory / "manifest.json").read_text())["bodies"]
    counts = [s.instances for study in pop.studies for s in study.series]
    if len(names) != len(counts):
        raise RuntimeError(f"{directory}: manifest does not match the population; delete it")
    bodies = tuple((directory / n).read_bytes() for n in names)
    return StowCorpus(pop, tuple(zip(bodies, counts, strict=True)))


# ---------------------------------------------------------------------------
# Rows for the 1M scenario, with exactly the values ingest (stow._record, db.store_batch) would store.


def _ingest_view(data: bytes) -> dict[str, Any]:
    """What ingest stores for one Part-10 file, via the server's own code (either API generation)."""
    from dicomweb_server.dicom import part10 as dicom
    from dicomweb_server.settings import Settings

    settings = Settings()
    if hasattr(dicom, "describe"):
        d = dicom.describe(
            data, complete=True, budget=settings.header_budget_bytes, threshold=settings.bulk_data_threshold
        )
        assert not isinstance(d, dicom.Failure), d
        return {
            "metadata": json.loads(d.metadata),
            "study": d.study,
            "series": d.series,
            "instance": d.instance,
            "study_attrs": json.loads(d.study_attrs),
            "series_attrs": json.loads(d.series_attrs),
        }
    from types import SimpleNamespace

    from dicomweb_server.dicomweb import stow

    header = dicom.parse_header(data, complete=True)
    assert isinstance(header, dicom.Header), header
    meta = stow.Ingest._metadata(SimpleNamespace(settings=settings), header)  # type: ignore[attr-defined]
    record = stow._record(header, meta, "k", 1)  # type: ignore[call-arg, arg-type]
    return {
        "metadata": json.loads(record.metadata),
        "study": record.study,
        "series": record.series,
        "instance": record.instance,
        "study_attrs": json.loads(record.study_attrs),
        "series_attrs": json.loads(record.series_attrs),
    }


def check_against_ingest(pop: Population, samples: int = 6) -> None:
    """Build a few instances through the real ingest code and compare with the direct rows."""
    rng = np.random.default_rng(0)
    picked = [pop.studies[len(pop.studies) * k // samples] for k in range(samples)]
    for study in picked:
        rows = StudyRows(study)
        for series in study.series:
            for i in sorted({0, series.instances - 1}):
                got = _ingest_view(part10(dataset(study, series, i, _pixels(rng))))
                fast = orjson.loads(orjson.dumps(rows.series_json[series.index].instance(i)))
                want = {
                    "metadata": fast,
                    "study": rows.study_values,
                    "series": rows.series_values[series.index],
                    "instance": {
                        **rows.instance_values(series, i),
                        "transfer_syntax_uid": ExplicitVRLittleEndian,
                    },
                    "study_attrs": json.loads(rows.study_attrs),
                    "series_attrs": json.loads(rows.series_attrs[series.index]),
                }
                bad = [k for k in want if want[k] != got[k]]
                if bad:
                    detail: dict[str, Any] = {k: (got[k], want[k]) for k in bad if k != "metadata"}
                    if "metadata" in bad:
                        m1, m2 = got["metadata"], want["metadata"]
                        detail["metadata"] = sorted(t for t in set(m1) | set(m2) if m1.get(t) != m2.get(t))
                    raise AssertionError(f"direct rows differ from ingest for {series.uid} #{i}: {detail}")


class StudyRows:
    """Index values of one study and its series (via dicom_index.index_values on a first instance)."""

    def __init__(self, study: StudyInfo) -> None:
        from dicomweb_server.dicom import index as dicom_index

        self.study = study
        self.series_json = [SeriesJson(study, s) for s in study.series]
        self.series_values: list[dict[str, Any]] = []
        self.series_attrs: list[str] = []
        values = [dicom_index.index_values(sj.base) for sj in self.series_json]
        for sj, (_, series_values, _) in zip(self.series_json, values, strict=True):
            self.series_values.append(series_values)
            attrs = dicom_index.subset(sj.base, dicom_index.SERIES_TAGS)
            self.series_attrs.append(orjson.dumps(attrs).decode())
        first = self.series_json[0].base
        self.study_values = values[0][0]
        self.study_attrs = orjson.dumps(dicom_index.subset(first, dicom_index.STUDY_TAGS)).decode()
        self._instance_const = {k: v for k, v in values[0][2].items() if k != "instance_number"}

    def instance_values(self, series: SeriesInfo, i: int) -> dict[str, Any]:
        return {**self._instance_const, "sop_class_uid": SOP_CLASS[series.modality], "instance_number": i + 1}


# ---------------------------------------------------------------------------
# Expected matches (PS3.4 C.2.2.2 as CONFORMANCE.md describes ours: PN folded, any component group).


def fold(text: str) -> str:
    from dicomweb_server.dicom.index import fold as server_fold

    folded = server_fold(text)
    assert folded is not None
    return folded


def wildcard_regex(value: str) -> re.Pattern[str]:
    pattern = "".join(".*" if c == "*" else "." if c == "?" else re.escape(c) for c in fold(value))
    return re.compile(pattern, re.DOTALL)


def iter_series(pop: Population) -> Iterator[tuple[StudyInfo, SeriesInfo]]:
    for study in pop.studies:
        for series in study.series:
            yield study, series
