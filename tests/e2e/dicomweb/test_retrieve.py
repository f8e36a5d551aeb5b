"""WADO-RS (PS3.18 §10.4) over ASGI: instances, transfer syntaxes, zip, metadata, frames, bulk data."""

from __future__ import annotations

import io
import warnings
import zipfile

import numpy as np
import pydicom
import pytest
from pydicom.encaps import generate_frames
from pydicom.uid import generate_uid

from tests.conftest import App
from tests.support.dicomfiles import content_type, instance, multiframe, multipart, split_multipart
from tests.support.testdata import bundled
from tests.support.testdata import corpus as bundled_corpus

STUDIES = "/dicomweb/studies"
EVRLE = "1.2.840.10008.1.2.1"
IVRLE = "1.2.840.10008.1.2"
RLE = "1.2.840.10008.1.2.5"
DICOM_ANY = 'multipart/related; type="application/dicom"; transfer-syntax=*'


async def store(app: App, files: list[bytes]) -> dict:
    r = await app.client.post(STUDIES, content=multipart(files), headers={"Content-Type": content_type()})
    assert r.status_code == 200, r.text
    return r.json()


def uids(data: bytes) -> tuple[str, str, str]:
    ds = pydicom.dcmread(io.BytesIO(data), stop_before_pixels=True)
    return ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID


def url(data: bytes) -> str:
    study, series, sop = uids(data)
    return f"{STUDIES}/{study}/series/{series}/instances/{sop}"


def dataset(data: bytes) -> pydicom.Dataset:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return pydicom.dcmread(io.BytesIO(data))


def corpus() -> list[bytes]:
    """pydicom's bundled files that store (a Part 10 file with the four UIDs)."""
    out, seen = [], set()
    for path in bundled_corpus():
        data = path.read_bytes()
        try:
            key = uids(data)
        except Exception:
            continue
        if data[128:132] == b"DICM" and all(key) and key[2] not in seen:
            seen.add(key[2])
            out.append(data)
    return out


# -- instances ----------------------------------------------------------------------


async def test_every_corpus_file_comes_back_byte_for_byte_with_transfer_syntax_any(app: App) -> None:
    files = corpus()
    assert len(files) > 40
    stored: list[bytes] = []
    for data in files:
        r = await app.client.post(
            STUDIES, content=multipart([data]), headers={"Content-Type": content_type()}
        )
        if r.status_code == 200:
            stored.append(data)
    assert len(stored) > 40
    for data in stored:
        r = await app.client.get(url(data), headers={"Accept": DICOM_ANY})
        assert r.status_code == 200, r.text
        ((headers, body),) = split_multipart(r.content, r.headers["content-type"])
        assert body[128:] == data[128:]
        assert body[:128] == bytes(128)  # the preamble is zeroed at ingest
        assert f"transfer-syntax={dataset(data).file_meta.TransferSyntaxUID}" in headers["content-type"]


async def test_study_retrieve_streams_every_instance_of_the_study(app: App) -> None:
    study = generate_uid()
    files = [instance(study, generate_uid() if i % 2 else None, seed=i) for i in range(5)]
    files = [instance(study, uids(f)[1], sop=uids(f)[2], seed=i) for i, f in enumerate(files)]
    await store(app, files)
    r = await app.client.get(f"{STUDIES}/{study}", headers={"Accept": DICOM_ANY})
    assert r.status_code == 200
    assert r.headers["content-type"].startswith('multipart/related; type="application/dicom"; boundary=')
    assert int(r.headers["content-length"]) == len(r.content)  # every part as stored: length known
    bodies = {uids(b)[2]: b for _, b in split_multipart(r.content, r.headers["content-type"])}
    assert {uids(f)[2]: f for f in files} == bodies
    series = uids(files[1])[1]
    r = await app.client.get(f"{STUDIES}/{study}/series/{series}", headers={"Accept": DICOM_ANY})
    got = [uids(b)[1] for _, b in split_multipart(r.content, r.headers["content-type"])]
    assert got and set(got) == {series}


async def test_default_syntax_is_explicit_vr_little_endian_transcoded_from_implicit(app: App) -> None:
    ds = dataset(instance(generate_uid(), generate_uid()))
    out = io.BytesIO()
    ds.file_meta.TransferSyntaxUID = IVRLE
    ds.save_as(out, implicit_vr=True, little_endian=True)
    data = out.getvalue()
    await store(app, [data])
    r = await app.client.get(url(data), headers={"Accept": "application/dicom"})
    assert r.status_code == 200
    assert r.headers["content-type"] == f"application/dicom; transfer-syntax={EVRLE}"
    got = dataset(r.content)
    assert got.file_meta.TransferSyntaxUID == EVRLE
    assert np.array_equal(got.pixel_array, ds.pixel_array)
    # As stored on request, byte for byte.
    r = await app.client.get(url(data), headers={"Accept": "application/dicom; transfer-syntax=*"})
    assert r.content[128:] == data[128:]


