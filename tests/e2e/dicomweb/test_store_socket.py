"""STOW-RS through a real uvicorn socket: third-party clients, pydicom's corpus, a 2 GiB body, kill -9."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
import threading
import time
import warnings
from collections.abc import Iterator
from pathlib import Path

import asyncpg
import httpx
import psutil
import pydicom
import pytest
from pydicom.uid import generate_uid

from tests.conftest import ROOT, Server, start_server
from tests.support.dicomfiles import BOUNDARY, content_type, instance, multipart

STUDIES = "/dicomweb/studies"


def instance_url(server: Server, study: str, series: str, sop: str) -> str:
    return f"{server.url}/dicomweb/studies/{study}/series/{series}/instances/{sop}"


def fetch(server: Server, study: str, series: str, sop: str) -> httpx.Response:
    return httpx.get(
        instance_url(server, study, series, sop),
        headers={"Accept": "application/dicom; transfer-syntax=*", **server.headers},
        timeout=60,
    )


def test_dicomweb_client_store_and_retrieve(live_server: Server) -> None:
    from dicomweb_client.api import DICOMwebClient

    client = DICOMwebClient(url=f"{live_server.url}/dicomweb", headers=live_server.headers)
    study = generate_uid()
    datasets = [pydicom.dcmread(pydicom.filebase.DicomBytesIO(instance(study, seed=i))) for i in range(3)]
    response = client.store_instances(datasets=datasets)
    assert len(response.ReferencedSOPSequence) == 3
    assert "FailedSOPSequence" not in response
    for ds in datasets:
        back = client.retrieve_instance(ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID)
        assert back.SOPInstanceUID == ds.SOPInstanceUID
        assert back.PixelData == ds.PixelData


def test_raw_multipart_as_curl_sends_it(live_server: Server, curl: str, tmp_path: Path) -> None:
    files = [instance(seed=i) for i in range(2)]
    body = tmp_path / "body.bin"
    body.write_bytes(multipart(files))
    for extra in ([], ["-H", "Transfer-Encoding: chunked"]):
        out = subprocess.run(
            [
                curl,
                "-sS",
                "-X",
                "POST",
                f"{live_server.url}{STUDIES}",
                "-H",
                f"Content-Type: {content_type(quoted=False)}",
                "-H",
                f"Authorization: {live_server.headers['Authorization']}",
                "--data-binary",
                f"@{body}",
                "-w",
                "\n%{http_code}",
                *extra,
            ],
            capture_output=True,
            check=True,
            timeout=60,
        )
        text, status = out.stdout.decode().rsplit("\n", 1)
        assert status == "200", text
        assert len(json.loads(text)["00081199"]["Value"]) == 2


def corpus() -> list[Path]:
    """pydicom's bundled test files (no download): images in every transfer syntax, charsets, broken files."""
    data = Path(pydicom.data.__file__).parent
    return sorted(p for d in ("test_files", "charset_files") for p in (data / d).rglob("*") if p.is_file())


def test_pydicom_corpus_stores_and_round_trips_or_fails_per_instance(
    db: asyncpg.Pool, database_url: str, tmp_path: Path
) -> None:
    """Every file either round-trips byte for byte (after the preamble) or gets a per-instance failure.

    Several corpus files share SOP Instance UIDs in different transfer syntaxes, so this server
    overwrites duplicates: each file is then checked against what it stored.
    """
    server = start_server(database_url, tmp_path / "corpus", DICOMWEB_DUPLICATE_POLICY="overwrite")
    stored, failures = 0, {}
    with httpx.Client(timeout=60, headers=server.headers) as client:
        for path in corpus():
            data = path.read_bytes()
            r = client.post(server.url + STUDIES, content=data, headers={"Content-Type": "application/dicom"})
            assert r.status_code in (200, 409), (path.name, r.status_code, r.text)
            body = r.json()
            if r.status_code == 409:
                (item,) = body.get("00081198", body.get("0008119A", {})).get("Value")
                failures[path.name] = item["00081197"]["Value"][0]
                continue
            stored += 1
            url = body["00081199"]["Value"][0]["00081190"]["Value"][0]
            back = client.get(url, headers={"Accept": "application/dicom; transfer-syntax=*"})
            assert back.status_code == 200, path.name
            assert back.content[128:] == data[128:], path.name
            assert back.content[:128] == bytes(128)
    server.stop()
    assert stored >= 80  # the corpus is mostly valid Part-10 data ...
    assert failures["no_meta.dcm"] == failures["README.txt"] == 0xC000  # ... and some of it is not
    assert set(failures.values()) <= {0xC000, 0xA900, 0xC122}, failures


def big_part(size: int, seed: int) -> tuple[bytes, Iterator[bytes]]:
    """A Part-10 header whose Pixel Data value is ``size`` bytes, streamed in 1 MiB chunks."""
    header = instance(size=2, seed=seed)
    pixel_tag = b"\xe0\x7f\x10\x00OW\x00\x00"
    at = header.rindex(pixel_tag)
    prefix = header[:at] + pixel_tag + size.to_bytes(4, "little")
    block = hashlib.sha256(str(seed).encode()).digest() * 32768  # 1 MiB, not all zeros

    def chunks() -> Iterator[bytes]:
        yield prefix
        left = size
        while left:
            n = min(left, len(block))
            yield block[:n]
            left -= n

    return prefix, chunks()


