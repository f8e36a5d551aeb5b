"""``POST /api/v1/studies/{study}/commit`` and ``GET /api/v1/studies/{study}/status``."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import Response

from dicomweb_server.db import arrival, order_views
from dicomweb_server.db.pool import connection
from dicomweb_server.errors import BadRequest, Conflict, NotFound
from dicomweb_server.lifecycle import study_status
from dicomweb_server.workflow import stability
from dicomweb_server.workflow.api import JSONAnswer, actor, json_body, rfc3339


def _count(body: dict[str, object], name: str) -> int | None:
    value = body.get(name)
    if value is None:
        return None
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise BadRequest(f"{name} must be a non-negative integer")
    return value


async def commit(request: Request) -> Response:
    """The client says the study is complete: stable at once if the expected counts are met."""
    study = request.path_params["study"]
    body = await json_body(request, required=False)
    unknown = set(body) - {"expected_instances", "expected_series"}
    if unknown:
        raise BadRequest(f"Unknown field(s): {', '.join(sorted(unknown))}")
    state = request.app.state
    done = await stability.commit(
        state.pool,
        state.settings.workflow,
        request.state.tenant,
        study,
        _count(body, "expected_instances"),
        _count(body, "expected_series"),
        actor(request),
    )
    if not done.found:
        raise NotFound(f"No instances of study {study} are stored")
    if done.missing:
        shown = ", ".join(f"{n} {what}" for what, n in done.missing.items())
        raise Conflict(f"The study is not complete: {shown} missing", fields={"missing": done.missing})
    return await status(request)


async def status(request: Request) -> Response:
    """A study's own status (receiving, unstable, stable or its order's) and its orders."""
    study = request.path_params["study"]
    tenant = request.state.tenant
    async with connection(request.app.state.pool) as conn:
        row = await arrival.counts(conn, tenant, study)
        found = await order_views.of_study(conn, tenant, study)
    if row is None or (row["instances"] == 0 and not row["receiving"]):
        raise NotFound(f"No instances of study {study} are stored")
    latest = found[0]["status"] if found else None
    return JSONAnswer(
        {
            "study_uid": study,
            "status": study_status(row["receiving"], row["state"], latest),
            "held": row["state"] == "held",
            "instances": row["indexed"],
            "series": row["series"],
            "bytes": row["bytes"],
            "first_arrival": rfc3339(row["first_at"]),
            "last_arrival": rfc3339(row["last_at"]),
            "stable_at": rfc3339(row["stable_at"]),
            "stable_by": row["stable_by"],
            "due_at": rfc3339(row["due_at"]) if row["state"] == "unstable" else None,
            "channels": row["channels"],
            "aes": row["aes"],
            "late_instances": row["late_instances"],
            "orders": [
                {"id": o["id"], "status": o["status"], "reason": o["reason"], "created_at": o["created_at"]}
                for o in found
            ],
        }
    )
