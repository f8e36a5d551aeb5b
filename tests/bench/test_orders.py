"""bench/orders: the pure parts (bodies, the report PDF, the bulk load's SQL, the goals, the
listing SQL taken from db/order_views.py)."""

from __future__ import annotations

import asyncio
import math

import pydicom

from bench.harness.outcome import Outcome
from bench.harness.sampling import ProcStats
from bench.harness.workload import Result
from bench.orders import report
from bench.orders.common import OrdersDetail, report_pdf, study_bodies, summary
from bench.orders.flow import completion_form
from bench.orders.scale import TENANTS, listing_sql, load_sql
from bench.orders.workloads import CLAIM, LISTING


def test_study_bodies_are_one_instance_studies_with_distinct_uids() -> None:
    bodies = study_bodies("t", 3, 7)
    assert len({uid for uid, _ in bodies}) == 3
    uid, body = bodies[0]
    start = body.index(b"DICM") - 128
    ds = pydicom.dcmread(__import__("io").BytesIO(body[start:]))
    assert ds.StudyInstanceUID == uid
    assert study_bodies("t", 3, 7) == bodies  # deterministic: a rerun stores the same studies


def test_the_report_pdf_is_a_pdf_of_about_the_size_asked() -> None:
    pdf = report_pdf(100_000)
    assert pdf.startswith(b"%PDF-1.4\n") and pdf.rstrip().endswith(b"%%EOF")
    assert 99_000 <= len(pdf) <= 101_000
    xref = int(pdf.rsplit(b"startxref\n", 1)[1].split(b"\n", 1)[0])
    assert pdf[xref:].startswith(b"xref\n")


def test_summary_and_the_empty_sample() -> None:
    s = summary("x", [0.001, 0.002, 0.003])
    assert s["x.p50"] == 2.0 and s["x.max"] == 3.0 and s["x.n"] == 3
    assert math.isnan(summary("x", [])["x.p95"])


def test_the_bulk_load_names_every_tenant_and_the_share_of_pending() -> None:
    sql = "\n".join(load_sql(1000, "dev"))
    assert "'dev'" in sql and all(f"'{t}'" in sql for t in TENANTS)
    assert "generate_series(1, 1000)" in sql and "'pending'" in sql
    assert "INSERT INTO order_study" in sql


def test_the_listing_sql_is_the_servers() -> None:
    sql, args = asyncio.run(listing_sql("dev", status="pending"))
    assert sql.startswith("SELECT") and "o.status = $2" in sql and "ORDER BY o.created_at DESC" in sql
    assert args[:2] == ("dev", "pending")
    sql, args = asyncio.run(listing_sql("dev", patient_id="P1"))
    assert "order_study" in sql and "P1" in args


def _outcomes(figures: dict[str, dict[str, float]]) -> dict[str, Outcome]:
    ours = Outcome("ours")
    for key, values in figures.items():
        ours.results[key] = Result(
            key,
            1,
            1,
            0,
            1.0,
            [],
            ProcStats(0, 0, 0, 0, 0.0, 0.0, 0.0, 0.0, 1.0, 1),
            0,
            extra=OrdersDetail(figures=values),
        )
    return {"ours": ours}


def test_goals_judge_the_figures_and_skip_what_did_not_run() -> None:
    outcomes = _outcomes({CLAIM: {"ratio": 0.5, "ours.orders_per_s": 80.0}})
    verdicts = {g.label: g.evaluate(outcomes)[1] for g in report.GOALS if g.ran(outcomes)}
    assert verdicts["Orders: claim→delivered, ours / bare SKIP LOCKED loop"] == "met"
    assert verdicts["Orders: claim→delivered throughput"].startswith("MISSED by 20.0")
    assert not any(g.ran(outcomes) for g in report.GOALS if g.workload == LISTING)
    rows = report.table_rows(outcomes)
    assert ["ours / bare", "0.50x", "≥ 0.25x", "met"] in rows


def test_a_failed_workload_is_reported_not_judged() -> None:
    outcomes = _outcomes({CLAIM: {"ratio": 0.5}})
    outcomes["ours"].results[CLAIM].errors.append("RuntimeError: boom")
    lines = report.markdown_lines(outcomes, {})
    assert any("`orders-claim` failed: RuntimeError: boom" in line for line in lines)
    assert report.GOALS[0].evaluate(outcomes)[0] == "n/a"


def test_the_completion_form_is_multipart_form_data_with_both_parts() -> None:
    from email.parser import BytesParser
    from email.policy import HTTP

    body, kind = completion_form(b"%PDF-1.4 x", b'{"a": 1}')
    message = BytesParser(policy=HTTP).parsebytes(f"Content-Type: {kind}\r\n\r\n".encode() + body)
    parts = {
        p.get_param("name", header="content-disposition"): p.get_payload(decode=True)
        for p in message.iter_parts()
    }
    assert parts == {"pdf": b"%PDF-1.4 x", "json": b'{"a": 1}'}


def test_a_missed_listing_goal_is_explained_from_the_plan() -> None:
    outcomes = _outcomes(
        {LISTING: {"status.p50": 9.0, "status.p95": 18.0, "patient.p50": 8.0, "patient.p95": 21.0}}
    )
    extra = outcomes["ours"].results[LISTING].extra
    extra.plans = {"patient_id": "Limit ...\nExecution Time: 0.598 ms"}
    (line,) = [x for x in report.why_lines(outcomes) if x]
    assert "(patient.p95)" in line and "0.598 ms" in line
