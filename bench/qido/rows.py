"""Index rows for the 1M scenario, with exactly the values ingest would store.

``Rows`` yields the instance rows of a range of studies for binary COPY and collects the study and
series rows meanwhile; ``StudyRows`` derives one study's index values through the server's own
``index_values``; ``check_against_ingest`` builds sample instances through the real ingest code
(``describe``) and compares, so a drift of the server's ingest fails the load instead of skewing it.
"""

from __future__ import annotations

import hashlib
import json
import random
from collections.abc import Iterator
from typing import Any

import numpy as np
import orjson
from pydicom.uid import ExplicitVRLittleEndian

from bench.corpus.population import (
    SOP_CLASS,
    Population,
    SeriesInfo,
    SeriesJson,
    StudyInfo,
    dataset,
    part10,
    pixels,
)
from bench.qido import server
from bench.qido.server import TENANT

TRANSFER_SYNTAX = "1.2.840.10008.1.2.1"


def _columns() -> tuple[list[str], list[str], list[str]]:
    study_columns, series_columns, instance_columns = server.index_columns()
    study = [
        "pk",
        "tenant",
        "study_uid",
        *study_columns,
        "modalities",
        "num_series",
        "num_instances",
        "attrs",
    ]
    series = ["pk", "tenant", "study_pk", "series_uid", *series_columns, "num_instances", "attrs"]
    instance = [
        "pk", "tenant", "study_pk", "series_pk", "sop_uid", *instance_columns,
        "object_key", "size", "sha256", "metadata",
    ]  # fmt: skip
    return study, series, instance


def _value(values: dict[str, Any], column: str, sql_type: str) -> Any:
    value = values[column]
    if sql_type == "text[]":  # index_values gives JSON text for array columns; COPY wants a list
        return orjson.loads(value) if isinstance(value, str) else value
    return value


class Rows:
    """Instance rows of studies ``[start, stop)``; the study and series rows are collected meanwhile."""

    def __init__(self, pop: Population, start: int = 0, stop: int | None = None) -> None:
        self.pop = pop
        self.start, self.stop = start, len(pop.studies) if stop is None else stop
        before = pop.studies[:start]
        self.first_series_pk = sum(len(s.series) for s in before)
        self.first_instance_pk = sum(s.instances for s in before)
        self.studies: list[tuple[Any, ...]] = []
        self.series: list[tuple[Any, ...]] = []
        self.study_cols, self.series_cols, self.instance_cols = _columns()

    def instances(self) -> Iterator[tuple[Any, ...]]:
        study_columns, series_columns, _ = server.index_columns()
        keys = random.Random(f"{self.pop.spec.seed}/{self.start}")
        dumps, sha = orjson.dumps, hashlib.sha256
        instance_pk, series_pk = self.first_instance_pk, self.first_series_pk
        for study in self.pop.studies[self.start : self.stop]:
            rows = StudyRows(study)
            study_pk = study.index + 1
            sv = rows.study_values
            self.studies.append(
                (
                    study_pk, TENANT, study.uid,
                    *(_value(sv, c, t) for c, t in study_columns.items()),
                    study.modalities, len(study.series), study.instances, rows.study_attrs,
                )
            )  # fmt: skip
            bucket = f"{TENANT}/{study.date}/{study.time[:4]}/"
            for series, sj in zip(study.series, rows.series_json, strict=True):
                series_pk += 1
                se = rows.series_values[series.index]
                self.series.append(
                    (
                        series_pk, TENANT, study_pk, series.uid,
                        *(_value(se, c, t) for c, t in series_columns.items()),
                        series.instances, rows.series_attrs[series.index],
                    )
                )  # fmt: skip
                const = rows.instance_values(series, 0)
                for i in range(series.instances):
                    instance_pk += 1
                    meta = sj.instance(i)
                    key = f"{bucket}{keys.getrandbits(128):032x}"
                    yield (
                        instance_pk, TENANT, study_pk, series_pk, meta["00080018"]["Value"][0],
                        const["sop_class_uid"], i + 1, const["rows"], const["columns"],
                        const["bits_allocated"], const["number_of_frames"], TRANSFER_SYNTAX,
                        key, 9000 + (instance_pk % 977), sha(key.encode()).digest(), dumps(meta).decode(),
                    )  # fmt: skip


def check_against_ingest(pop: Population, samples: int = 6) -> None:
    """Build a few instances through the real ingest code and compare with the direct rows."""
    rng = np.random.default_rng(0)
    picked = [pop.studies[len(pop.studies) * k // samples] for k in range(samples)]
    for study in picked:
        rows = StudyRows(study)
        for series in study.series:
            for i in sorted({0, series.instances - 1}):
                got = server.ingest_view(part10(dataset(study, series, i, pixels(rng))))
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
    """Index values of one study and its series (the server's ``index_values`` on a first instance)."""

    def __init__(self, study: StudyInfo) -> None:
        self.study = study
        self.series_json = [SeriesJson(study, s) for s in study.series]
        self.series_values: list[dict[str, Any]] = []
        self.series_attrs: list[str] = []
        values = [server.index_values(sj.base) for sj in self.series_json]
        for sj, (_, series_values, _) in zip(self.series_json, values, strict=True):
            self.series_values.append(series_values)
            attrs = server.series_attrs(sj.base)
            self.series_attrs.append(orjson.dumps(attrs).decode())
        first = self.series_json[0].base
        self.study_values = values[0][0]
        self.study_attrs = orjson.dumps(server.study_attrs(first)).decode()
        self._instance_const = {k: v for k, v in values[0][2].items() if k != "instance_number"}

    def instance_values(self, series: SeriesInfo, i: int) -> dict[str, Any]:
        return {**self._instance_const, "sop_class_uid": SOP_CLASS[series.modality], "instance_number": i + 1}
