"""Retrieval of a series holding good and bad instances, in every Accept variant: the good ones
always come back, the bad ones as stored (their real syntax named) or as a clean error.

Bad instances are structurally complete (ingest accepts them): compressed Pixel Data whose
bytes are zeroed, so that nothing decodes it, and an object damaged in storage after ingest
(its compressed bytes overwritten in place; or the file cut short, which no response may
hide: a clean 410 when found before the status line, an aborted connection after it).
"""

from __future__ import annotations

import io
import logging
import zipfile
from dataclasses import dataclass
from pathlib import Path

import httpx
import orjson
import pydicom
import pytest
from pydicom.encaps import encapsulate, generate_frames
from pydicom.uid import generate_uid

from tests.conftest import App, Server
from tests.support.dicomfiles import content_type, multipart, split_multipart
from tests.support.testdata import bundled

STUDIES = "/dicomweb/studies"
EVRLE = "1.2.840.10008.1.2.1"
IVRLE = "1.2.840.10008.1.2"
DICOM_MP = 'multipart/related; type="application/dicom"'


def fresh(name: str, study: str, series: str, *, zero_pixels: bool = False) -> bytes:
    """A pydicom test file with new UIDs in the given series; compressed bytes zeroed on request."""
    ds = pydicom.dcmread(bundled(name))
    ds.StudyInstanceUID, ds.SeriesInstanceUID = study, series
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    if zero_pixels:
        count = int(ds.get("NumberOfFrames") or 1)
        frames = list(generate_frames(ds.PixelData, number_of_frames=count))
        ds.PixelData = encapsulate([bytes(len(f)) for f in frames])
    out = io.BytesIO()
    ds.save_as(out, enforce_file_format=True)
    return out.getvalue()


def sop_of(data: bytes) -> str:
    return str(pydicom.dcmread(io.BytesIO(data), stop_before_pixels=True).SOPInstanceUID)


def syntax_of(data: bytes) -> str:
    return str(pydicom.dcmread(io.BytesIO(data), stop_before_pixels=True).file_meta.TransferSyntaxUID)


def stored_file(root: Path, data: bytes) -> Path:
    """The object file that holds ``data`` (from byte 128: the preamble is zeroed at ingest)."""
    found = [p for p in root.rglob("*") if p.is_file() and p.read_bytes()[128:] == data[128:]]
    assert len(found) == 1
    return found[0]


def overwrite_pixels(path: Path) -> bytes:
    """Damage an object in place: its last fragment's bytes become garbage (same size)."""
    raw = bytearray(path.read_bytes())
    end = raw.rindex(b"\xfe\xff\xdd\xe0")  # the sequence delimiter of the encapsulated Pixel Data
    raw[end - 200 : end] = bytes(range(200))
    raw[end - 400 : end - 200] = bytes(200)
    path.write_bytes(bytes(raw))
    return bytes(raw)


@dataclass
class Series:
    study: str
    series: str
    good: dict[str, bytes]  # SOP UID -> bytes
    bad: dict[str, bytes]  # SOP UID -> the bytes stored (after damage, for the damaged one)

    @property
    def url(self) -> str:
        return f"{STUDIES}/{self.study}/series/{self.series}"

    def instance(self, sop: str) -> str:
        return f"{self.url}/instances/{sop}"


async def mixed_series(app: App) -> Series:
    """A native MR, a good JPEG 2000 and RLE, a JPEG whose bytes are zeroed, and a JPEG whose object
    is damaged in storage after ingest: one series."""
    study, series = generate_uid(), generate_uid()
    good = [fresh(n, study, series) for n in ("MR_small.dcm", "JPEG2000.dcm", "MR_small_RLE.dcm")]
    zeroed = fresh("JPEG-lossy.dcm", study, series, zero_pixels=True)
    to_damage = fresh("JPEG-lossy.dcm", study, series)
    r = await app.client.post(
        STUDIES, content=multipart([*good, zeroed, to_damage]), headers={"Content-Type": content_type()}
    )
    assert r.status_code == 200, r.text
    damaged = overwrite_pixels(stored_file(app.settings.storage.path, to_damage))
    return Series(
        study,
        series,
        {sop_of(g): g for g in good},
        {sop_of(zeroed): zeroed, sop_of(to_damage): damaged},
    )


