"""WADO-RS retrieve: progress and console lines, the docs/benchmarks.md section, environment and method."""

from __future__ import annotations

import argparse
import math
from typing import Any

from bench.harness.outcome import Outcomes
from bench.harness.sampling import MIB
from bench.harness.workload import Context
from bench.wado.goals import (
    FRAME_KEYS,
    FRAME_LABELS,
    FRAME_P50_MS,
    WORKLOAD_KEYS,
    frame_p50,
    goal_rows,
    measured_targets,
    verdict,
)
from bench.wado.measure import BUDGET_SECONDS, MIN_REQUESTS, Measure, WadoDetail, details
from bench.wado.workloads import frame_form


def _ms(value: float) -> str:
    if math.isnan(value):
        return "-"
    return f"{value:.2f}" if value < 10 else f"{value:.1f}" if value < 100 else f"{value:.0f}"


def _status(m: Measure | None) -> str:
    if m is None:
        return "not run"
    text = f"{len(m.errors)} errors" if m.errors else "ok"
    codes = ", ".join(f"{code} x{n}" for code, n in sorted(m.statuses.items()) if code != 200)
    if codes:
        text += f" (HTTP {codes})"
    if m.quirks and any("fallback" in q for q in m.quirks):
        text += ", fallback Accept"
    if m.capped:
        text += f", time budget: {len(m.latencies)} of {len(m.latencies) + m.capped} requests"
    return text


def _parts(m: Measure) -> str:
    if not m.parts:
        return "-"
    lo, hi = min(m.parts), max(m.parts)
    return str(lo) if lo == hi else f"{lo}-{hi}"


def _rss(m: Measure) -> tuple[str, str, str]:
    proc = m.proc
    if proc is None:
        return "-", "-", "-"
    aux = f"{proc.aux_growth / MIB:.0f}" if proc.aux_peak else "-"
    return f"{proc.app_peak / MIB:.0f}", f"{proc.app_growth / MIB:.0f}", aux


def _table(header: list[str], rows: list[list[str]]) -> list[str]:
    return ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)] + [
        "| " + " | ".join(r) + " |" for r in rows
    ]


def _study_rows(outcomes: Outcomes) -> list[list[str]]:
    rows = []
    for t, d in measured_targets(outcomes, "wado-study"):
        m = d.measures["study"]
        peak, growth, _aux = _rss(m)
        cpu = (
            f"{(m.proc.app_cpu + m.proc.aux_cpu) / (m.body_bytes / 1e9):.2f}"
            if m.proc and m.body_bytes
            else "-"
        )
        other = f"{m.proc.foreign_cpu:.0%}" if m.proc else "-"
        client = f"{m.proc.client_cpu / m.proc.wall:.0%}" if m.proc and m.proc.wall else "-"
        rows.append(
            [
                t,
                f"{m.mb_per_s:.0f}" if m.latencies else "-",
                _ms(m.latency(50)),
                _ms(m.latency(95)),
                _ms(float(sum(m.first_byte) / len(m.first_byte)) * 1000 if m.first_byte else math.nan),
                str(len(m.latencies)),
                _parts(m),
                peak,
                growth,
                cpu,
                client,
                other,
                _status(m),
            ]
        )
    return rows


STUDY_HEADER = [
    "target",
    "MB/s",
    "p50 ms",
    "p95 ms",
    "first byte ms (mean)",
    "requests",
    "parts/response",
    "peak RSS MiB",
    "RSS growth MiB",
    "CPU s/GB",
    "client CPU",
    "other CPU",
    "status",
]


def _metadata_rows(outcomes: Outcomes) -> list[list[str]]:
    rows = []
    for t, d in measured_targets(outcomes, "wado-metadata"):
        m = d.measures["metadata"]
        size = f"{m.body_bytes / len(m.latencies) / 1e3:.0f}" if m.latencies else "-"
        rows.append(
            [t, _ms(m.latency(50)), _ms(m.latency(95)), str(len(m.latencies)), _parts(m), size, _status(m)]
        )
    return rows


METADATA_HEADER = ["target", "p50 ms", "p95 ms", "requests", "instances/response", "kB/response", "status"]


def _frame_cell(d: WadoDetail | None, key: str) -> str:
    if d is None:
        return "-"
    m = d.measures.get(key)
    if m is None:
        return "-"
    if not m.latencies:
        return _status(m)
    part = m.part_type.removeprefix("application/") or "no Content-Type"
    text = f"{_ms(m.latency(50))} / {_ms(m.latency(95))} ({frame_form(m)}; {part})"
    status = _status(m)
    return text if status == "ok" else f"{text}; {status}"


