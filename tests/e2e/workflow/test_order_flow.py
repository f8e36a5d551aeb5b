"""An order from end to end over a real socket, with the analysis service played by a real
worker process (tests/support/analysis_worker.py) that only speaks HTTP (issue #12 "Tests").

Stored by STOW-RS, one study becomes stable by its quiet period and another by commit; each
becomes an order, passes QC, is claimed and completed by the worker; the report then reads back
as the PDF the worker sent (byte for byte), its JSON and a CSV (GET /api/v1/orders/{order}/reports/
{report} by Accept), and as an Encapsulated PDF instance (PS3.3 A.45.1) that QIDO-RS finds in
the study and WADO-RS returns.  A group order over two studies gets one report and one
Encapsulated PDF in each study."""

from __future__ import annotations

import base64
import io
import time
from typing import Any

import httpx
import pydicom
from pydicom.uid import generate_uid

from tests.conftest import Server, start_server
from tests.e2e.workflow.conftest import StartWorker
from tests.support.dicomfiles import instance

ENCAPSULATED_PDF = "1.2.840.10008.5.1.4.1.1.104.1"
QUICK = {"DICOMWEB_QUEUE_HEARTBEAT_SECONDS": "2"}


def store(server: Server, study: str, count: int = 2) -> None:
    for n in range(count):
        r = httpx.post(
            server.url + "/dicomweb/studies",
            content=instance(study, seed=n),
            headers={"Content-Type": "application/dicom", **server.headers},
            timeout=30,
        )
        assert r.status_code == 200, r.text


def get(server: Server, path: str, accept: str = "application/json", **params: str) -> httpx.Response:
    r = httpx.get(server.url + path, params=params, headers={"Accept": accept, **server.headers}, timeout=30)
    assert r.status_code == 200, f"{path}: {r.status_code} {r.text[:500]}"
    return r


def study_status(server: Server, study: str) -> dict[str, Any]:
    body: dict[str, Any] = get(server, f"/api/v1/studies/{study}/status").json()
    return body


def order(server: Server, order_id: str) -> dict[str, Any]:
    body: dict[str, Any] = get(server, f"/api/v1/orders/{order_id}").json()
    return body


def wait_order(server: Server, order_id: str, wanted: str, seconds: float = 30) -> dict[str, Any]:
    deadline = time.monotonic() + seconds
    while (now := order(server, order_id))["status"] != wanted:
        assert time.monotonic() < deadline, f"order {order_id} is {now['status']}, not {wanted}"
        time.sleep(0.1)
    return now


def wait_study_order(server: Server, study: str, wanted: str, seconds: float = 30) -> str:
    """The id of the study's one order, once it is ``wanted``."""
    deadline = time.monotonic() + seconds
    while True:
        orders = study_status(server, study)["orders"]
        if len(orders) == 1 and orders[0]["status"] == wanted:
            return str(orders[0]["id"])
        if time.monotonic() > deadline:
            detail = [order(server, o["id"]) for o in orders]
            raise AssertionError(f"study {study}: orders {detail}, not one {wanted}")
        time.sleep(0.1)


def commit(server: Server, study: str, instances: int) -> None:
    r = httpx.post(
        f"{server.url}/api/v1/studies/{study}/commit",
        json={"expected_instances": instances},
        headers=server.headers,
        timeout=30,
    )
    assert r.status_code == 200, r.text


def group_order(server: Server, studies: list[str]) -> str:
    """``POST /api/v1/orders`` over the (committed) studies; its id once it is pending."""
    r = httpx.post(
        server.url + "/api/v1/orders", json={"studies": studies}, headers=server.headers, timeout=30
    )
    assert r.status_code == 201, r.text
    order_id = str(r.json()["id"])
    wait_order(server, order_id, "pending")
    return order_id


def encapsulated_pdfs(server: Server, study: str) -> list[bytes]:
    """The PDFs of the study's Encapsulated PDF instances: found by QIDO-RS, read by WADO-RS,
    parsed by pydicom, without the pad byte (EncapsulatedDocumentLength, PS3.3 C.24.2.1)."""
    found = get(
        server, f"/dicomweb/studies/{study}/instances", "application/dicom+json", SOPClassUID=ENCAPSULATED_PDF
    ).json()
    pdfs = []
    for match in found:
        series, sop = match["0020000E"]["Value"][0], match["00080018"]["Value"][0]
        url = f"/dicomweb/studies/{study}/series/{series}/instances/{sop}"
        data = get(server, url, "application/dicom; transfer-syntax=*").content
        ds = pydicom.dcmread(io.BytesIO(data))
        assert ds.SOPClassUID == ENCAPSULATED_PDF and ds.Modality == "DOC"
        assert ds.StudyInstanceUID == study and ds.PatientID == "PID-1"
        document = bytes(ds.EncapsulatedDocument)
        length = int(ds.EncapsulatedDocumentLength)
        assert len(document) == length + length % 2  # padded to even length only
        pdfs.append(document[:length])
    return pdfs