async def test_compressed_instance_is_decompressed_by_default(app: App) -> None:
    data = multiframe(generate_uid(), generate_uid(), frames=3, compress=RLE)
    await store(app, [data])
    r = await app.client.get(url(data))  # no Accept: multipart application/dicom, default syntax
    ((headers, body),) = split_multipart(r.content, r.headers["content-type"])
    assert headers["content-type"] == f"application/dicom; transfer-syntax={EVRLE}"
    assert np.array_equal(dataset(body).pixel_array, dataset(data).pixel_array)


async def test_unproducible_syntax_is_406_and_a_lower_q_alternative_is_used(app: App) -> None:
    data = instance(generate_uid(), generate_uid())
    await store(app, [data])
    jpeg = "1.2.840.10008.1.2.4.50"
    r = await app.client.get(url(data), headers={"Accept": f"application/dicom; transfer-syntax={jpeg}"})
    assert r.status_code == 406
    assert "transfer syntax" in r.json()["message"]
    accept = f"application/dicom; transfer-syntax={jpeg}, application/dicom; transfer-syntax=*; q=0.5"
    r = await app.client.get(url(data), headers={"Accept": accept})
    assert r.status_code == 200
    assert r.content[128:] == data[128:]


async def test_accept_query_parameter_overrides_the_header(app: App) -> None:
    data = instance(generate_uid(), generate_uid())
    await store(app, [data])
    r = await app.client.get(
        url(data), params={"accept": "application/dicom"}, headers={"Accept": "image/png"}
    )
    assert r.status_code == 200
    assert r.headers["content-type"].startswith("application/dicom")


async def test_zip_holds_each_instance_as_stored(app: App) -> None:
    study = generate_uid()
    files = [instance(study, generate_uid(), seed=i) for i in range(3)]
    await store(app, files)
    r = await app.client.get(f"{STUDIES}/{study}", headers={"Accept": "application/zip; transfer-syntax=*"})
    assert r.status_code == 200
    assert r.headers["content-type"] == "application/zip"
    with zipfile.ZipFile(io.BytesIO(r.content)) as archive:
        assert archive.testzip() is None
        got = {name: archive.read(name) for name in archive.namelist()}
    want = {f"{uids(f)[1]}/{uids(f)[2]}.dcm": f for f in files}
    assert got == want


@pytest.mark.parametrize("level", ["study", "series", "instance"])
async def test_unknown_uid_is_404_at_every_level(app: App, level: str) -> None:
    data = instance(generate_uid(), generate_uid())
    await store(app, [data])
    study, series, _sop = uids(data)
    path = {
        "study": f"{STUDIES}/{generate_uid()}",
        "series": f"{STUDIES}/{study}/series/{generate_uid()}",
        "instance": f"{STUDIES}/{study}/series/{series}/instances/{generate_uid()}",
    }[level]
    for suffix in ("", "/metadata", "/rendered", "/thumbnail"):
        r = await app.client.get(path + suffix)
        assert r.status_code == 404, suffix
        assert r.json()["message"]


# -- metadata -----------------------------------------------------------------------


async def test_study_metadata_comes_from_the_index_without_reading_objects(app: App) -> None:
    study = generate_uid()
    files = [instance(study, generate_uid(), seed=i, InstanceNumber=i + 1) for i in range(4)]
    await store(app, files)
    for path in app.settings.storage.path.rglob("*"):  # metadata must not need them
        if path.is_file():
            path.unlink()
    r = await app.client.get(f"{STUDIES}/{study}/metadata")
    assert r.status_code == 200
    assert r.headers["content-type"] == "application/dicom+json"
    body = r.json()
    assert sorted(d["00080018"]["Value"][0] for d in body) == sorted(uids(f)[2] for f in files)
    assert all(d["00100010"]["Value"] == [{"Alphabetic": "Doe^Jane"}] for d in body)


async def test_metadata_etag_gives_304_and_changes_with_the_study(app: App) -> None:
    study = generate_uid()
    await store(app, [instance(study, generate_uid())])
    path = f"{STUDIES}/{study}/metadata"
    first = await app.client.get(path)
    tag = first.headers["etag"]
    r = await app.client.get(path, headers={"If-None-Match": tag})
    assert r.status_code == 304
    assert r.content == b""
    await store(app, [instance(study, generate_uid())])
    r = await app.client.get(path, headers={"If-None-Match": tag})
    assert r.status_code == 200
    assert r.headers["etag"] != tag
    assert len(r.json()) == 2