def check_instances(s: Series, got: dict[str, tuple[str | None, bytes]]) -> None:
    """Every instance came back: good ones with their pixels, bad ones as stored, syntax named."""
    assert set(got) == set(s.good) | set(s.bad)
    for sop, data in s.good.items():
        syntax, body = got[sop]
        want = pydicom.dcmread(io.BytesIO(data))
        back = pydicom.dcmread(io.BytesIO(body))
        assert syntax is None or syntax == str(back.file_meta.TransferSyntaxUID)
        assert (back.pixel_array == want.pixel_array).all()
    for sop, data in s.bad.items():
        syntax, body = got[sop]
        assert body[128:] == data[128:]  # as stored
        assert syntax is None or syntax == syntax_of(data)


def parts_by_sop(r: httpx.Response) -> dict[str, tuple[str | None, bytes]]:
    parts = split_multipart(r.content, r.headers["content-type"])
    out = {}
    for headers, body in parts:
        ctype = headers["content-type"]
        assert ctype.startswith("application/dicom; transfer-syntax=")
        out[sop_of(body)] = (ctype.split("transfer-syntax=", 1)[1], body)
    return out


def zip_by_sop(content: bytes) -> dict[str, tuple[str | None, bytes]]:
    with zipfile.ZipFile(io.BytesIO(content)) as archive:
        assert archive.testzip() is None
        return {sop_of(data): (None, data) for data in (archive.read(n) for n in archive.namelist())}


MULTIPART_ACCEPTS = {
    "default": None,
    "multipart": DICOM_MP,
    "any-syntax": f"{DICOM_MP}; transfer-syntax=*",
    "explicit-le": f"{DICOM_MP}; transfer-syntax={EVRLE}",
    "implicit-le": f"{DICOM_MP}; transfer-syntax={IVRLE}",
    "wildcard": "*/*",
}
ZIP_ACCEPTS = {"zip": "application/zip", "zip-any": "application/zip; transfer-syntax=*"}


@pytest.mark.parametrize("level", ["study", "series"])
@pytest.mark.parametrize("accept", [*MULTIPART_ACCEPTS, *ZIP_ACCEPTS])
async def test_a_series_with_bad_instances_comes_back_whole_in_every_accept(
    app: App, level: str, accept: str
) -> None:
    s = await mixed_series(app)
    value = MULTIPART_ACCEPTS.get(accept, ZIP_ACCEPTS.get(accept))
    path = s.url if level == "series" else f"{STUDIES}/{s.study}"
    r = await app.client.get(path, headers={"Accept": value} if value else {})
    assert r.status_code == 200, r.text
    got = zip_by_sop(r.content) if accept in ZIP_ACCEPTS else parts_by_sop(r)
    check_instances(s, got)
    if accept in ("default", "multipart", "explicit-le", "wildcard"):
        for sop in s.good:  # converted: the default and explicit syntax is Explicit VR Little Endian
            assert got[sop][0] == EVRLE


