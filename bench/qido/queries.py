"""QIDO-RS query types: the searches every target is asked, and the counts ours must return.

Each query type draws ``n`` probes from the population model (bench/corpus/population.py) with a
seeded ``random.Random``; the expected counts follow PS3.4 C.2.2.2 as CONFORMANCE.md describes ours
(PatientName folded, any component group; ``*`` and ``?`` wildcards), and the limit caps a page.
Every query string is plain ASCII with no percent-encoding (Orthanc does not decode it).
"""

from __future__ import annotations

import datetime as dt
import functools
import random
import re
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from bench.corpus.population import DAYS, FIRST_DAY, Population
from bench.qido.server import fold

ACCEPT = {"Accept": "application/dicom+json"}
NAME_PREFIXES = ["Doe", "Smi", "John", "Garc", "Mul", "Nguy", "Wil", "Mart", "And", "Tay", "Dvo", "Lee"]
NAME_INFIXES = ["oe", "mit", "arc", "ill", "son", "ue", "art", "ors", "ng", "vor"]
WINDOW_DAYS = 7


@dataclass(frozen=True)
class Probe:
    path: str  # below the DICOMweb root, with the query string
    expected: int  # results ours must return
    total: int  # results that match, ignoring limit/offset (ours: Warning header when more remain)
    offset: int = 0


@dataclass(frozen=True)
class QueryType:
    key: str
    title: str
    example: str
    exact_key: bool
    probes: Callable[[Population, random.Random, int], list[Probe]]


# ---------------------------------------------------------------------------
# Query types. Each returns ``n`` probes with values drawn from the model by ``rng``.


def _page(total: int, limit: int, offset: int = 0) -> int:
    return max(0, min(limit, total - offset))


class Model:
    """Indexes over the population for computing expected counts."""

    def __init__(self, pop: Population) -> None:
        self.pop = pop
        self.by_patient: dict[str, int] = {}
        for s in pop.studies:
            self.by_patient[s.patient.patient_id] = self.by_patient.get(s.patient.patient_id, 0) + 1
        self.folded_names = [fold(s.patient.name) for s in pop.studies]
        self.dates = np.array([int(s.date) for s in pop.studies])
        self.ct_series = sum(1 for s in pop.studies for se in s.series if se.modality == "CT")
        self.mr_studies = sum(1 for s in pop.studies if "MR" in s.modalities)

    def name_matches(self, value: str) -> int:
        regex = wildcard_regex(value)
        return sum(1 for name in self.folded_names if regex.fullmatch(name))


@functools.lru_cache(maxsize=4)
def model(pop: Population) -> Model:
    """The expected answers of ``pop``, computed once per population (keyed by the object itself,
    which the cache holds, so no later population can be taken for it, as an ``id()`` key could)."""
    return Model(pop)


def _patient_id(pop: Population, rng: random.Random, n: int) -> list[Probe]:
    m = model(pop)
    out = []
    for _ in range(n):
        pid = rng.choice(pop.studies).patient.patient_id
        out.append(Probe(f"/studies?PatientID={pid}", m.by_patient[pid], m.by_patient[pid]))
    return out


def _study_uid(pop: Population, rng: random.Random, n: int) -> list[Probe]:
    return [Probe(f"/studies?StudyInstanceUID={rng.choice(pop.studies).uid}", 1, 1) for _ in range(n)]


def _accession(pop: Population, rng: random.Random, n: int) -> list[Probe]:
    return [Probe(f"/studies?AccessionNumber={rng.choice(pop.studies).accession}", 1, 1) for _ in range(n)]


def _name_probes(values: list[str], template: str, limit: int) -> Callable[..., list[Probe]]:
    def probes(pop: Population, rng: random.Random, n: int) -> list[Probe]:
        m = model(pop)
        start = rng.randrange(len(values))
        out = []
        for k in range(n):
            value = template.format(values[(start + k) % len(values)])
            total = m.name_matches(value)
            out.append(Probe(f"/studies?PatientName={value}&limit={limit}", _page(total, limit), total))
        return out

    return probes


def _date_range(pop: Population, rng: random.Random, n: int) -> list[Probe]:
    m = model(pop)
    out = []
    for _ in range(n):
        low = FIRST_DAY + dt.timedelta(days=rng.randrange(DAYS - WINDOW_DAYS))
        high = low + dt.timedelta(days=WINDOW_DAYS - 1)
        lo, hi = low.strftime("%Y%m%d"), high.strftime("%Y%m%d")
        total = int(((m.dates >= int(lo)) & (m.dates <= int(hi))).sum())
        out.append(Probe(f"/studies?StudyDate={lo}-{hi}&limit=100", _page(total, 100), total))
    return out


def _modalities(pop: Population, rng: random.Random, n: int) -> list[Probe]:
    total = model(pop).mr_studies
    return [Probe("/studies?ModalitiesInStudy=MR&limit=25", _page(total, 25), total)] * n


