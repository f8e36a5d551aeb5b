"""A real analysis-service client, run as its own process: the external party of the order tests.

``python -m tests.support.analysis_worker --url U --client-id I --secret S [--count N]
[--die-after claim|metadata|heartbeat|complete] [--work-seconds S] [--csv always|never|alternate]
[--pdf-pad BYTES] [--deadline S]``

It only speaks HTTP (README, "Analysis workers"; issue #12 §3): a token by client credentials
(RFC 6749 §4.4, ``POST /oauth/token``), a long poll of ``POST /api/v1/jobs/claim``, the job's
studies read with the job's own ``access_token`` (WADO-RS metadata, PS3.18 §10.4), a heartbeat
(more while it "works"), and ``complete`` with a generated one-page PDF, a JSON result and, for
every other job by default, a CSV.  After each completion it prints one JSON line (flushed):
the job, order and report ids, the attempt, the studies and how many instances it read, the
PDF (base64) and the JSON and CSV it sent, so a test can compare what the server hands back.

``--die-after`` ends the process abruptly (``os._exit``, as kill -9 would: no clean-up, the
lease held) right after that step, for the crash tests.  While the server is down (a test
restarts it on the same port) every request is tried again until ``--deadline``; a completion
is idempotent on the server, so sending it again after a lost answer is safe.

Also the test side: ``create_client`` makes the analysis client with the real CLI
(``dicomweb-server clients create --analysis``), ``start`` runs this module as a process.
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import json
import os
import queue
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import httpx

ROOT = Path(__file__).resolve().parent.parent.parent
STEPS = ("claim", "metadata", "heartbeat", "complete")
DIED = 17  # the exit status of a --die-after


class Deadline(Exception):
    """The worker's overall time ran out."""


def make_pdf(text: str, pad: int = 0) -> bytes:
    """A small valid one-page PDF (ISO 32000-1 §7.5: header, objects, xref table, trailer), as
    the CLI walk-through makes one; ``pad`` bytes of an unreferenced stream make it larger."""
    line = text.replace("\\", "\\\\").replace("(", "\\(").replace(")", "\\)").encode()
    content = b"BT /F1 14 Tf 72 770 Td (" + line + b") Tj ET"
    objects = [
        b"<< /Type /Catalog /Pages 2 0 R >>",
        b"<< /Type /Pages /Kids [3 0 R] /Count 1 >>",
        b"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 595 842] /Contents 4 0 R"
        b" /Resources << /Font << /F1 5 0 R >> >> >>",
        b"<< /Length %d >>\nstream\n%s\nendstream" % (len(content), content),
        b"<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica >>",
    ]
    if pad:
        filler = hashlib.shake_256(text.encode()).digest(pad)  # incompressible, deterministic
        objects.append(b"<< /Length %d >>\nstream\n%s\nendstream" % (len(filler), filler))
    pdf, offsets = b"%PDF-1.4\n", []
    for n, body in enumerate(objects, 1):
        offsets.append(len(pdf))
        pdf += b"%d 0 obj\n%s\nendobj\n" % (n, body)
    xref, size = len(pdf), len(objects) + 1
    pdf += b"xref\n0 %d\n0000000000 65535 f\r\n" % size
    pdf += b"".join(b"%010d 00000 n\r\n" % o for o in offsets)
    pdf += b"trailer\n<< /Size %d /Root 1 0 R >>\nstartxref\n%d\n%%%%EOF\n" % (size, xref)
    return pdf


