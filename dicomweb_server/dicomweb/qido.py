"""QIDO-RS (PS3.18 §10.6): one search function for the six resources; the level comes from the route."""

from __future__ import annotations

import orjson
from starlette.requests import Request
from starlette.responses import Response

from dicomweb_server.db.pool import connection
from dicomweb_server.db.search import PageCache, search_page, signature, to_sql
from dicomweb_server.dicom.dicom_xml import to_xml
from dicomweb_server.dicom.query import Resource, parse_query
from dicomweb_server.dicomweb.results import remaining_warning, result
from dicomweb_server.web.media import DICOM_JSON, MULTIPART, Offer, negotiate_request
from dicomweb_server.web.multipart import MultipartWriter

DICOM_XML = "application/dicom+xml"
OFFERS = [Offer(DICOM_JSON), Offer("application/json"), Offer(MULTIPART, DICOM_XML)]


async def search(request: Request, resource: Resource) -> Response:
    """GET /studies, /series, /instances and their study/series-scoped forms."""
    state = request.app.state
    settings = state.settings.dicomweb
    choice = negotiate_request(request, OFFERS)
    p = request.path_params
    query = parse_query(
        request.url.query,
        resource,
        study_uid=p.get("study"),
        series_uid=p.get("series"),
        max_limit=settings.qido_max_limit,
        max_offset=settings.qido_max_offset,
    )
    tenant = request.state.tenant
    cache: PageCache = state.page_cache
    sig = signature(query, tenant)
    statements = to_sql(query, tenant, after_pk=cache.get(sig, query.offset))
    async with connection(state.pool) as conn:
        rows, total = await search_page(conn, statements, query.limit)
    if rows:
        cache.put(sig, query.offset + len(rows), rows[-1]["pk"])
    base = request.state.base_url
    results = [result(query, row, base) for row in rows]
    headers = {}
    if total is not None:
        headers["Warning"] = remaining_warning(base, total - query.offset - len(rows))
    if choice.offer.media_type == MULTIPART:
        writer = MultipartWriter(DICOM_XML)
        return Response(writer.body(to_xml(r) for r in results), 200, headers, media_type=writer.media_type)
    return Response(orjson.dumps(results), 200, headers, media_type=choice.offer.media_type)