async def test_one_bad_instance_alone_in_every_accept(app: App) -> None:
    s = await mixed_series(app)
    for sop, data in s.bad.items():
        url = s.instance(sop)
        stored = syntax_of(data)
        # Retrieve: as stored, its real syntax named, unless an explicit syntax was asked for.
        for accept in (None, DICOM_MP, f"{DICOM_MP}; transfer-syntax=*", "application/dicom", "*/*"):
            r = await app.client.get(url, headers={"Accept": accept} if accept else {})
            assert r.status_code == 200, (accept, r.text)
            if r.headers["content-type"].startswith("multipart/"):
                assert parts_by_sop(r) == {sop: (stored, r.content and parts_by_sop(r)[sop][1])}
                body = parts_by_sop(r)[sop][1]
            else:
                assert r.headers["content-type"] == f"application/dicom; transfer-syntax={stored}"
                assert int(r.headers["content-length"]) == len(r.content)
                body = r.content
            assert body[128:] == data[128:]
        for accept in (
            f"{DICOM_MP}; transfer-syntax={EVRLE}",
            f"application/dicom; transfer-syntax={IVRLE}",
            f"application/zip; transfer-syntax={EVRLE}",
        ):
            r = await app.client.get(url, headers={"Accept": accept})
            assert r.status_code == 406, accept
            assert "cannot be converted" in r.json()["message"]
        r = await app.client.get(url, headers={"Accept": "application/zip"})
        assert zip_by_sop(r.content) == {sop: (None, data)}
        # Metadata needs no object.
        r = await app.client.get(url + "/metadata")
        assert r.status_code == 200
        fragments = list(generate_frames(pydicom.dcmread(io.BytesIO(data)).PixelData, number_of_frames=1))
        # Frames: as stored when the syntax is left to us (the part says what it is), 406 when
        # uncompressed frames are demanded explicitly.
        for accept in (None, 'multipart/related; type="application/octet-stream"', "*/*"):
            r = await app.client.get(url + "/frames/1", headers={"Accept": accept} if accept else {})
            assert r.status_code == 200, accept
            assert r.headers["content-type"].startswith('multipart/related; type="image/jpeg"')
            ((headers, body),) = split_multipart(r.content, r.headers["content-type"])
            assert headers["content-type"] == f"image/jpeg; transfer-syntax={stored}"
            assert body == fragments[0]
        octet = f'multipart/related; type="application/octet-stream"; transfer-syntax={EVRLE}'
        r = await app.client.get(url + "/frames/1", headers={"Accept": octet})
        assert r.status_code == 406
        assert "cannot be decoded" in r.json()["message"]
        r = await app.client.get(url + "/bulkdata/7FE00010")
        assert r.status_code == 200
        assert [b for _, b in split_multipart(r.content, r.headers["content-type"])] == fragments
        # Rendering needs decoded pixels: a clean 406 that says so.
        for suffix in ("/rendered", "/thumbnail", "/frames/1/rendered", "/frames/1/thumbnail"):
            r = await app.client.get(url + suffix)
            assert r.status_code == 406, suffix
            assert "cannot be rendered" in r.json()["message"]


async def test_good_instances_are_served_in_every_accept_next_to_bad_ones(app: App) -> None:
    s = await mixed_series(app)
    for sop, data in s.good.items():
        url = s.instance(sop)
        for accept in (None, f"{DICOM_MP}; transfer-syntax=*", f"application/dicom; transfer-syntax={EVRLE}"):
            r = await app.client.get(url, headers={"Accept": accept} if accept else {})
            assert r.status_code == 200
            body = r.content if accept and accept.startswith("application/") else parts_by_sop(r)[sop][1]
            assert (
                pydicom.dcmread(io.BytesIO(body)).pixel_array == pydicom.dcmread(io.BytesIO(data)).pixel_array
            ).all()
        r = await app.client.get(url + "/frames/1", headers={"Accept": "*/*"})
        assert r.status_code == 200
        for suffix in ("/rendered", "/thumbnail", "/metadata"):
            assert (await app.client.get(url + suffix)).status_code == 200, suffix


@pytest.mark.parametrize("suffix", ["/rendered", "/thumbnail"])
async def test_a_series_with_bad_instances_still_renders_its_good_ones(app: App, suffix: str) -> None:
    s = await mixed_series(app)
    for path in (s.url, f"{STUDIES}/{s.study}"):
        r = await app.client.get(path + suffix)
        assert r.status_code == 200, r.text
        if suffix == "/rendered":
            parts = split_multipart(r.content, r.headers["content-type"])
            assert len(parts) == len(s.good)  # the bad ones are left out
            assert all(h["content-type"] == "image/jpeg" for h, _ in parts)
        else:
            assert r.headers["content-type"] == "image/jpeg"


# -- an object cut short in storage -------------------------------------------------


async def test_an_object_cut_short_in_storage_is_a_clean_410_for_its_instance(app: App) -> None:
    study, series = generate_uid(), generate_uid()
    native, jpeg = fresh("MR_small.dcm", study, series), fresh("JPEG-lossy.dcm", study, series)
    r = await app.client.post(
        STUDIES, content=multipart([native, jpeg]), headers={"Content-Type": content_type()}
    )
    assert r.status_code == 200
    for data in (native, jpeg):
        path = stored_file(app.settings.storage.path, data)
        path.write_bytes(path.read_bytes()[: len(data) - 1000])
    base = f"{STUDIES}/{study}/series/{series}/instances/"
    for data in (native, jpeg):
        url = base + sop_of(data)
        for suffix, accept in [
            ("", None),
            ("", f"{DICOM_MP}; transfer-syntax=*"),
            ("", "application/dicom; transfer-syntax=*"),
            ("", "application/dicom"),
            ("", "application/zip"),
            ("/frames/1", None),
            ("/frames/1", "*/*"),
            ("/bulkdata/7FE00010", None),
            ("/rendered", None),
            ("/thumbnail", None),
            # Native Pixel Data is one value; encapsulated Pixel Data is its frames (multipart only).
            *([("/bulkdata/7FE00010", "application/octet-stream")] if data is native else []),
        ]:
            r = await app.client.get(url + suffix, headers={"Accept": accept} if accept else {})
            assert r.status_code == 410, (suffix, accept, r.status_code)
            assert r.headers["cache-control"] == "no-store"
            assert "damaged" in r.json()["message"]
    # The metadata is the index's: still there.
    assert (await app.client.get(base + sop_of(native) + "/metadata")).status_code == 200


