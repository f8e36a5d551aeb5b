"""The few internals of our server that the QIDO suite reads: the one white-box corner of bench/.

Everything else in bench/ talks to the server over HTTP and its CLI. The 1M scenario cannot: it
COPYs rows straight into the index, so it must produce exactly what ingest would store, and it
EXPLAINs exactly the SQL a search runs. Those needs are met here, through public names only, so a
change of the server's layout touches this one module:

- ``fold``: PN matching as ours does it (PS3.4 C.2.2.2.1, case and accents folded), for the model's
  expected counts;
- ``index_columns``, ``index_values``, ``study_attrs``, ``series_attrs``: the index schema and the
  values ingest derives from an instance's DICOM JSON;
- ``ingest_view``: what ingest stores for one Part-10 file, through the server's own ``describe``;
- ``qido_sql``: the statements ``parse_query`` + ``to_sql`` build for a QIDO path;
- ``create_pool``: the server's own pool factory (the same session settings as its queries).
"""

from __future__ import annotations

import json
from typing import Any
from urllib.parse import urlsplit

TENANT = "dev"  # the tenant of the dev client whose token the harness uses (dicomweb_server.access.admin)


def fold(text: str) -> str:
    from dicomweb_server.dicom.index import fold as server_fold

    folded = server_fold(text)
    assert folded is not None
    return folded


def index_columns() -> tuple[dict[str, str], dict[str, str], dict[str, str]]:
    """(study, series, instance) index columns ingest fills from the DICOM JSON: name -> SQL type."""
    from dicomweb_server.db import store

    return store.STUDY_COLUMNS, store.SERIES_COLUMNS, store.INSTANCE_COLUMNS


def index_values(meta: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any], dict[str, Any]]:
    from dicomweb_server.dicom import index

    return index.index_values(meta)


def study_attrs(meta: dict[str, Any]) -> dict[str, Any]:
    from dicomweb_server.dicom import index

    return index.subset(meta, index.STUDY_TAGS)


def series_attrs(meta: dict[str, Any]) -> dict[str, Any]:
    from dicomweb_server.dicom import index

    return index.subset(meta, index.SERIES_TAGS)


def ingest_view(data: bytes) -> dict[str, Any]:
    """What ingest stores for one Part-10 file, via the server's own ``describe``."""
    from dicomweb_server.dicom import part10 as dicom
    from dicomweb_server.settings import IngestSettings

    settings = IngestSettings()
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


def _resources() -> dict[str, Any]:
    """Route path → QIDO Resource, from the server's route table (its API list: the routes
    themselves wrap each handler in the access guard)."""
    from dicomweb_server import routes

    out = {}
    for path, methods, handler, _transaction in routes.API:
        keywords = getattr(handler, "keywords", None) or {}
        if "resource" in keywords and "GET" in methods:
            out[path] = keywords["resource"]
    return out


def qido_sql(path: str, after_pk: int | None = None) -> Any:
    """(query, statements) our server runs for ``path`` (relative to /dicomweb), as a search builds them."""
    from dicomweb_server.db.search import to_sql
    from dicomweb_server.dicom.query import parse_query
    from dicomweb_server.settings import DicomwebSettings

    settings = DicomwebSettings()
    parts = urlsplit(path)
    segments = parts.path.strip("/").split("/")
    study_uid: str | None = None
    if len(segments) == 1:
        template = f"/dicomweb/{segments[0]}"
    elif len(segments) == 3 and segments[0] == "studies":
        template, study_uid = f"/dicomweb/studies/{{study}}/{segments[2]}", segments[1]
    else:
        raise ValueError(f"no QIDO route for {path}")
    resource = _resources()[template]
    query = parse_query(
        parts.query,
        resource,
        study_uid=study_uid,
        max_limit=settings.qido_max_limit,
        max_offset=settings.qido_max_offset,
    )
    statements = to_sql(query, TENANT, after_pk=after_pk) if after_pk is not None else to_sql(query, TENANT)
    return query, statements


async def create_pool(dsn: str) -> Any:
    """A one-connection pool from the server's own factory."""
    from dicomweb_server.db import pool

    return await pool.create_pool(dsn, 1)