def _frame_rows(outcomes: Outcomes) -> tuple[list[str], list[list[str]]]:
    targets = measured_targets(outcomes, "wado-frames")
    header = ["frame", "request"] + [f"{t} p50 / p95 ms (returned)" for t, _ in targets]
    header += ["goal", "verdict"]
    rows = []
    keys = [k for k in FRAME_KEYS if any(k in d.measures for _, d in targets)]
    for key in keys:
        example = next((d.measures[key].path for _, d in targets if key in d.measures), "")
        frame_number = example.rsplit("/", 1)[-1]
        row = [FRAME_LABELS.get(key, key), f"`…/instances/{{sop}}/frames/{frame_number}`"]
        row += [_frame_cell(d, key) for _t, d in targets]
        value = frame_p50(key)(outcomes)
        row += [f"ours p50 ≤ {FRAME_P50_MS:g} ms", verdict(value, FRAME_P50_MS, False, "ms")]
        rows.append(row)
    return header, rows


def _probe_rows(outcomes: Outcomes) -> list[list[str]]:
    targets = [d for _t, d in measured_targets(outcomes, "wado-frames") if d.probes]
    labels = list(dict.fromkeys(label for d in targets for label in d.probes))
    return [[label, *(d.probes.get(label, "-").replace("|", "/") for d in targets)] for label in labels]


def _big_rows(outcomes: Outcomes) -> list[list[str]]:
    rows = []
    for t, d in measured_targets(outcomes, "wado-big"):
        m = d.measures["big"]
        load = d.load
        peak, growth, aux = _rss(m)
        rows.append(
            [
                t,
                f"{load.payload_bytes / 2**30:.2f}" if load else "-",
                f"{load.seconds:.1f}" if load else "-",
                f"{m.elapsed:.1f}" if m.latencies else "-",
                f"{m.mb_per_s:.0f}" if m.latencies else "-",
                f"{m.first_byte[0] * 1000:.0f}" if m.first_byte else "-",
                _parts(m),
                peak,
                growth,
                aux,
                _status(m),
            ]
        )
    return rows


BIG_HEADER = [
    "target",
    "GiB stored",
    "stored in s",
    "retrieve s",
    "MB/s",
    "first byte ms",
    "parts",
    "peak RSS MiB",
    "RSS growth MiB",
    "aux growth MiB",
    "status",
]


def _quirk_lines(outcomes: Outcomes) -> list[str]:
    out = []
    for workload in ("wado-study", "wado-metadata", "wado-frames", "wado-big"):
        for t, d in measured_targets(outcomes, workload):
            for m in d.measures.values():
                for q in dict.fromkeys(m.quirks):
                    out.append(f"- **{t}**, {workload} {m.key}: {q}")
                for e in list(dict.fromkeys(m.errors))[:3]:
                    out.append(f"- **{t}**, {workload} {m.key}: ERROR {e}")
            if d.load is not None:
                out += [f"- **{t}**, {workload}: ERROR {e}" for e in d.load.errors[:3]]
    return out


# ---------------------------------------------------------------------------
# Console and markdown


def progress_lines(target: str, result: Any) -> list[str]:
    d = details(result)
    if d is None:
        return []
    lines = []
    if d.load is not None:
        lines.append(
            f"[{target}] {d.workload}: stored {d.load.instances} instances "
            f"({d.load.payload_bytes / 1e6:.0f} MB) in {d.load.seconds:.1f} s"
        )
    for m in d.measures.values():
        growth = f", RSS growth {m.proc.app_growth / MIB:.0f} MiB" if m.proc else ""
        rate = f"{m.mb_per_s:.0f} MB/s, " if m.key in ("study", "big") and m.latencies else ""
        lines.append(
            f"[{target}]   {m.key:<10} {rate}p50 {_ms(m.latency(50))} ms  p95 {_ms(m.latency(95))} ms  "
            f"n={len(m.latencies)} parts={_parts(m)} {_status(m)}{growth}"
        )
        lines += [f"[{target}]     quirk: {q}" for q in m.quirks[:3]]
        lines += [f"[{target}]     ERROR {e}" for e in m.errors[:3]]
    return lines


