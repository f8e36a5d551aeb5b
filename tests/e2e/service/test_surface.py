"""The service's surface: the route table (405 with every allowed method, JSON 404), path UIDs checked
before any handler runs, the open service pages (/, /openapi.json, /docs) and the metrics listener."""

from __future__ import annotations

import importlib.metadata
import re
import time
from pathlib import Path

import httpx
import pytest
from pydicom.uid import generate_uid
from starlette.routing import Route

from dicomweb_server import app, metrics
from dicomweb_server.routes import ROUTES
from tests.conftest import App, free_port, start_server
from tests.support.dicomfiles import content_type, instance, multipart

STUDIES = "/dicomweb/studies"
UID = "2.25.1"
INSTANCE = f"{STUDIES}/{UID}/series/{UID}/instances/{UID}"


def _routes() -> list[Route]:
    return [r for r in ROUTES if isinstance(r, Route)]


def _concrete(template: str) -> str:
    return re.sub(r"{(\w+)(:\w+)?}", lambda m: "1" if m.group(1) == "frames" else UID, template)


async def test_a_405_lists_every_method_of_the_path_as_json(app: App) -> None:
    checked = 0
    for route in _routes():
        assert route.methods
        r = await app.client.request("PATCH", _concrete(route.path))
        assert r.status_code == 405, route.path
        assert set(r.headers["allow"].split(", ")) == route.methods, route.path
        message = f"PATCH is not allowed here; allowed: {r.headers['allow']}"
        if route.path.startswith("/api/"):  # RFC 9457 problem details on the /api routes
            assert r.headers["content-type"] == "application/problem+json"
            assert r.json()["status"] == 405 and r.json()["detail"] == message
        else:
            assert r.headers["content-type"] == "application/json"
            assert r.json() == {"status": 405, "message": message}
        checked += 1
    assert checked > 25


async def test_the_studies_resource_allows_get_and_post(app: App) -> None:
    r = await app.client.delete(STUDIES)
    assert r.status_code == 405
    assert r.headers["allow"] == "GET, HEAD, POST"
    r = await app.client.put(f"{STUDIES}/{UID}")
    assert r.headers["allow"] == "DELETE, GET, HEAD, POST"


async def test_an_unknown_path_is_a_json_404(app: App) -> None:
    r = await app.client.get("/no/such/thing")
    assert r.status_code == 404
    assert r.headers["content-type"] == "application/json"
    assert r.json()["status"] == 404
    assert "'/no/such/thing'" in r.json()["message"]


BAD_UIDS = ["1.2.3%00", "abc", "1.02.3", "%2E%2E", "1." * 40 + "1", "%D9%A3", "1.2.3%20"]
UID_ROUTES = [
    ("GET", f"{STUDIES}/{{bad}}"),
    ("DELETE", f"{STUDIES}/{{bad}}"),
    ("POST", f"{STUDIES}/{{bad}}"),
    ("GET", f"{STUDIES}/{{bad}}/metadata"),
    ("GET", f"{STUDIES}/{{bad}}/series"),
    ("GET", f"{STUDIES}/{{bad}}/instances"),
    ("GET", f"{STUDIES}/{UID}/series/{{bad}}"),
    ("GET", f"{STUDIES}/{UID}/series/{{bad}}/instances"),
    ("GET", f"{STUDIES}/{UID}/series/{UID}/instances/{{bad}}/frames/1"),
    ("GET", f"{STUDIES}/{UID}/series/{UID}/instances/{{bad}}/rendered"),
    ("GET", f"{STUDIES}/{UID}/series/{UID}/instances/{{bad}}/bulkdata/7FE00010"),
]


@pytest.mark.parametrize("bad", BAD_UIDS)
@pytest.mark.parametrize(("method", "template"), UID_ROUTES)
async def test_a_path_uid_that_is_not_a_uid_is_a_400(app: App, method: str, template: str, bad: str) -> None:
    r = await app.client.request(method, template.format(bad=bad))
    assert r.status_code == 400, r.text
    message = r.json()["message"]
    assert "Instance UID '" in message and "Instance Instance" not in message
    assert "in the path is not a valid UID (PS3.5 §9.1" in message
    assert "\x00" not in message  # shown escaped