class Worker:
    """One analysis worker: its HTTP client, its token, its settings."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.http = httpx.Client(base_url=args.url, timeout=60)
        self.ends = time.monotonic() + args.deadline
        self.token = ""
        self.completed = 0

    def _send(self, method: str, url: str, **kwargs: Any) -> httpx.Response:
        """The request, again while the server is unreachable or restarting (502-504)."""
        while True:
            if time.monotonic() > self.ends:
                raise Deadline(f"{method} {url}")
            try:
                r = self.http.request(method, url, **kwargs)
            except httpx.TransportError:
                time.sleep(0.2)
                continue
            if r.status_code in (502, 503, 504):
                time.sleep(0.2)
                continue
            return r

    def authorize(self) -> None:
        r = self._send(
            "POST",
            "/oauth/token",
            data={"grant_type": "client_credentials"},
            auth=(self.args.client_id, self.args.secret),
        )
        r.raise_for_status()
        self.token = r.json()["access_token"]

    def _api(self, method: str, url: str, **kwargs: Any) -> httpx.Response:
        """With the analysis client's own token, fetched again once when it is refused."""
        for _ in range(2):
            r = self._send(method, url, headers={"Authorization": f"Bearer {self.token}"}, **kwargs)
            if r.status_code != 401:
                return r
            self.authorize()
        return r

    def claim(self) -> dict[str, Any] | None:
        r = self._api("POST", "/api/v1/jobs/claim", json={"worker": self.args.name, "wait": self.args.wait})
        if r.status_code == 204:
            return None
        r.raise_for_status()
        job: dict[str, Any] = r.json()
        return job

    def read_studies(self, job: dict[str, Any]) -> int:
        """Every instance's metadata of the job's studies, with the job's token (WADO-RS)."""
        count = 0
        for study in job["studies"]:
            r = self._send(
                "GET",
                study["metadata_url"],
                headers={
                    "Authorization": f"Bearer {job['access_token']}",
                    "Accept": "application/dicom+json",
                },
            )
            r.raise_for_status()
            count += len(r.json())
        return count

    def heartbeat(self, job: dict[str, Any]) -> bool:
        r = self._api("POST", f"/api/v1/jobs/{job['id']}/heartbeat")
        if r.status_code == 409:
            return False  # the lease is lost
        r.raise_for_status()
        job["access_token"] = r.json()["access_token"]
        return True

    def work(self, job: dict[str, Any]) -> bool:
        """The analysis itself: ``--work-seconds`` of waiting, heart-beating every second."""
        until = time.monotonic() + self.args.work_seconds
        while time.monotonic() < until:
            time.sleep(min(1.0, max(0.0, until - time.monotonic())))
            if not self.heartbeat(job):
                return False
        return True

    def results(self, job: dict[str, Any], instances: int) -> dict[str, tuple[str, bytes, str]]:
        pdf = make_pdf(f"Brain MRI analysis of order {job['order_id']}, job {job['id']}", self.args.pdf_pad)
        result = {"order_id": job["order_id"], "instances": instances, "findings": [{"hippocampus_ml": 3.1}]}
        files = {
            "pdf": ("report.pdf", pdf, "application/pdf"),
            "json": ("result.json", json.dumps(result).encode(), "application/json"),
        }
        mode = self.args.csv
        if mode == "always" or (mode == "alternate" and self.completed % 2 == 0):
            csv = f"structure,volume_ml\r\nhippocampus,3.1\r\ninstances,{instances}\r\n"
            files["csv"] = ("regions.csv", csv.encode(), "text/csv")
        return files

    def complete(
        self, job: dict[str, Any], files: dict[str, tuple[str, bytes, str]]
    ) -> dict[str, Any] | None:
        r = self._api("POST", f"/api/v1/jobs/{job['id']}/complete", files=files)
        if r.status_code == 409:
            return None  # the lease ran out first: the order went back to pending
        r.raise_for_status()
        answer: dict[str, Any] = r.json()
        return answer

    def die_after(self, step: str) -> None:
        if self.args.die_after == step:
            sys.stdout.flush()
            os._exit(DIED)

    def run_one(self, job: dict[str, Any]) -> None:
        self.die_after("claim")
        instances = self.read_studies(job)
        self.die_after("metadata")
        if not self.heartbeat(job):
            return
        self.die_after("heartbeat")
        if not self.work(job):
            return
        files = self.results(job, instances)
        answer = self.complete(job, files)
        if answer is None:
            print(json.dumps({"job_id": job["id"], "lost": True}), file=sys.stderr, flush=True)
            return
        self.completed += 1
        csv = files.get("csv")
        line = {
            "job_id": job["id"],
            "order_id": job["order_id"],
            "report_id": answer["report_id"],
            "attempt": job["attempt"],
            "studies": [s["study_uid"] for s in job["studies"]],
            "instances_read": instances,
            "pdf": base64.b64encode(files["pdf"][1]).decode(),
            "json": json.loads(files["json"][1]),
            "csv": csv[1].decode() if csv else None,
        }
        print(json.dumps(line), flush=True)
        self.die_after("complete")

    def run(self) -> None:
        self.authorize()
        while self.args.count is None or self.completed < self.args.count:
            job = self.claim()
            if job is not None:
                self.run_one(job)


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="analysis_worker", description=__doc__.split("\n\n")[0])
    p.add_argument("--url", required=True, help="the server's base URL")
    p.add_argument("--client-id", required=True)
    p.add_argument("--secret", required=True)
    p.add_argument("--name", default=f"test-worker-{os.getpid()}", help="the worker's name in its claims")
    p.add_argument("--count", type=int, default=None, help="exit after completing this many jobs")
    p.add_argument("--die-after", choices=STEPS, default=None, help="exit abruptly right after this step")
    p.add_argument("--wait", type=float, default=5.0, help="a claim's long poll, in seconds")
    p.add_argument(
        "--work-seconds", type=float, default=0.0, help="time 'analysing', heart-beating each second"
    )
    p.add_argument("--csv", choices=("always", "never", "alternate"), default="alternate")
    p.add_argument("--pdf-pad", type=int, default=0, help="make each PDF this many bytes larger")
    p.add_argument("--deadline", type=float, default=120.0, help="give up (exit 2) after this many seconds")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    worker = Worker(parse(argv))
    try:
        worker.run()
    except Deadline as exc:
        print(f"analysis_worker: deadline reached during {exc}", file=sys.stderr, flush=True)
        sys.exit(2)