def check_report(server: Server, done: dict[str, Any]) -> dict[str, Any]:
    """The delivered order's one report reads back as the worker sent it, in each form."""
    order_id, report_id = done["order_id"], done["report_id"]
    delivered = wait_order(server, order_id, "delivered")
    assert [r["id"] for r in delivered["reports"]] == [report_id]
    url = f"/api/v1/orders/{order_id}/reports/{report_id}"
    pdf = base64.b64decode(done["pdf"])
    got = get(server, url, "application/pdf")
    assert got.headers["content-type"].startswith("application/pdf") and got.content == pdf
    assert get(server, url, "application/json").json() == done["json"]
    csv = get(server, url, "text/csv")
    assert csv.headers["content-type"].startswith("text/csv")
    if done["csv"] is not None:
        assert csv.text == done["csv"]
    else:  # made from the JSON (workflow/report_csv.py)
        assert csv.text.strip() and "hippocampus_ml" in csv.text
    for study in done["studies"]:
        assert encapsulated_pdfs(server, study) == [pdf]
    return delivered


def test_quiet_and_committed_studies_become_reports(
    tmp_path: Any, database_url: str, db: Any, start_worker: StartWorker
) -> None:
    server = start_server(database_url, tmp_path / "s", DICOMWEB_QUIET_SECONDS="1", **QUICK)
    quiet, committed = generate_uid(), generate_uid()
    store(server, quiet, 2)
    store(server, committed, 3)
    commit(server, committed, 3)
    assert study_status(server, committed)["stable_by"] == "commit"
    worker = start_worker(server.url, "--count", "2")
    lines = [worker.next_line(), worker.next_line()]
    assert worker.wait() == 0
    assert {line["studies"][0] for line in lines} == {quiet, committed}
    assert study_status(server, quiet)["stable_by"] == "quiet"
    assert [line["csv"] is not None for line in lines] == [True, False]  # one with a CSV, one without
    for line in lines:
        assert line["attempt"] == 1
        assert line["instances_read"] == (2 if line["studies"] == [quiet] else 3)
        check_report(server, line)
    listed = get(server, "/api/v1/reports").json()
    assert len(listed["items"]) == 2
    server.stop()


def test_a_group_order_has_one_report_and_a_pdf_in_each_study(
    tmp_path: Any, database_url: str, db: Any, start_worker: StartWorker
) -> None:
    server = start_server(
        database_url, tmp_path / "s", DICOMWEB_QUIET_SECONDS="3600", DICOMWEB_AUTO_ORDERS="false", **QUICK
    )
    studies = [generate_uid(), generate_uid()]
    for study in studies:
        store(server, study, 1)
        commit(server, study, 1)
    order_id = group_order(server, studies)
    worker = start_worker(server.url, "--count", "1")
    done = worker.next_line()
    assert (
        done["order_id"] == order_id
        and sorted(done["studies"]) == sorted(studies)
        and done["instances_read"] == 2
    )
    delivered = check_report(server, done)
    assert len(delivered["reports"]) == 1
    for study in studies:
        assert [o["id"] for o in study_status(server, study)["orders"]] == [order_id]
    server.stop()


def test_a_report_larger_than_the_header_budget_is_delivered(
    tmp_path: Any, database_url: str, db: Any, start_worker: StartWorker
) -> None:
    """A PDF larger than the header budget (DICOMWEB_HEADER_BUDGET_BYTES, here 1 MiB) still
    becomes an Encapsulated PDF instance: the document is the data set's last element, in memory
    already, and the report channel's session allows the header it makes."""
    server = start_server(
        database_url,
        tmp_path / "s",
        DICOMWEB_QUIET_SECONDS="0.5",
        DICOMWEB_HEADER_BUDGET_BYTES="1048576",
        **QUICK,
    )
    study = generate_uid()
    store(server, study, 1)
    order_id = wait_study_order(server, study, "pending")
    worker = start_worker(server.url, "--count", "1", "--pdf-pad", str(2 << 20))
    done = worker.next_line()
    wait_order(server, order_id, "delivered")
    pdf = get(server, f"/api/v1/orders/{order_id}/reports/{done['report_id']}", "application/pdf")
    assert pdf.content == base64.b64decode(done["pdf"])
    assert encapsulated_pdfs(server, study) == [pdf.content]  # over the budget, in the study whole
    server.stop()