async def test_without_a_token_a_bad_uid_is_a_401_first(app: App) -> None:
    r = await app.client.get(f"{STUDIES}/1.2.3%00", headers={"Authorization": ""})
    assert r.status_code == 401


async def test_a_bad_uid_never_reaches_the_audit(app: App) -> None:
    r = await app.client.get(f"{STUDIES}/1.2.3%00/metadata")
    assert r.status_code == 400
    trail = app.state.audit  # type: ignore[attr-defined]
    await trail.flush()
    pool = app.state.pool  # type: ignore[attr-defined]
    rows = await pool.fetch("SELECT study_uid FROM audit WHERE request_id = $1", r.headers["x-request-id"])
    [(study_uid,)] = [tuple(row) for row in rows]
    assert study_uid.startswith("invalid:") and "\x00" not in study_uid  # a digest, never the value


@pytest.mark.parametrize("path", ["/", "/dicomweb"])
async def test_the_service_document(app: App, path: str) -> None:
    r = await app.client.get(path, headers={"Authorization": ""})  # open: no token
    assert r.status_code == 200
    doc = r.json()
    assert doc["service"] == "dicomweb-server"
    assert doc["version"] == importlib.metadata.version("dicomweb-server")
    assert doc["dicomweb"] == "http://testserver/dicomweb"
    assert doc["token_endpoint"] == "http://testserver/oauth/token"
    assert doc["openapi"] == "http://testserver/openapi.json"
    assert doc["docs"] == "http://testserver/docs"


async def test_a_browser_gets_the_service_page_as_html(app: App) -> None:
    accept = "text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8"
    r = await app.client.get("/", headers={"Accept": accept, "Authorization": ""})
    assert r.status_code == 200
    assert r.headers["content-type"].startswith("text/html")
    assert '<a href="http://testserver/docs">' in r.text
    assert "http://testserver/oauth/token" in r.text


async def test_the_openapi_document_names_this_server(app: App) -> None:
    r = await app.client.get("/openapi.json", headers={"Authorization": ""})
    assert r.status_code == 200
    spec = r.json()
    assert spec["openapi"].startswith("3.1")
    assert spec["servers"] == [{"url": "http://testserver"}]
    assert "/dicomweb/studies" in spec["paths"]


async def test_the_api_page_works_offline(app: App) -> None:
    r = await app.client.get("/docs", headers={"Authorization": ""})
    assert r.status_code == 200
    assert r.headers["content-type"].startswith("text/html")
    assert "//" not in r.text.replace("<!doctype html>", "")  # no absolute URL: nothing from a CDN
    for asset in re.findall(r'(?:src|href)="([^"]+)"', r.text):
        got = await app.client.get(asset, headers={"Authorization": ""})
        assert got.status_code == 200, asset
        assert len(got.content) > 1000
    assert '"/openapi.json"' in r.text
    missing = await app.client.get("/docs/static/nope.js")
    assert missing.status_code == 404
    assert missing.json()["status"] == 404


# -- metrics -------------------------------------------------------------------------------------


def sample(text: str, name: str, **labels: str) -> float:
    """One sample's value in a Prometheus text exposition (0 when absent)."""
    want = ",".join(f'{k}="{v}"' for k, v in sorted(labels.items()))
    for line in text.splitlines():
        if line.startswith("#"):
            continue
        metric, _, value = line.rpartition(" ")
        got_name, _, got_labels = metric.partition("{")
        got = ",".join(sorted(got_labels.rstrip("}").split(","))) if got_labels else ""
        if got_name == name and got == want:
            return float(value)
    return 0.0


async def scrape_asgi() -> str:
    transport = httpx.ASGITransport(app=metrics.asgi_app())
    async with httpx.AsyncClient(transport=transport, base_url="http://metrics") as client:
        r = await client.get("/metrics")
    assert r.status_code == 200
    assert r.headers["content-type"].startswith("text/plain")
    return r.text