# The test side: the analysis client, and this worker as a process.


def create_client(database_url: str, data: Path) -> tuple[str, str]:
    """(client id, secret) of a new analysis client, made by the real CLI."""
    env = {**os.environ, "DATABASE_URL": database_url, "DICOMWEB_DATA_DIR": str(data)}
    data.mkdir(parents=True, exist_ok=True)
    done = subprocess.run(
        [sys.executable, "-m", "dicomweb_server.cli", "clients", "create", "--analysis"],
        env=env,
        cwd=ROOT,
        capture_output=True,
        timeout=60,
        check=True,
    )
    made = json.loads(done.stdout.decode().strip().splitlines()[-1])
    return str(made["client_id"]), str(made["client_secret"])


@dataclass
class Process:
    """A running worker process and the JSON lines it printed (read by a thread, so a test
    waits for the next one with a timeout)."""

    process: subprocess.Popen[str]
    lines: queue.Queue[str | None]
    reader: threading.Thread

    def next_line(self, seconds: float = 30.0) -> dict[str, Any]:
        """The next completion it reports; fails if it exits or is silent for ``seconds``."""
        try:
            line = self.lines.get(timeout=seconds)
        except queue.Empty:
            raise AssertionError(f"the worker printed nothing for {seconds} s") from None
        if line is None:
            raise AssertionError(f"the worker exited ({self.process.wait(5)}) before completing a job")
        parsed: dict[str, Any] = json.loads(line)
        return parsed

    def wait(self, seconds: float = 30.0) -> int:
        return self.process.wait(seconds)

    def kill(self) -> None:
        """Killed if still running; its pipe closed once the reader has seen its end."""
        if self.process.poll() is None:
            self.process.kill()
        self.process.wait(10)
        self.reader.join(10)
        if self.process.stdout is not None:
            self.process.stdout.close()


def _pump(out: IO[str], lines: queue.Queue[str | None]) -> None:
    for line in out:
        lines.put(line)
    lines.put(None)


def start(url: str, client_id: str, secret: str, *options: str, log: Path | None = None) -> Process:
    """This module as a process, its JSON lines on a pipe and its errors in ``log``."""
    err: IO[bytes] | int = open(log, "ab") if log else subprocess.DEVNULL  # noqa: SIM115
    command = [sys.executable, "-m", "tests.support.analysis_worker", "--url", url]
    command += ["--client-id", client_id, "--secret", secret, *options]
    process = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.PIPE, stderr=err, text=True, bufsize=1)
    if not isinstance(err, int):
        err.close()
    lines: queue.Queue[str | None] = queue.Queue()
    assert process.stdout is not None
    reader = threading.Thread(target=_pump, args=(process.stdout, lines), daemon=True)
    reader.start()
    return Process(process, lines, reader)


if __name__ == "__main__":
    main()