async def test_bulk_data_uris_are_absolute_and_resolve_to_the_pixel_data(app: App) -> None:
    data = instance(generate_uid(), generate_uid(), size=64)
    await store(app, [data])
    r = await app.client.get(url(data) + "/metadata")
    (meta,) = r.json()
    uri = meta["7FE00010"]["BulkDataURI"]
    assert uri == "http://testserver" + url(data) + "/bulkdata/7FE00010"
    r = await app.client.get(uri, headers={"Accept": "application/octet-stream"})
    assert r.status_code == 200
    assert r.content == dataset(data).PixelData
    r = await app.client.get(uri)  # default: multipart/related; type="application/octet-stream"
    ((headers, body),) = split_multipart(r.content, r.headers["content-type"])
    assert headers["content-type"] == "application/octet-stream"
    assert body == dataset(data).PixelData


async def test_bulk_data_honours_a_byte_range(app: App) -> None:
    data = instance(generate_uid(), generate_uid(), size=64)
    await store(app, [data])
    pixels = dataset(data).PixelData
    uri = url(data) + "/bulkdata/7FE00010"
    r = await app.client.get(uri, headers={"Accept": "application/octet-stream", "Range": "bytes=100-199"})
    assert r.status_code == 206
    assert r.headers["content-range"] == f"bytes 100-199/{len(pixels)}"
    assert r.content == pixels[100:200]
    r = await app.client.get(uri, headers={"Accept": "application/octet-stream", "Range": "bytes=-10"})
    assert r.content == pixels[-10:]
    r = await app.client.get(
        uri, headers={"Accept": "application/octet-stream", "Range": f"bytes={len(pixels)}-"}
    )
    assert r.status_code == 416


async def test_bulk_data_in_the_header_resolves(app: App) -> None:
    blob = bytes(range(256)) * 20  # 5120 bytes: above the bulk data threshold
    data = instance(generate_uid(), generate_uid(), size=16)
    ds = dataset(data)
    ds.add_new(0x00091010, "LO", "ACME")  # private creator
    ds.add_new(0x00091011, "OB", blob)
    out = io.BytesIO()
    ds.save_as(out)
    data = out.getvalue()
    await store(app, [data])
    (meta,) = (await app.client.get(url(data) + "/metadata")).json()
    uri = meta["00091011"]["BulkDataURI"]
    r = await app.client.get(uri, headers={"Accept": "application/octet-stream"})
    assert r.status_code == 200
    assert r.content == blob
    r = await app.client.get(url(data) + "/bulkdata/00091099", headers={"Accept": "application/octet-stream"})
    assert r.status_code == 404


# -- frames -------------------------------------------------------------------------

OCTET_ANY = 'multipart/related; type="application/octet-stream"; transfer-syntax=*'


async def test_frames_of_a_native_multiframe_instance_are_byte_ranges(app: App) -> None:
    data = multiframe(generate_uid(), generate_uid(), frames=120, size=32)
    await store(app, [data])
    pixels = dataset(data).pixel_array
    r = await app.client.get(url(data) + "/frames/1,60,120", headers={"Accept": OCTET_ANY})
    assert r.status_code == 200
    parts = split_multipart(r.content, r.headers["content-type"])
    assert [p[1] for p in parts] == [pixels[k - 1].tobytes() for k in (1, 60, 120)]
    assert all(h["content-type"] == f"application/octet-stream; transfer-syntax={EVRLE}" for h, _ in parts)


@pytest.mark.parametrize("offset_table", [False, True])
async def test_frames_of_a_compressed_instance_come_as_stored_or_decoded(
    app: App, offset_table: bool
) -> None:
    data = multiframe(generate_uid(), generate_uid(), frames=101, compress=RLE, offset_table=offset_table)
    await store(app, [data])
    source = dataset(data)
    fragments = list(generate_frames(source.PixelData, number_of_frames=101))
    r = await app.client.get(url(data) + "/frames/2,101", headers={"Accept": OCTET_ANY})
    parts = split_multipart(r.content, r.headers["content-type"])
    assert [p[1] for p in parts] == [fragments[1], fragments[100]]
    assert parts[0][0]["content-type"] == f"image/dicom-rle; transfer-syntax={RLE}"
    assert r.headers["content-type"].startswith('multipart/related; type="image/dicom-rle"')  # RFC 2387
    r = await app.client.get(
        url(data) + "/frames/5", headers={"Accept": 'multipart/related; type="image/dicom-rle"'}
    )
    assert split_multipart(r.content, r.headers["content-type"])[0][1] == fragments[4]
    # Uncompressed on request: decoded frame by frame.
    r = await app.client.get(
        url(data) + "/frames/7", headers={"Accept": 'multipart/related; type="application/octet-stream"'}
    )
    ((headers, body),) = split_multipart(r.content, r.headers["content-type"])
    assert headers["content-type"] == f"application/octet-stream; transfer-syntax={EVRLE}"
    assert body == source.pixel_array[6].tobytes()