def _includefield(pop: Population, rng: random.Random, n: int) -> list[Probe]:
    return [Probe(p.path + "&includefield=all", p.expected, p.total) for p in _patient_id(pop, rng, n)]


def deep_offsets(total: int) -> tuple[int, int]:
    """Cold offsets: within 98 of each other, so a page of 100 never ends on another one."""
    lo = 501 if total >= 700 else max(1, total // 4) + 1
    return lo, lo + 98


def _deep_offset(pop: Population, rng: random.Random, n: int) -> list[Probe]:
    total = len(pop.studies)
    lo, hi = deep_offsets(total)
    out = []
    for _ in range(n):
        offset = rng.randint(lo, hi)
        out.append(Probe(f"/studies?limit=100&offset={offset}", _page(total, 100, offset), total, offset))
    return out


def _walk(pop: Population, rng: random.Random, n: int) -> list[Probe]:
    """Pages in order (offset 0, 100, 200, ...), starting over at the end of the list."""
    total = len(pop.studies)
    pages = max(1, -(-total // 100))
    out = []
    for k in range(n):
        offset = 100 * (k % pages)
        out.append(Probe(f"/studies?limit=100&offset={offset}", _page(total, 100, offset), total, offset))
    return out


def _study_series(pop: Population, rng: random.Random, n: int) -> list[Probe]:
    out = []
    for _ in range(n):
        s = rng.choice(pop.studies)
        out.append(Probe(f"/studies/{s.uid}/series", len(s.series), len(s.series)))
    return out


def _study_instances(pop: Population, rng: random.Random, n: int) -> list[Probe]:
    out = []
    for _ in range(n):
        s = rng.choice(pop.studies)
        out.append(Probe(f"/studies/{s.uid}/instances", s.instances, s.instances))
    return out


def _series_modality(pop: Population, rng: random.Random, n: int) -> list[Probe]:
    total = model(pop).ct_series
    return [Probe("/series?Modality=CT&limit=50", _page(total, 50), total)] * n


QUERY_TYPES: tuple[QueryType, ...] = (
    QueryType("patient-id", "PatientID exact", "/studies?PatientID=MRN0000123", True, _patient_id),
    QueryType("study-uid", "StudyInstanceUID exact", "/studies?StudyInstanceUID={uid}", True, _study_uid),
    QueryType(
        "accession", "AccessionNumber exact", "/studies?AccessionNumber=ACC500000123", True, _accession
    ),
    QueryType(
        "name-prefix",
        "PatientName prefix",
        "/studies?PatientName=Doe*&limit=100",
        False,
        _name_probes(NAME_PREFIXES, "{}*", 100),
    ),
    QueryType(
        "name-infix",
        "PatientName infix",
        "/studies?PatientName=*oe*&limit=100",
        False,
        _name_probes(NAME_INFIXES, "*{}*", 100),
    ),
    QueryType(
        "date-range",
        "StudyDate range (7 days)",
        "/studies?StudyDate=20250301-20250307&limit=100",
        False,
        _date_range,
    ),
    QueryType(
        "modalities", "ModalitiesInStudy=MR", "/studies?ModalitiesInStudy=MR&limit=25", False, _modalities
    ),
    QueryType(
        "includefield-all",
        "includefield=all + PatientID",
        "/studies?PatientID=MRN0000123&includefield=all",
        False,
        _includefield,
    ),
    QueryType("deep-offset", "Deep offset, cold", "/studies?limit=100&offset=501..599", False, _deep_offset),
    QueryType("offset-walk", "Offset walk (keyset)", "/studies?limit=100&offset=0,100,200,...", False, _walk),
    QueryType("study-series", "Series of a study", "/studies/{uid}/series", False, _study_series),
    QueryType("study-instances", "Instances of a study", "/studies/{uid}/instances", False, _study_instances),
    QueryType(
        "series-modality", "Series by Modality", "/series?Modality=CT&limit=50", False, _series_modality
    ),
)
QUERY_KEYS = tuple(q.key for q in QUERY_TYPES)


def plan_probes(pop: Population, warmup: int, iterations: int) -> dict[str, tuple[list[Probe], list[Probe]]]:
    """(warm-up, measured) probes per query type; the same for every target (seeded by the type)."""
    out = {}
    for q in QUERY_TYPES:
        rng = random.Random(f"{pop.spec.seed}/{q.key}")
        if q.key == "offset-walk":  # warm-up walks the first pages; the measured walk starts over at 0
            out[q.key] = (_walk(pop, rng, warmup), _walk(pop, rng, iterations))
        else:
            probes = q.probes(pop, rng, warmup + iterations)
            out[q.key] = (probes[:warmup], probes[warmup:])
    return out


def wildcard_regex(value: str) -> re.Pattern[str]:
    """A QIDO wildcard value (PS3.4 C.2.2.2.4: ``*`` any run, ``?`` one) as a regex on folded text."""
    pattern = "".join(".*" if c == "*" else "." if c == "?" else re.escape(c) for c in fold(value))
    return re.compile(pattern, re.DOTALL)
