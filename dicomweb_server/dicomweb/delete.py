"""DELETE of a study, series or instance (the de facto DICOMweb extension of Microsoft and Google).

A hard delete: the index rows go in one transaction, so the resource is gone
from QIDO and WADO the moment it commits; the objects are removed after that.
If the process dies in between, the sweep removes the unreferenced objects.
"""

from __future__ import annotations

import logging

from starlette.requests import Request
from starlette.responses import Response

from dicomweb_server.db import delete as index
from dicomweb_server.db.pool import transaction
from dicomweb_server.dicom.resources import Scope
from dicomweb_server.errors import NotFound, StorageError

log = logging.getLogger(__name__)


async def delete(request: Request) -> Response:
    """DELETE /studies/{s}[/series/{se}[/instances/{i}]]: 204, or 404 for an unknown resource."""
    state = request.app.state
    scope = Scope.of(request.path_params)
    async with transaction(state.pool) as conn:
        keys = await index.delete(conn, request.state.tenant, scope.study, scope.series, scope.sop)
    if keys is None:
        raise NotFound("No such study, series or instance")
    for key in keys:
        try:
            await state.store.delete(key)
        except StorageError:
            log.warning("object delete failed; the sweep will remove it", extra={"event": "delete_failed"})
    return Response(status_code=204)