def console_lines(outcomes: Outcomes) -> list[str]:
    if not any(measured_targets(outcomes, w) for w in WORKLOAD_KEYS):
        return []
    lines = ["", "WADO-RS retrieve"]
    for t, d in measured_targets(outcomes, "wado-study"):
        m = d.measures["study"]
        lines.append(f"  study     {t:<19} {m.mb_per_s:6.0f} MB/s  p50 {_ms(m.latency(50))} ms  {_status(m)}")
    for t, d in measured_targets(outcomes, "wado-metadata"):
        m = d.measures["metadata"]
        lines.append(
            f"  metadata  {t:<19} p50 {_ms(m.latency(50))} ms  p95 {_ms(m.latency(95))} ms  {_status(m)}"
        )
    for t, d in measured_targets(outcomes, "wado-frames"):
        for m in d.measures.values():
            lines.append(
                f"  frame     {t:<19} {m.key:<10} p50 {_ms(m.latency(50))} ms  p95 {_ms(m.latency(95))} ms  "
                f"{_status(m)}"
            )
    for t, d in measured_targets(outcomes, "wado-big"):
        m = d.measures["big"]
        growth = f"{m.proc.app_growth / MIB:.0f}" if m.proc else "-"
        lines.append(f"  big       {t:<19} {m.mb_per_s:6.0f} MB/s  RSS growth {growth} MiB  {_status(m)}")
    lines += ["  goals:"] + [f"    {r[0]:<58} {r[1]:>10} (goal {r[2]}): {r[3]}" for r in goal_rows(outcomes)]
    return lines


def markdown_lines(outcomes: Outcomes, env: dict[str, str]) -> list[str]:
    if not any(measured_targets(outcomes, w) for w in WORKLOAD_KEYS):
        return []
    out = [
        "",
        "## WADO-RS retrieve",
        "",
        "Each target stores the retrieve corpus by STOW on a fresh server, then answers the requests "
        "below; the 2 GiB study has a fresh server of its own. Latencies are measured in the client from "
        "sending the request to having the whole body. See Method for the details.",
        "",
        *_table(["goal", "measured", "target", "verdict"], goal_rows(outcomes)),
    ]
    if rows := _study_rows(outcomes):
        out += [
            "",
            f"### Whole-study retrieve [wado-study]: {env.get('Retrieve study', '')}",
            "",
            "`GET /studies/{study}`, "
            '`Accept: multipart/related; type="application/dicom"; transfer-syntax=*`; bodies streamed and '
            "counted, not kept. MB/s is 10^6 body bytes per second of wall time over all measured requests; "
            "CPU s/GB is the server's (and its database's) CPU time per GB sent; client CPU is the harness' "
            "own use, in share of one core.",
            "",
            *_table(STUDY_HEADER, rows),
        ]
    if rows := _metadata_rows(outcomes):
        out += [
            "",
            "### Study metadata [wado-metadata]",
            "",
            "`GET /studies/{study}/metadata`, `Accept: application/dicom+json`, 100-instance study, one "
            "request at a time over one keep-alive connection; the response must list every instance.",
            "",
            *_table(METADATA_HEADER, rows),
        ]
    header, rows = _frame_rows(outcomes)
    if rows:
        out += [
            "",
            "### Single frames [wado-frames]",
            "",
            '`GET …/frames/{n}`, `Accept: multipart/related; type="application/octet-stream"; '
            "transfer-syntax=*`, one request at a time over one keep-alive connection. '(returned)' says "
            "whether the frame came back decoded (native bytes) or as stored (the compressed fragment); "
            "the size must be one of the two.",
            "",
            *_table(header, rows),
        ]
        missing = next((d.missing for _, d in measured_targets(outcomes, "wado-frames") if d.missing), ())
        out += [f"- not generated here: {m}" for m in missing]
    if rows := _big_rows(outcomes):
        note = next((d.notes[0] for _, d in measured_targets(outcomes, "wado-big") if d.notes), "")
        out += [
            "",
            "### A 2 GiB study to a slow client [wado-big]",
            "",
            "The study is stored one instance per STOW request; then one `GET /studies/{study}` "
            f"({note}) while the server's process tree is sampled every 50 ms. RSS growth is the peak minus "
            "the idle value just before the request; 'aux' is the target's own PostgreSQL.",
            "",
            *_table(BIG_HEADER, rows),
        ]
    if probes := _probe_rows(outcomes):
        targets = [t for t, d in measured_targets(outcomes, "wado-frames") if d.probes]
        out += [
            "",
            "### Accept headers: what each target answers (not timed)",
            "",
            "One request each, after the frames were measured; `ELE` is Explicit VR Little Endian, the "
            "transfer syntax the CT instance is stored in. '1 part(s) X, N B' is the first part's "
            "Content-Type and size.",
            "",
            *_table(["request", *targets], probes),
        ]
    quirks = _quirk_lines(outcomes)
    out += ["", "Fallbacks and errors in the measured requests:", ""]
    out += quirks or ["- none: every target answered every measured request with the Accept asked for."]
    return out