async def test_frames_of_a_big_endian_instance_are_little_endian(app: App) -> None:
    data = bundled("MR_small_bigendian.dcm").read_bytes()
    await store(app, [data])
    r = await app.client.get(url(data) + "/frames/1", headers={"Accept": OCTET_ANY})
    assert r.status_code == 200
    ((_, body),) = split_multipart(r.content, r.headers["content-type"])
    pixels = dataset(data).pixel_array
    assert body == pixels.astype(pixels.dtype.newbyteorder("<")).tobytes()


async def test_bad_frame_lists(app: App) -> None:
    data = multiframe(generate_uid(), generate_uid(), frames=3)
    await store(app, [data])
    for frames, status in [("0", 400), ("1,x", 400), ("-1", 400), ("4", 404), ("1,2,3", 200)]:
        r = await app.client.get(url(data) + f"/frames/{frames}", headers={"Accept": OCTET_ANY})
        assert r.status_code == status, frames


# -- rendered -----------------------------------------------------------------------


async def test_rendered_instance_is_a_jpeg_of_the_right_size(app: App) -> None:
    from PIL import Image

    data = instance(generate_uid(), generate_uid(), size=64)
    await store(app, [data])
    r = await app.client.get(url(data) + "/rendered")
    assert r.status_code == 200
    assert r.headers["content-type"] == "image/jpeg"
    assert Image.open(io.BytesIO(r.content)).size == (64, 64)
    r = await app.client.get(
        url(data) + "/rendered", params={"viewport": "32,32"}, headers={"Accept": "image/png"}
    )
    image = Image.open(io.BytesIO(r.content))
    assert (image.format, image.size) == ("PNG", (32, 32))
    r = await app.client.get(url(data) + "/rendered", params={"window": "abc"})
    assert r.status_code == 400


async def test_thumbnails_at_every_level_and_frame_rendering(app: App) -> None:
    from PIL import Image

    data = multiframe(generate_uid(), generate_uid(), frames=4, size=64)
    await store(app, [data])
    study, series, _ = uids(data)
    for path in (
        f"{STUDIES}/{study}",
        f"{STUDIES}/{study}/series/{series}",
        url(data),
        url(data) + "/frames/2",
    ):
        r = await app.client.get(path + "/thumbnail")
        assert r.status_code == 200, path
        assert Image.open(io.BytesIO(r.content)).format == "JPEG"
    r = await app.client.get(url(data) + "/frames/9/rendered")
    assert r.status_code == 404


# -- capabilities -------------------------------------------------------------------


async def test_capabilities_describe_every_route(app: App) -> None:
    from xml.etree import ElementTree

    from dicomweb_server.routes import API

    r = await app.client.options("/dicomweb")
    assert r.status_code == 200
    assert r.headers["content-type"].startswith("application/vnd.sun.wadl+xml")
    root = ElementTree.fromstring(r.content)
    ns = {"w": "http://wadl.dev.java.net/2009/02"}
    described = set()

    def walk(node: ElementTree.Element, prefix: str) -> None:
        for method in node.findall("w:method", ns):
            described.add((prefix, method.get("name")))
        for child in node.findall("w:resource", ns):
            walk(child, f"{prefix}/{child.get('path')}")

    walk(root.find("w:resources", ns), "/dicomweb")
    served = {(path, m) for path, methods, _, _ in API for m in methods}
    assert served <= described
    assert any(p.get("name") == "fuzzymatching" for p in root.iter("{http://wadl.dev.java.net/2009/02}param"))
    r = await app.client.options("/dicomweb", headers={"Accept": "application/json"})
    assert r.json()["fuzzyMatching"] is True


async def test_bulk_data_of_compressed_pixel_data_is_its_frames_as_stored(app: App) -> None:
    data = multiframe(generate_uid(), generate_uid(), frames=3, compress=RLE)
    await store(app, [data])
    r = await app.client.get(url(data) + "/bulkdata/7FE00010")
    assert r.status_code == 200
    parts = split_multipart(r.content, r.headers["content-type"])
    assert [body for _, body in parts] == list(generate_frames(dataset(data).PixelData, number_of_frames=3))
    assert all(h["content-type"] == f"image/dicom-rle; transfer-syntax={RLE}" for h, _ in parts)


async def test_bulk_data_of_big_endian_pixel_data_is_its_stored_bytes(app: App) -> None:
    data = bundled("MR_small_bigendian.dcm").read_bytes()
    await store(app, [data])
    r = await app.client.get(url(data) + "/bulkdata/7FE00010", headers={"Accept": "application/octet-stream"})
    assert r.status_code == 200
    assert r.content == dataset(data).PixelData  # as stored: big endian words, as CONFORMANCE says
