"""WADO-RS through a real uvicorn socket: dicomweb-client, a 2 GiB study out, a client that hangs up."""

from __future__ import annotations

import hashlib
import io
import os
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import psutil
import pydicom
from pydicom.uid import generate_uid

from tests.conftest import Server
from tests.support.dicomfiles import BOUNDARY, content_type, instance, multiframe, multipart

STUDIES = "/dicomweb/studies"
ANY = 'multipart/related; type="application/dicom"; transfer-syntax=*'


def test_dicomweb_client_retrieve_calls(live_server: Server) -> None:
    from dicomweb_client.api import DICOMwebClient

    study, series = generate_uid(), generate_uid()
    files = [instance(study, series, seed=i, InstanceNumber=i + 1) for i in range(3)]
    files.append(multiframe(study, series, frames=5, compress="1.2.840.10008.1.2.5"))
    r = httpx.post(
        live_server.url + STUDIES,
        content=multipart(files),
        headers={"Content-Type": content_type(), **live_server.headers},
    )
    assert r.status_code == 200, r.text
    datasets = [pydicom.dcmread(io.BytesIO(f)) for f in files]
    client = DICOMwebClient(url=f"{live_server.url}/dicomweb", headers=live_server.headers)

    got = client.retrieve_study(study)
    assert sorted(d.SOPInstanceUID for d in got) == sorted(d.SOPInstanceUID for d in datasets)
    assert len(client.retrieve_series(study, series)) == 4
    assert len(client.retrieve_study_metadata(study)) == 4
    assert len(client.retrieve_series_metadata(study, series)) == 4
    first = datasets[0]
    meta = client.retrieve_instance_metadata(study, series, first.SOPInstanceUID)
    assert meta["00080018"]["Value"] == [first.SOPInstanceUID]
    (pixels,) = client.retrieve_bulkdata(meta["7FE00010"]["BulkDataURI"])
    assert pixels == first.PixelData
    (frame,) = client.retrieve_instance_frames(study, series, first.SOPInstanceUID, frame_numbers=[1])
    assert frame == first.PixelData
    rle = datasets[3]
    frames = client.retrieve_instance_frames(study, series, rle.SOPInstanceUID, frame_numbers=[2, 4])
    for f, n in zip(frames, (1, 3), strict=True):  # decoded to uncompressed frames by the server
        assert np.array_equal(np.frombuffer(f, dtype="<u2").reshape(32, 32), rle.pixel_array[n])
    image = client.retrieve_instance_rendered(study, series, first.SOPInstanceUID, media_types=("image/png",))
    assert image.startswith(b"\x89PNG")


def big_instance(study: str, series: str, size: int, seed: int) -> Iterator[bytes]:
    """A Part-10 instance of the given study whose Pixel Data value is ``size`` bytes, in 1 MiB chunks."""
    header = instance(study, series, size=2, seed=seed)
    pixel_tag = b"\xe0\x7f\x10\x00OW\x00\x00"
    at = header.rindex(pixel_tag)
    yield header[:at] + pixel_tag + size.to_bytes(4, "little")
    block = hashlib.sha256(str(seed).encode()).digest() * 32768
    left = size
    while left:
        n = min(left, len(block))
        yield block[:n]
        left -= n


class Peak:
    """Peak RSS of a process, sampled every 50 ms while in use."""

    def __init__(self, pid: int):
        self.proc = psutil.Process(pid)
        self.baseline = self.peak = self.proc.memory_info().rss
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, self.proc.memory_info().rss)
            time.sleep(0.05)

    def __enter__(self) -> Peak:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    @property
    def growth_mib(self) -> float:
        return (self.peak - self.baseline) / 2**20


def test_two_gib_study_streams_out_with_flat_memory(live_server: Server) -> None:
    study, series, parts, part_size = generate_uid(), generate_uid(), 4, 512 * 1024 * 1024

    def body() -> Iterator[bytes]:
        for i in range(parts):
            yield f"--{BOUNDARY}\r\nContent-Type: application/dicom\r\n\r\n".encode()
            yield from big_instance(study, series, part_size, i)
            yield b"\r\n"
        yield f"--{BOUNDARY}--\r\n".encode()

    r = httpx.post(
        live_server.url + STUDIES,
        content=body(),
        headers={"Content-Type": content_type(), **live_server.headers},
        timeout=600,
    )
    assert r.status_code == 200, r.text
    received = 0
    with (
        Peak(live_server.process.pid) as peak,
        httpx.stream(
            "GET",
            f"{live_server.url}{STUDIES}/{study}",
            headers={"Accept": ANY, **live_server.headers},
            timeout=600,
        ) as r,
    ):
        assert r.status_code == 200
        boundary = r.headers["content-type"].rsplit("boundary=", 1)[1].encode()
        tail = b""
        for chunk in r.iter_bytes():
            received += len(chunk)
            tail = (tail + chunk)[-200:]
    assert received > parts * part_size
    assert tail.endswith(b"--" + boundary + b"--\r\n")
    assert peak.growth_mib < 150, f"server RSS grew by {peak.growth_mib:.0f} MiB while streaming 2 GiB out"


def _target(link: Path) -> str:
    try:
        return os.readlink(link)
    except OSError:  # closed meanwhile
        return ""


def test_a_client_that_hangs_up_mid_stream_releases_its_resources(live_server: Server) -> None:
    study, series = generate_uid(), generate_uid()
    data = b"".join(big_instance(study, series, 256 * 1024 * 1024, 7))
    r = httpx.post(
        live_server.url + STUDIES,
        content=data,
        headers={"Content-Type": "application/dicom", **live_server.headers},
        timeout=120,
    )
    assert r.status_code == 200, r.text
    proc = psutil.Process(live_server.process.pid)
    port = int(live_server.url.rsplit(":", 1)[1])

    def held() -> tuple[int, int]:
        """Object files open for reading, and client connections on the server's port."""
        fds = Path(f"/proc/{proc.pid}/fd")
        objects = [p for p in fds.iterdir() if "/objects/" in _target(p)]
        clients = [
            c for c in proc.net_connections("tcp") if c.laddr.port == port and c.status == "ESTABLISHED"
        ]
        return len(objects), len(clients)

    assert held() == (0, 0)
    for _ in range(5):
        with httpx.stream(
            "GET",
            f"{live_server.url}{STUDIES}/{study}",
            headers={"Accept": ANY, **live_server.headers},
            timeout=60,
        ) as r:
            assert r.status_code == 200
            next(r.iter_raw(1024 * 1024))  # then hang up with the rest unread
    deadline = time.monotonic() + 10
    while held() != (0, 0) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert held() == (0, 0), "object files or connections left open by abandoned streams"
    r = httpx.get(f"{live_server.url}/readyz")
    assert r.status_code == 200
