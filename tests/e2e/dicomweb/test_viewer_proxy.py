"""``make viewer`` (viewer/serve.py): the same origin serves OHIF's files and forwards /dicomweb to
the running server with the development client's token.  OHIF and a browser are not needed to
check that part: a stand-in index.html and httpx play them."""

from __future__ import annotations

import importlib.util
import json
import threading
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

import httpx
import pytest
from pydicom.uid import generate_uid

from tests.conftest import CLIENT, ROOT, Server, free_port
from tests.support.dicomfiles import instance


def _serve_module() -> ModuleType:
    spec = importlib.util.spec_from_file_location("viewer_serve", ROOT / "viewer" / "serve.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture
def viewer(live_server: Server, tmp_path: Path) -> Iterator[str]:
    serve = _serve_module()
    site = tmp_path / "site"
    site.mkdir()
    (site / "index.html").write_text("<title>OHIF stand-in</title>")
    secret_file = tmp_path / "dev-client.json"  # as `make run` keeps it; the test client's secret
    secret_file.write_text(json.dumps({"client_id": CLIENT, "client_secret": "unused"}))
    port = free_port()
    httpd = serve.serving(site, port, live_server.url, secret_file)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{port}"
    httpd.shutdown()
    httpd.server_close()


def test_the_viewer_origin_serves_ohif_and_forwards_dicomweb_with_a_token(
    live_server: Server, viewer: str
) -> None:
    study, series, sop = generate_uid(), generate_uid(), generate_uid()
    stored = httpx.post(
        live_server.url + "/dicomweb/studies",
        content=instance(study, series, sop),
        headers={"Content-Type": "application/dicom", **live_server.headers},
    )
    assert stored.status_code == 200, stored.text
    # The browser sends no token: the proxy adds it.
    found = httpx.get(viewer + "/dicomweb/studies", params={"StudyInstanceUID": study})
    assert found.status_code == 200, found.text
    assert [s["0020000D"]["Value"][0] for s in found.json()] == [study]
    meta = httpx.get(viewer + f"/dicomweb/studies/{study}/series/{series}/metadata")
    assert meta.status_code == 200
    bulk = meta.json()[0]["7FE00010"]["BulkDataURI"]
    assert bulk.startswith(viewer + "/dicomweb/")  # URLs in answers lead back through the viewer's origin
    frame = httpx.get(bulk, headers={"Accept": "application/octet-stream"})
    assert frame.status_code in (200, 206)
    assert len(frame.content) >= 64 * 64 * 2
    page = httpx.get(viewer + "/viewer?StudyInstanceUIDs=" + study)  # OHIF's routes are its index.html
    assert page.status_code == 200 and "OHIF stand-in" in page.text