def corpus_lines(args: argparse.Namespace, ctx: Context, workloads: list[str]) -> dict[str, str]:
    opts = ctx.wado
    if opts is None:
        return {}
    out: dict[str, str] = {}
    corpus = opts.corpus
    if corpus is not None:
        s = corpus.study_series
        out["Retrieve study"] = (
            f"1 series of {len(s.instances)} 512x512 16-bit CT instances "
            f"({s.nbytes / len(s.instances) / 1e3:.1f} kB each, {s.nbytes / 1e6:.0f} MB)"
        )
        out["Metadata study"] = f"1 series of {len(corpus.meta_series.instances)} such instances"
        out["Frame instances"] = "; ".join(
            f"{f.title} ({len(f.data) / 1e6:.1f} MB, frame {f.frame})" for f in corpus.frames
        )
    if "wado-big" in workloads:
        big = opts.big
        out["Retrieve big study"] = (
            f"{big.count} instances of 256 frames 512x512 16-bit ({big.nbytes / 2**30:.2f} GiB), "
            + (
                f"read by a client throttled to {opts.big_rate:g} MB/s"
                if opts.big_rate
                else "read unthrottled"
            )
        )
    if any(w in workloads for w in ("wado-study", "wado-metadata", "wado-frames")):
        out["Retrieve requests"] = (
            f"whole study {opts.study_requests} ({opts.warmup} warm-up per client), metadata "
            f"{opts.metadata_requests}, each frame {opts.frame_requests} ({opts.warmup} warm-up)"
        )
    return out


def method_lines(args: argparse.Namespace, ctx: Context, workloads: list[str]) -> list[str]:
    opts, concurrency = ctx.wado, args.concurrency
    if opts is None:
        return []
    shared = [
        "- Everything runs inside a private network namespace (`unshare --net`, loopback only); client "
        "and servers share the same CPUs, so the client's own cost is part of every figure. Peak RSS / "
        "growth: sum of RSS over the server's process tree, sampled every 50 ms. other CPU: share of all "
        "CPUs used by processes outside the benchmark during the measurement."
    ]
    return (shared if not any(w.startswith("stow") for w in workloads) else []) + [
        "- WADO-RS retrieve: every target gets the same corpus by STOW (one series per request) on a fresh "
        "server, then the whole-study retrieves (" + str(concurrency) + " clients in flight, each streaming "
        "and counting bytes and multipart parts; every response must hold every instance), the study "
        "metadata (sequential, the JSON must list every instance) and the frames (sequential, exactly one "
        "part whose size is the decoded or the stored frame). Paths are the same below `/dicomweb` (ours) "
        "and `/dicom-web` (Orthanc). A kind of request stops after "
        f"{BUDGET_SECONDS:g} s of measured requests (at least {MIN_REQUESTS}).",
        "- Accept headers are the ones the goals name (`transfer-syntax=*`). When a target refuses one "
        "(Orthanc answers some with 400/406), the refusal is recorded and the same media type without the "
        "transfer-syntax parameter is measured instead; such rows say 'fallback Accept'.",
        "- The measured retrieve requests go through a lean HTTP/1.1 client (bench/harness/rawhttp.py: one "
        "keep-alive connection per client, 1 MiB reads, nothing kept but what a check needs): httpx "
        "spent a whole core reading ~0.8 GB/s and added about 1 ms to every small request, and against "
        "Orthanc it showed 40-100 ms frame latencies that this client does not see (Nagle and delayed "
        "ACK, presumably). STOW loads and the Accept probes use httpx.",
        "- Orthanc's DICOMweb plugin and ours run at their default settings. The Accept probe table is "
        "one untimed request per row.",
        "- 2 GiB study (ours and orthanc-sqlite only): stored one 128 MiB instance per STOW request "
        "(Content-Length set, not chunked), then retrieved whole by one client reading at a capped rate, "
        "so the server must hold back rather than buffer; the goal is on the RSS growth of our server's "
        "process tree (uvicorn workers included).",
    ]