def test_two_gib_body_streams_with_flat_memory(live_server: Server) -> None:
    """4 parts of 512 MiB: memory stays flat (the benchmark records the exact figure)."""
    parts, part_size = 4, 512 * 1024 * 1024
    proc = psutil.Process(live_server.process.pid)
    baseline = proc.memory_info().rss
    peak = baseline
    stop = threading.Event()

    def sample() -> None:
        nonlocal peak
        while not stop.is_set():
            peak = max(peak, proc.memory_info().rss)
            time.sleep(0.05)

    digests = []

    def body() -> Iterator[bytes]:
        for i in range(parts):
            _, chunks = big_part(part_size, i)
            digest = hashlib.sha256()
            yield f"--{BOUNDARY}\r\nContent-Type: application/dicom\r\n\r\n".encode()
            for n, chunk in enumerate(chunks):
                digest.update(bytes(128) + chunk[128:] if n == 0 else chunk)
                yield chunk
            digests.append(digest.digest())
            yield b"\r\n"
        yield f"--{BOUNDARY}--\r\n".encode()

    sampler = threading.Thread(target=sample)
    sampler.start()
    try:
        r = httpx.post(
            live_server.url + STUDIES,
            content=body(),
            headers={"Content-Type": content_type(), **live_server.headers},
            timeout=600,
        )
    finally:
        stop.set()
        sampler.join()
    assert r.status_code == 200, r.text
    assert len(r.json()["00081199"]["Value"]) == parts
    growth = (peak - baseline) / 2**20
    assert growth < 150, f"server RSS grew by {growth:.0f} MiB while streaming 2 GiB"
    # The index recorded the SHA-256 of exactly the bytes streamed in.
    shas = [
        bytes(row[0]) for row in fetch_rows(live_server.env["DATABASE_URL"], "SELECT sha256 FROM instance")
    ]
    assert sorted(shas) == sorted(digests)


def fetch_rows(url: str, sql: str) -> list[asyncpg.Record]:
    import asyncio

    async def run() -> list[asyncpg.Record]:
        conn = await asyncpg.connect(url)
        try:
            return list(await conn.fetch(sql))
        finally:
            await conn.close()

    return asyncio.run(run())


def test_sigkill_mid_upload_loses_nothing_acknowledged(
    db: asyncpg.Pool, database_url: str, tmp_path: Path
) -> None:
    data = tmp_path / "data"
    server = start_server(database_url, data)
    study, series = generate_uid(), generate_uid()
    acked = [instance(study, series, seed=i) for i in range(5)]
    r = httpx.post(
        server.url + STUDIES,
        content=multipart(acked),
        headers={"Content-Type": content_type(), **server.headers},
    )
    assert r.status_code == 200

    # A second upload is cut off by kill -9 after several parts were received and written.
    pending = [instance(study, series, seed=100 + i, size=256) for i in range(6)]
    sent_parts, killed = threading.Event(), threading.Event()

    def slow_body() -> Iterator[bytes]:
        whole = multipart(pending)
        yield whole[: len(whole) * 2 // 3]
        sent_parts.set()
        killed.wait(30)  # the server dies while waiting for the rest
        yield whole[len(whole) * 2 // 3 :]

    def upload() -> None:
        with warnings.catch_warnings(), pytest.raises(httpx.HTTPError):
            httpx.post(
                server.url + STUDIES,
                content=slow_body(),
                headers={"Content-Type": content_type(), **server.headers},
                timeout=60,
            )

    uploader = threading.Thread(target=upload)
    uploader.start()
    assert sent_parts.wait(30)
    time.sleep(1.0)  # let the server write the parts it has
    server.stop("kill")
    killed.set()
    uploader.join(timeout=60)

    restarted = start_server(database_url, data)
    try:
        for raw in acked:  # I1: every acknowledged instance, same bytes
            ds = pydicom.dcmread(pydicom.filebase.DicomBytesIO(raw))
            back = fetch(restarted, study, series, ds.SOPInstanceUID)
            assert back.status_code == 200
            assert back.content[128:] == raw[128:]
        for raw in pending:  # I4: nothing half-stored is visible
            ds = pydicom.dcmread(pydicom.filebase.DicomBytesIO(raw))
            assert fetch(restarted, study, series, ds.SOPInstanceUID).status_code == 404
    finally:
        restarted.stop()

    objects = data / "objects"
    before = [p for p in objects.rglob("*") if p.is_file()]
    assert len(before) > len(acked)  # the killed request left written objects (or temp files) behind
    gc = subprocess.run(
        [sys.executable, "-m", "dicomweb_server.cli", "gc", "--grace", "0"],
        env=server.env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert gc.returncode == 0, gc.stderr
    # I2/I3: afterwards every object is referenced by exactly one row with its SHA-256, nothing else remains.
    rows = [(r[0], bytes(r[1])) for r in fetch_rows(database_url, "SELECT object_key, sha256 FROM instance")]
    left = {p.relative_to(objects).as_posix(): p for p in objects.rglob("*") if p.is_file()}
    assert set(left) == {key for key, _ in rows}
    for key, sha in rows:
        assert hashlib.sha256(left[key].read_bytes()).digest() == sha
    assert not any((objects / ".staging").iterdir())


@pytest.fixture(autouse=True)
def _quiet_pydicom() -> Iterator[None]:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        yield
