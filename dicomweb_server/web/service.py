"""The open pages about the service: the service document (``/``), the OpenAPI document, the API reference.

``GET /`` and ``GET /dicomweb`` answer a small document naming the service, its version,
the DICOMweb root, the token endpoint and where the API is described: JSON by default,
a small HTML page when the client prefers ``text/html`` (a browser).  ``/openapi.json``
is ``openapi/openapi.json`` with ``servers`` set to the URL the request reached;
``/docs`` renders it with Swagger UI, whose files the ``swagger-ui-py`` package ships
(served from ``/docs/static``, no CDN: the page works offline).
"""

from __future__ import annotations

import functools
import html
import importlib.metadata
from pathlib import Path
from typing import Any

import orjson
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, Response
from starlette.staticfiles import StaticFiles
from swagger_ui.utils import SWAGGER_UI_PY_ROOT

from dicomweb_server.dicom.resources import ROOT
from dicomweb_server.errors import NotFound
from dicomweb_server.web.media import Offer, negotiate

NAME = "dicomweb-server"
OPENAPI = Path(__file__).resolve().parents[2] / "openapi" / "openapi.json"
DOCS_STATIC = "/docs/static"


def version() -> str:
    try:
        return importlib.metadata.version(NAME)
    except importlib.metadata.PackageNotFoundError:
        return "unknown"


@functools.cache
def _spec() -> dict[str, Any]:
    if not OPENAPI.is_file():  # an install without the source tree's openapi/ folder
        raise NotFound("The OpenAPI document (openapi/openapi.json) is not installed with this server")
    loaded: dict[str, Any] = orjson.loads(OPENAPI.read_bytes())
    return loaded


def describe(base: str) -> dict[str, Any]:
    """What the service document says, with absolute URLs under ``base``."""
    return {
        "service": NAME,
        "description": "DICOMweb (PS3.18): STOW-RS, QIDO-RS, WADO-RS, delete",
        "version": version(),
        "dicomweb": f"{base}{ROOT}",
        "capabilities": f"{base}{ROOT} (OPTIONS: PS3.18 §8.9 Retrieve Capabilities)",
        "token_endpoint": f"{base}/oauth/token",
        "authorization_server_metadata": f"{base}/.well-known/oauth-authorization-server",
        "openapi": f"{base}/openapi.json",
        "docs": f"{base}/docs",
        "health": f"{base}/healthz",
        "readiness": f"{base}/readyz",
    }


async def home(request: Request) -> Response:
    """GET / and GET /dicomweb: the service document (JSON, or HTML for a browser)."""
    doc = describe(request.state.base_url)
    choice = negotiate(request.headers.get("accept"), [Offer("application/json"), Offer("text/html")])
    if choice.offer.media_type != "text/html":
        return JSONResponse(doc)
    rows = "".join(
        f"<tr><th>{html.escape(key)}</th><td>{_link(value)}</td></tr>"
        for key, value in doc.items()
        if key not in ("service", "description")
    )
    page = (
        "<!doctype html><html lang=en><head><meta charset=utf-8>"
        f"<title>{NAME}</title></head><body><h1>{NAME} {html.escape(doc['version'])}</h1>"
        f"<p>{html.escape(doc['description'])}. Every DICOMweb request needs a bearer token "
        f"from the token endpoint (OAuth 2.0 client credentials).</p><table>{rows}</table></body></html>"
    )
    return HTMLResponse(page)


def _link(value: str) -> str:
    url, _, rest = value.partition(" ")
    return f'<a href="{html.escape(url)}">{html.escape(url)}</a> {html.escape(rest)}'.rstrip()


async def openapi(request: Request) -> Response:
    """GET /openapi.json: the OpenAPI 3.1 document, its server the URL this request reached."""
    spec = {**_spec(), "servers": [{"url": request.state.base_url}]}
    return Response(orjson.dumps(spec), media_type="application/json")


_DOCS_PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>{name} API</title>
<link rel="stylesheet" href="{static}/swagger-ui.css"></head>
<body><div id="swagger-ui"></div>
<script src="{static}/swagger-ui-bundle.js"></script>
<script>
window.ui = SwaggerUIBundle({{url: "{spec}", dom_id: "#swagger-ui", deepLinking: true,
  presets: [SwaggerUIBundle.presets.apis]}});
</script></body></html>
"""


async def docs(request: Request) -> Response:
    """GET /docs: the API reference (Swagger UI over /openapi.json, its assets served locally)."""
    root = request.scope.get("root_path", "")
    page = _DOCS_PAGE.format(name=NAME, static=root + DOCS_STATIC, spec=root + "/openapi.json")
    return HTMLResponse(page)


def static_files() -> StaticFiles:
    """Swagger UI's JavaScript and CSS, as the swagger-ui-py package ships them."""
    return StaticFiles(directory=str(SWAGGER_UI_PY_ROOT / "static"))