async def test_a_series_stream_that_meets_a_damaged_object_is_aborted(
    app: App, caplog: pytest.LogCaptureFixture
) -> None:
    study, series = generate_uid(), generate_uid()
    first, second = fresh("MR_small.dcm", study, series), fresh("JPEG2000.dcm", study, series)
    r = await app.client.post(
        STUDIES, content=multipart([first, second]), headers={"Content-Type": content_type()}
    )
    assert r.status_code == 200
    r = await app.client.get(f"{STUDIES}/{study}/series/{series}", headers={"Accept": DICOM_MP})
    order = [sop_of(b) for _, b in split_multipart(r.content, r.headers["content-type"])]
    later = {sop_of(first): first, sop_of(second): second}[order[1]]
    path = stored_file(app.settings.storage.path, later)
    path.write_bytes(path.read_bytes()[:1000])
    for accept in (DICOM_MP, f"{DICOM_MP}; transfer-syntax=*", "application/zip"):
        caplog.clear()
        with (
            caplog.at_level(logging.ERROR, "dicomweb_server.dicomweb.wado"),
            pytest.raises(Exception) as raised,
        ):
            await app.client.get(
                f"{STUDIES}/{study}/series/{series}", headers={"Accept": accept, "X-Request-Id": "abort-1"}
            )
        assert "aborted" in str(raised.value)
        aborted = [rec for rec in caplog.records if getattr(rec, "event", None) == "response_aborted"]
        assert [(a.levelname, a.request_id) for a in aborted] == [("ERROR", "abort-1")]  # type: ignore[attr-defined]


# -- through a real socket ----------------------------------------------------------


def _store_mixed_live(server: Server) -> tuple[str, str, dict[str, bytes], dict[str, bytes]]:
    study, series = generate_uid(), generate_uid()
    good = [fresh(n, study, series) for n in ("MR_small.dcm", "JPEG2000.dcm")]
    bad = fresh("JPEG-lossy.dcm", study, series, zero_pixels=True)
    r = httpx.post(
        server.url + STUDIES,
        content=multipart([bad, *good]),
        headers={"Content-Type": content_type(), **server.headers},
    )
    assert r.status_code == 200, r.text
    return study, series, {sop_of(g): g for g in good}, {sop_of(bad): bad}


def _read_streamed(server: Server, path: str, accept: str | None) -> httpx.Response:
    headers = {**server.headers, **({"Accept": accept} if accept else {})}
    with httpx.stream("GET", server.url + path, headers=headers, timeout=60) as r:
        assert r.status_code == 200
        r.read()  # raises if the connection drops before the terminating chunk
    return r


def test_mixed_series_over_a_socket_completes_multipart_and_zip(live_server: Server) -> None:
    study, series, good, bad = _store_mixed_live(live_server)
    s = Series(study, series, good, bad)
    r = _read_streamed(live_server, f"{STUDIES}/{study}/series/{series}", None)
    boundary = r.headers["content-type"].rsplit("boundary=", 1)[1]
    assert r.content.endswith(f"--{boundary}--\r\n".encode())
    check_instances(s, parts_by_sop(r))
    r = _read_streamed(live_server, f"{STUDIES}/{study}", "application/zip")
    check_instances(s, zip_by_sop(r.content))  # a valid central directory, every entry's CRC right


