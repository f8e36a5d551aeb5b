"""Health checks, and the rule that logs never carry patient data or UIDs."""

from __future__ import annotations

import logging

import pytest
from pydicom.uid import generate_uid

from dicomweb_server.logs import JsonFormatter
from tests.conftest import App, bearer, token_for
from tests.support.dicomfiles import content_type, instance, multipart


async def test_healthz_and_readyz(app: App) -> None:
    assert (await app.client.get("/healthz")).json() == {"status": "ok"}
    r = await app.client.get("/readyz")
    assert r.status_code == 200
    assert r.json() == {"status": "ready"}
    assert r.headers["x-request-id"]


async def test_request_id_is_echoed_when_sane(app: App) -> None:
    r = await app.client.get("/healthz", headers={"X-Request-ID": "abc-123"})
    assert r.headers["x-request-id"] == "abc-123"
    r = await app.client.get("/healthz", headers={"X-Request-ID": "bad id\nwith newline"})
    assert r.headers["x-request-id"] != "bad id\nwith newline"


async def test_logs_carry_no_phi(app: App, caplog: pytest.LogCaptureFixture) -> None:
    study, series, sop = generate_uid(), generate_uid(), generate_uid()
    canaries = ["Canary^Patient", "CANARY-PID-77", "19011231", "CANARY-ACC-9", study, series, sop]
    good = instance(
        study,
        series,
        sop,
        patient=canaries[0],
        PatientID=canaries[1],
        PatientBirthDate=canaries[2],
        AccessionNumber=canaries[3],
    )
    token = token_for()  # a real token: neither it nor its signature may be logged
    broken = instance(patient=canaries[0], SOPInstanceUID="1.2.03", PatientID=canaries[1])  # invalid: logged?
    with caplog.at_level(logging.DEBUG):
        r = await app.client.post(
            "/dicomweb/studies",
            content=multipart([good, broken]),
            headers={"Content-Type": content_type(), **bearer(token)},
        )
        assert r.status_code == 202
        url = f"/dicomweb/studies/{study}/series/{series}/instances/{sop}"
        assert (await app.client.get(url, headers={"Accept": "application/dicom"})).status_code == 200
        assert (await app.client.get(url.replace(sop, generate_uid()))).status_code == 404
    server_side = [
        r for r in caplog.records if not r.name.startswith(("httpx", "httpcore"))
    ]  # not the client
    text = "\n".join(JsonFormatter().format(record) for record in server_side)
    assert '"route":"/dicomweb/studies"' in text  # the access log is there ...
    assert '"route":"/dicomweb/studies/{study}/series/{series}/instances/{instance}"' in text
    for canary in [*canaries, token, token.split(".")[2]]:
        assert canary not in text  # ... without patient data, UIDs or credentials