async def test_metrics_move_after_a_stow(app: App) -> None:
    before = await scrape_asgi()
    study, series = generate_uid(), generate_uid()
    good = instance(study, series, seed=1)
    broken = b"\0" * 128 + b"DICM" + b"\x02\x00"  # a header cut short
    r = await app.client.post(
        STUDIES, content=multipart([good, broken]), headers={"Content-Type": content_type()}
    )
    assert r.status_code == 202, r.text
    (failed,) = r.json()["0008119A"]["Value"]
    reason = f"0x{failed['00081197']['Value'][0]:04X}"
    url = r.json()["00081199"]["Value"][0]["00081190"]["Value"][0]
    accept = 'multipart/related; type="application/dicom"; transfer-syntax=*'
    retrieved = await app.client.get(url, headers={"Accept": accept})
    assert retrieved.status_code == 200
    assert good in retrieved.content
    after = await scrape_asgi()

    def moved(name: str, **labels: str) -> float:
        return sample(after, name, **labels) - sample(before, name, **labels)

    assert moved("dicomweb_stow_instances_stored_total") == 1
    assert moved("dicomweb_stow_stored_bytes_total") == len(good)
    assert moved("dicomweb_stow_instance_failures_total", reason=reason) == 1
    route = {"method": "POST", "route": STUDIES, "status": "202"}
    assert moved("dicomweb_http_requests_total", **route) == 1
    assert moved("dicomweb_http_request_duration_seconds_count", **route) == 1
    retrieve = {"method": "GET", "route": "/dicomweb/studies/{study}/series/{series}/instances/{instance}"}
    assert moved("dicomweb_http_requests_total", **retrieve, status="200") == 1
    assert moved("dicomweb_storage_operation_duration_seconds_count", operation="commit", outcome="ok") >= 1
    assert moved("dicomweb_storage_operation_duration_seconds_count", operation="read", outcome="ok") >= 1
    assert sample(after, "dicomweb_db_pool_max_connections") >= 1
    assert "dicomweb_open_connections" in after
    assert "dicomweb_audit_rows_written_total" in after


async def test_the_audit_counts_the_rows_it_writes(app: App) -> None:
    before = sample(await scrape_asgi(), "dicomweb_audit_rows_written_total")
    await app.client.get(STUDIES)
    await app.state.audit.flush()  # type: ignore[attr-defined]
    assert sample(await scrape_asgi(), "dicomweb_audit_rows_written_total") - before >= 1


@pytest.mark.parametrize("workers", [1, 2])
def test_metrics_of_a_server_on_their_own_listener(
    db: object, database_url: str, tmp_path: Path, workers: int
) -> None:
    port = free_port()
    server = start_server(database_url, tmp_path / "live", workers=workers, DICOMWEB_METRICS_PORT=str(port))
    try:
        for _ in range(2):  # two connections: the least busy worker takes each
            with httpx.Client(base_url=server.url, headers=server.headers) as client:
                study = generate_uid()
                files = [instance(study, generate_uid(), seed=i) for i in range(2)]
                r = client.post(STUDIES, content=multipart(files), headers={"Content-Type": content_type()})
                assert r.status_code == 200, r.text
        text = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=10).text
        assert sample(text, "dicomweb_stow_instances_stored_total") == 4  # the sum over the workers
        assert sample(text, "dicomweb_http_requests_total", method="POST", route=STUDIES, status="200") == 2
        # The pool gauges are sampled by each worker's job runner (at start, then every few seconds):
        # on a loaded machine a worker's first sample may still be on its way.
        deadline = time.monotonic() + 2 * app.METRICS_EVERY
        while sample(text, "dicomweb_db_pool_max_connections") != workers * server_pool_size():
            assert time.monotonic() < deadline, text
            time.sleep(0.2)
            text = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=10).text
        # not on the API port
        assert httpx.get(server.url + "/metrics").status_code == 404
    finally:
        server.stop()


def server_pool_size() -> int:
    from dicomweb_server.settings import DatabaseSettings

    return DatabaseSettings().pool_size