def test_a_stream_aborted_over_a_socket_is_dropped_and_logged(live_server: Server) -> None:
    """An object cut short past its first chunk: the status line is out; the connection is dropped
    without the terminating chunk, and the server logs it at ERROR with the request id."""
    study, series = generate_uid(), generate_uid()
    small = fresh("MR_small.dcm", study, series)
    ds = pydicom.dcmread(io.BytesIO(fresh("MR_small.dcm", study, series)))
    ds.add_new(0x00091010, "LO", "ACME")
    ds.add_new(0x00091011, "OB", bytes(range(256)) * 12 * 1024)  # 3 MiB: several storage chunks
    out = io.BytesIO()
    ds.save_as(out, enforce_file_format=True)
    big = out.getvalue()
    r = httpx.post(
        live_server.url + STUDIES,
        content=multipart([small, big]),
        headers={"Content-Type": content_type(), **live_server.headers},
    )
    assert r.status_code == 200, r.text
    path = stored_file(Path(live_server.env["DICOMWEB_STORAGE_PATH"]), big)
    path.write_bytes(path.read_bytes()[: 2 * 1024 * 1024 + 100])
    series_url = f"{STUDIES}/{study}/series/{series}"
    for path_, accept, rid in [
        (series_url, f"{DICOM_MP}; transfer-syntax=*", "abort-multipart"),
        (series_url, "application/zip", "abort-zip"),
        (f"{series_url}/instances/{sop_of(big)}", "application/dicom; transfer-syntax=*", "abort-single"),
    ]:
        headers = {**live_server.headers, "Accept": accept, "X-Request-Id": rid}
        with httpx.stream("GET", live_server.url + path_, headers=headers, timeout=60) as r:
            assert r.status_code == 200
            with pytest.raises(httpx.RemoteProtocolError):
                r.read()
    lines = [orjson.loads(line) for line in live_server.log.read_text().splitlines() if line.startswith("{")]
    aborted = {line["request_id"]: line for line in lines if line.get("event") == "response_aborted"}
    assert set(aborted) >= {"abort-multipart", "abort-zip", "abort-single"}
    assert all(line["level"] == "error" and line["bytes_out"] > 0 for line in aborted.values())
    # ... and the access line of each says so: never a plain 200
    access = {
        line["request_id"]: line for line in lines if line.get("message") in ("request", "request aborted")
    }
    for request_id in ("abort-multipart", "abort-zip", "abort-single"):
        assert access[request_id]["message"] == "request aborted", access[request_id]
        assert access[request_id]["aborted"] is True and access[request_id]["level"] == "error"
    r = httpx.get(live_server.url + "/readyz")  # the server goes on
    assert r.status_code == 200


async def test_attributes_that_promise_more_frames_than_the_pixel_data_holds(app: App) -> None:
    """A complete data set whose Number of Frames (5) is more than its Pixel Data holds (1)."""
    study, series = generate_uid(), generate_uid()
    ds = pydicom.dcmread(io.BytesIO(fresh("MR_small.dcm", study, series)))
    ds.NumberOfFrames = 5
    out = io.BytesIO()
    ds.save_as(out, enforce_file_format=True)
    data = out.getvalue()
    r = await app.client.post(STUDIES, content=multipart([data]), headers={"Content-Type": content_type()})
    assert r.status_code == 200, r.text
    url = f"{STUDIES}/{study}/series/{series}/instances/{sop_of(data)}"
    r = await app.client.get(url + "/frames/1")
    assert r.status_code == 200
    assert split_multipart(r.content, r.headers["content-type"])[0][1] == ds.PixelData
    r = await app.client.get(url + "/frames/3")
    assert r.status_code == 404
    assert "not in the stored pixel data" in r.json()["message"]
    for accept in (None, "application/octet-stream"):
        r = await app.client.get(url + "/bulkdata/7FE00010", headers={"Accept": accept} if accept else {})
        assert r.status_code == 200
    assert r.content == ds.PixelData
    r = await app.client.get(url, headers={"Accept": "application/dicom"})
    assert r.status_code == 200


@pytest.mark.parametrize(
    "accept",
    [
        f"{DICOM_MP}; transfer-syntax=1.2.840.10008.1.2.4.51",  # the JPEG ones' syntax, not the others'
        "application/dicom",  # single part names one instance, not a series
        "image/png",
    ],
)
async def test_a_series_in_a_form_it_cannot_take_is_a_clean_406(app: App, accept: str) -> None:
    s = await mixed_series(app)
    r = await app.client.get(s.url, headers={"Accept": accept})
    assert r.status_code == 406
    assert r.json()["message"]
