"""STOW-RS (PS3.18 §10.5) over ASGI: formats, per-instance failures, statuses, duplicates, limits."""

from __future__ import annotations

import asyncio
import hashlib
import struct
from collections.abc import AsyncIterator
from pathlib import Path

import asyncpg
import pytest
from pydicom.uid import generate_uid

from dicomweb_server.dicom import status
from dicomweb_server.dicom.resources import is_valid_uid
from tests.conftest import App, make_settings, running_app
from tests.support.dicomfiles import BOUNDARY, content_type, instance, multipart

STUDIES = "/dicomweb/studies"
CT_STORAGE = "1.2.840.10008.5.1.4.1.1.2"


def referenced(body: dict) -> list[str]:
    return [item["00081155"]["Value"][0] for item in body.get("00081199", {}).get("Value", [])]


def failed(body: dict) -> dict[str | None, int]:
    """SOP Instance UID (None for parts without one) -> FailureReason."""
    return {uid: reason for uid, reason in failures(body)}


def failures(body: dict) -> list[tuple[str | None, int]]:
    out = []
    for seq in ("00081198", "0008119A"):
        for item in body.get(seq, {}).get("Value", []):
            out.append((item.get("00081155", {}).get("Value", [None])[0], item["00081197"]["Value"][0]))
    return out


async def count_rows(db: asyncpg.Pool) -> tuple[int, int, int]:
    return (
        await db.fetchval("SELECT count(*) FROM study"),
        await db.fetchval("SELECT count(*) FROM series"),
        await db.fetchval("SELECT count(*) FROM instance"),
    )


def objects(app: App) -> list[Path]:
    root = app.settings.storage.path
    return [p for p in root.rglob("*") if p.is_file() and ".staging" not in p.parts]


async def test_multipart_stores_every_part_and_answers_200(app: App, db: asyncpg.Pool) -> None:
    study, series = generate_uid(), generate_uid()
    files = [instance(study, series, seed=i, InstanceNumber=i + 1) for i in range(3)]
    r = await app.client.post(STUDIES, content=multipart(files), headers={"Content-Type": content_type()})
    assert r.status_code == 200, r.text
    assert r.headers["content-type"] == "application/dicom+json"
    body = r.json()
    assert body["00081190"]["Value"] == [f"http://testserver/dicomweb/studies/{study}"]
    assert len(referenced(body)) == 3
    assert "00081198" not in body and "0008119A" not in body  # never an empty sequence
    item = body["00081199"]["Value"][0]
    assert item["00081150"]["Value"] == [CT_STORAGE]
    assert item["00081190"]["Value"][0].startswith(
        f"http://testserver/dicomweb/studies/{study}/series/{series}/"
    )
    assert await count_rows(db) == (1, 1, 3)
    assert await db.fetchval("SELECT num_instances FROM series") == 3
    row = await db.fetchrow("SELECT num_series, num_instances, modalities FROM study")
    assert (row["num_series"], row["num_instances"], row["modalities"]) == (1, 3, ["CT"])
    assert len(objects(app)) == 3


@pytest.mark.parametrize(
    "ctype",
    [
        f'multipart/related; type="application/dicom"; boundary="{BOUNDARY}"',
        f"multipart/related; type=application/dicom; boundary={BOUNDARY}",
        f'Multipart/Related;boundary={BOUNDARY};type="application/dicom";transfer-syntax=1.2.840.10008.1.2.1',
        f"multipart/related;  boundary={BOUNDARY} ; type=application/dicom ; charset=utf-8",
        f"multipart/related; boundary={BOUNDARY}",  # type omitted: application/dicom assumed
    ],
)
async def test_content_type_variants_real_clients_send(app: App, ctype: str) -> None:
    r = await app.client.post(STUDIES, content=multipart([instance()]), headers={"Content-Type": ctype})
    assert r.status_code == 200, r.text


async def test_single_part_application_dicom(app: App) -> None:
    data = instance()
    r = await app.client.post(STUDIES, content=data, headers={"Content-Type": "application/dicom"})
    assert r.status_code == 200, r.text
    assert len(referenced(r.json())) == 1


async def test_chunked_body_without_content_length(app: App) -> None:
    files = [instance(seed=i) for i in range(4)]
    body = multipart(files)

    async def chunks() -> AsyncIterator[bytes]:
        for i in range(0, len(body), 1000):
            yield body[i : i + 1000]

    r = await app.client.post(STUDIES, content=chunks(), headers={"Content-Type": content_type()})
    assert r.status_code == 200, r.text
    assert len(referenced(r.json())) == 4


async def test_stored_bytes_are_identical_with_a_zeroed_preamble(app: App, db: asyncpg.Pool) -> None:
    data = instance(preamble=b"MZ" + b"\x90" * 126)  # a polyglot-style preamble (CVE-2019-11687)
    r = await app.client.post(STUDIES, content=data, headers={"Content-Type": "application/dicom"})
    assert r.status_code == 200
    (path,) = objects(app)
    stored = path.read_bytes()
    assert stored[:128] == bytes(128)
    assert stored[128:] == data[128:]
    row = await db.fetchrow("SELECT size, sha256, object_key FROM instance")
    assert row["size"] == len(data)
    assert bytes(row["sha256"]) == hashlib.sha256(stored).digest()
    assert is_valid_uid(row["object_key"]) is False  # the key is not a UID
    assert row["object_key"].startswith("default/")


async def test_mixed_good_and_bad_parts_answer_202_and_store_the_good(app: App, db: asyncpg.Pool) -> None:
    good = instance()
    no_sop = instance(SOPInstanceUID=None)
    bad_uid = instance(StudyInstanceUID="1.2.03.4")
    not_dicom = b"\0" * 128 + b"NOPE" + b"x" * 100
    r = await app.client.post(
        STUDIES,
        content=multipart([good, no_sop, bad_uid, not_dicom]),
        headers={"Content-Type": content_type()},
    )
    assert r.status_code == 202, r.text
    body = r.json()
    assert len(referenced(body)) == 1
    reasons = [reason for _, reason in failures(body)]
    assert sorted(reasons) == sorted(
        [
            status.DATASET_DOES_NOT_MATCH_SOP_CLASS,
            status.DATASET_DOES_NOT_MATCH_SOP_CLASS,
            status.CANNOT_UNDERSTAND,
        ]
    )
    other = body["0008119A"]["Value"]  # failures with no SOP Instance UID to name
    assert sorted(item["00081197"]["Value"][0] for item in other) == [
        status.DATASET_DOES_NOT_MATCH_SOP_CLASS,
        status.CANNOT_UNDERSTAND,
    ]
    assert all(item["00000902"]["Value"][0] for item in other)  # a readable comment
    assert await count_rows(db) == (1, 1, 1)
    assert len(objects(app)) == 1  # failed parts leave no object behind


async def test_all_parts_failing_answer_409(app: App, db: asyncpg.Pool) -> None:
    r = await app.client.post(
        STUDIES, content=multipart([instance(SOPClassUID=None)]), headers={"Content-Type": content_type()}
    )
    assert r.status_code == 409
    assert list(failed(r.json()).values()) == [status.DATASET_DOES_NOT_MATCH_SOP_CLASS]
    assert "00081199" not in r.json()
    assert await count_rows(db) == (0, 0, 0)


async def test_study_route_refuses_instances_of_another_study(app: App, db: asyncpg.Pool) -> None:
    study = generate_uid()
    mine, other = instance(study), instance()
    r = await app.client.post(
        f"{STUDIES}/{study}", content=multipart([mine, other]), headers={"Content-Type": content_type()}
    )
    assert r.status_code == 202
    body = r.json()
    assert body["00081190"]["Value"] == [f"http://testserver/dicomweb/studies/{study}"]
    assert len(referenced(body)) == 1
    assert list(failed(body).values()) == [status.DATASET_DOES_NOT_MATCH_SOP_CLASS]
    assert await count_rows(db) == (1, 1, 1)


async def test_unknown_transfer_syntax_is_c122(app: App) -> None:
    data = instance()
    patched = data.replace(b"1.2.840.10008.1.2.1\0", b"1.2.840.99999.1.2.3\0")
    assert patched != data
    r = await app.client.post(STUDIES, content=patched, headers={"Content-Type": "application/dicom"})
    assert r.status_code == 409
    assert list(failed(r.json()).values()) == [status.TRANSFER_SYNTAX_NOT_SUPPORTED]


async def test_part_of_another_media_type_fails_alone(app: App) -> None:
    body = f"--{BOUNDARY}\r\nContent-Type: image/jpeg\r\n\r\n\xff\xd8\xff\r\n".encode() + multipart(
        [instance()]
    )
    r = await app.client.post(STUDIES, content=body, headers={"Content-Type": content_type()})
    assert r.status_code == 202
    assert list(failed(r.json()).values()) == [status.CANNOT_UNDERSTAND]


@pytest.mark.parametrize(
    ("ctype", "status"),
    [
        ("application/json", 415),
        ('multipart/related; type="application/dicom+json"; boundary=x', 415),
        ('multipart/related; type="application/dicom"', 400),
        ("multipart/form-data; boundary=x", 415),
        (None, 415),
    ],
)
async def test_request_level_errors(app: App, db: asyncpg.Pool, ctype: str | None, status: int) -> None:
    headers = {"Content-Type": ctype} if ctype else {}
    r = await app.client.post(STUDIES, content=multipart([instance()]), headers=headers)
    assert r.status_code == status
    assert r.json()["message"]
    assert await count_rows(db) == (0, 0, 0)


async def test_malformed_multipart_is_400_and_writes_nothing(app: App, db: asyncpg.Pool) -> None:
    body = multipart([instance(), instance()])
    truncated = body[: len(body) - 200]  # the closing delimiter never comes
    r = await app.client.post(STUDIES, content=truncated, headers={"Content-Type": content_type()})
    assert r.status_code == 400
    assert "ends before the close delimiter" in r.json()["message"]
    assert await count_rows(db) == (0, 0, 0)
    assert objects(app) == []


async def test_empty_multipart_is_400(app: App) -> None:
    r = await app.client.post(
        STUDIES, content=f"--{BOUNDARY}--\r\n", headers={"Content-Type": content_type()}
    )
    assert r.status_code == 400


async def test_same_instance_twice_is_a_safe_retry(app: App, db: asyncpg.Pool) -> None:
    data = instance()
    for _ in range(2):
        r = await app.client.post(STUDIES, content=data, headers={"Content-Type": "application/dicom"})
        assert r.status_code == 200
        assert len(referenced(r.json())) == 1
    assert await count_rows(db) == (1, 1, 1)
    assert await db.fetchval("SELECT num_instances FROM study") == 1
    assert len(objects(app)) == 1  # the retry's copy was removed


async def test_same_uid_different_bytes_is_refused_with_0111(app: App, db: asyncpg.Pool) -> None:
    study, series, sop = generate_uid(), generate_uid(), generate_uid()
    first = instance(study, series, sop, seed=1)
    second = instance(study, series, sop, seed=2)
    assert (
        await app.client.post(STUDIES, content=first, headers={"Content-Type": "application/dicom"})
    ).status_code == 200
    r = await app.client.post(STUDIES, content=second, headers={"Content-Type": "application/dicom"})
    assert r.status_code == 409
    assert failed(r.json()) == {sop: status.DUPLICATE_SOP_INSTANCE}
    (path,) = objects(app)
    assert path.read_bytes()[128:] == first[128:]  # the first copy is untouched


async def test_overwrite_policy_replaces_the_instance(
    db: asyncpg.Pool, database_url: str, tmp_path: Path
) -> None:
    settings = make_settings(database_url, tmp_path / "objects", ingest=dict(duplicate_policy="overwrite"))
    async with running_app(settings) as app:
        study, series, sop = generate_uid(), generate_uid(), generate_uid()
        first, second = instance(study, series, sop, seed=1), instance(study, series, sop, seed=2)
        for data in (first, second):
            r = await app.client.post(STUDIES, content=data, headers={"Content-Type": "application/dicom"})
            assert r.status_code == 200
        (path,) = objects(app)  # the old object is gone after the commit
        assert path.read_bytes()[128:] == second[128:]
        assert await count_rows(db) == (1, 1, 1)
        assert await db.fetchval("SELECT num_instances FROM series") == 1


async def test_concurrent_duplicates_leave_one_row_and_no_orphan(app: App, db: asyncpg.Pool) -> None:
    study, series = generate_uid(), generate_uid()
    files = [instance(study, series, seed=i) for i in range(5)]
    body = multipart(files)

    async def send() -> int:
        r = await app.client.post(STUDIES, content=body, headers={"Content-Type": content_type()})
        return r.status_code

    statuses = await asyncio.gather(*(send() for _ in range(8)))
    assert statuses == [200] * 8
    assert await count_rows(db) == (1, 1, 5)
    assert await db.fetchval("SELECT num_instances FROM study") == 5
    assert len(objects(app)) == 5


async def test_series_of_another_study_is_refused(app: App, db: asyncpg.Pool) -> None:
    series = generate_uid()
    await app.client.post(
        STUDIES, content=instance(generate_uid(), series), headers={"Content-Type": "application/dicom"}
    )
    r = await app.client.post(
        STUDIES, content=instance(generate_uid(), series), headers={"Content-Type": "application/dicom"}
    )
    assert r.status_code == 409
    assert list(failed(r.json()).values()) == [status.DATASET_DOES_NOT_MATCH_SOP_CLASS]
    assert await count_rows(db) == (1, 1, 1)  # no empty study left behind


async def test_aggregates_across_series_and_modalities(app: App, db: asyncpg.Pool) -> None:
    study = generate_uid()
    mr, ct = generate_uid(), generate_uid()
    files = [instance(study, mr, modality="MR", seed=i) for i in range(2)] + [
        instance(study, ct, modality="CT")
    ]
    r = await app.client.post(STUDIES, content=multipart(files), headers={"Content-Type": content_type()})
    assert r.status_code == 200
    row = await db.fetchrow("SELECT num_series, num_instances, modalities FROM study")
    assert (row["num_series"], row["num_instances"], row["modalities"]) == (2, 3, ["CT", "MR"])
    r = await app.client.post(
        STUDIES,
        content=instance(study, mr, modality="MR", seed=9),
        headers={"Content-Type": "application/dicom"},
    )
    row = await db.fetchrow("SELECT num_series, num_instances FROM study")
    assert (row["num_series"], row["num_instances"]) == (2, 4)


async def test_metadata_json_is_built_at_ingest_with_bulk_data_uris(app: App, db: asyncpg.Pool) -> None:
    study, series, sop = generate_uid(), generate_uid(), generate_uid()
    await app.client.post(
        STUDIES,
        content=instance(study, series, sop, patient="Müller^Jürgen", SpecificCharacterSet="ISO_IR 192"),
        headers={"Content-Type": "application/dicom"},
    )
    import orjson

    meta = orjson.loads(await db.fetchval("SELECT metadata::text FROM instance"))
    assert meta["00100010"] == {"vr": "PN", "Value": [{"Alphabetic": "Müller^Jürgen"}]}
    assert meta["7FE00010"]["BulkDataURI"] == (
        f"/dicomweb/studies/{study}/series/{series}/instances/{sop}/bulkdata/7FE00010"
    )
    row = await db.fetchrow("SELECT patient_name, patient_name_folded, rows, columns FROM study, instance")
    assert (row["patient_name"], row["patient_name_folded"]) == ("Müller^Jürgen", "MULLER^JURGEN")
    assert (row["rows"], row["columns"]) == (64, 64)


class TestLimits:
    async def test_declared_body_over_the_limit_is_413_before_reading(
        self, db: asyncpg.Pool, database_url: str, tmp_path: Path
    ) -> None:
        settings = make_settings(database_url, tmp_path / "o", ingest=dict(max_body_bytes=10_000))
        async with running_app(settings) as app:
            body = multipart([instance(size=128)])
            r = await app.client.post(STUDIES, content=body, headers={"Content-Type": content_type()})
            assert r.status_code == 413
            assert r.headers["connection"] == "close"

    async def test_streamed_body_over_the_limit_is_413(
        self, db: asyncpg.Pool, database_url: str, tmp_path: Path
    ) -> None:
        settings = make_settings(database_url, tmp_path / "o", ingest=dict(max_body_bytes=50_000))
        async with running_app(settings) as app:
            body = multipart([instance(seed=i) for i in range(10)])
            sent = 0

            async def chunks() -> AsyncIterator[bytes]:
                nonlocal sent
                for i in range(0, len(body), 4096):
                    sent += 4096
                    yield body[i : i + 4096]

            r = await app.client.post(STUDIES, content=chunks(), headers={"Content-Type": content_type()})
            assert r.status_code == 413
            assert await count_rows(db) == (0, 0, 0)
            assert objects(app) == []

    async def test_too_many_parts_is_413(self, db: asyncpg.Pool, database_url: str, tmp_path: Path) -> None:
        settings = make_settings(database_url, tmp_path / "o", ingest=dict(max_parts=2))
        async with running_app(settings) as app:
            r = await app.client.post(
                STUDIES,
                content=multipart([instance(seed=i) for i in range(3)]),
                headers={"Content-Type": content_type()},
            )
            assert r.status_code == 413
            assert await count_rows(db) == (0, 0, 0)
            assert objects(app) == []

    async def test_part_over_the_limit_is_413(
        self, db: asyncpg.Pool, database_url: str, tmp_path: Path
    ) -> None:
        settings = make_settings(database_url, tmp_path / "o", ingest=dict(max_part_bytes=20_000))
        async with running_app(settings) as app:
            r = await app.client.post(
                STUDIES,
                content=multipart([instance(), instance(size=256)]),
                headers={"Content-Type": content_type()},
            )
            assert r.status_code == 413
            assert await count_rows(db) == (0, 0, 0)

    async def test_header_over_the_budget_is_a7xx(
        self, db: asyncpg.Pool, database_url: str, tmp_path: Path
    ) -> None:
        settings = make_settings(database_url, tmp_path / "o", ingest=dict(header_budget_bytes=4096))
        async with running_app(settings) as app:
            big_header = instance(ImageComments="x" * 8000)  # header longer than the budget
            r = await app.client.post(
                STUDIES,
                content=multipart([big_header, instance(size=16)]),
                headers={"Content-Type": content_type()},
            )
            assert r.status_code == 202
            assert list(failed(r.json()).values()) == [status.REFUSED_OUT_OF_RESOURCES]


async def test_same_instance_twice_in_one_request(app: App, db: asyncpg.Pool) -> None:
    study, series, sop = generate_uid(), generate_uid(), generate_uid()
    same = instance(study, series, sop, seed=1)
    r = await app.client.post(
        STUDIES, content=multipart([same, same]), headers={"Content-Type": content_type()}
    )
    assert r.status_code == 200
    assert referenced(r.json()) == [sop, sop]
    assert await count_rows(db) == (1, 1, 1)
    assert len(objects(app)) == 1
    other = instance(study, series, sop, seed=2)
    r = await app.client.post(
        STUDIES, content=multipart([other, same]), headers={"Content-Type": content_type()}
    )
    assert r.status_code == 202  # the stored copy stands; the one with different bytes fails
    assert referenced(r.json()) == [sop]
    assert failures(r.json()) == [(sop, status.DUPLICATE_SOP_INSTANCE)]
    assert len(objects(app)) == 1


def many_tiny_elements(count: int) -> bytes:
    """A valid Part-10 file whose header holds ``count`` tiny private elements before Pixel Data."""
    base = instance(size=2)
    at = base.rindex(b"\xe0\x7f\x10\x00")
    body = bytearray()
    group, element = 0x0009, 0x1000
    for _ in range(count):
        body += struct.pack("<HH2sH", group, element, b"LO", 2) + b"ab"
        element += 1
        if element > 0xFFFE:
            group, element = group + 2, 0x1000
    return base[:at] + bytes(body) + base[at:]


async def test_header_over_the_time_budget_is_a700(
    db: asyncpg.Pool, database_url: str, tmp_path: Path
) -> None:
    """A header of tiny elements costs CPU out of proportion to its bytes: the parse stops in time."""
    settings = make_settings(database_url, tmp_path / "objects", ingest=dict(header_seconds=0.05))
    async with running_app(settings) as app:
        slow = many_tiny_elements(300_000)  # 3 MB, well inside the byte budget, seconds of CPU
        r = await app.client.post(
            STUDIES, content=multipart([slow, instance()]), headers={"Content-Type": content_type()}
        )
        assert r.status_code == 202
        assert [reason for _, reason in failures(r.json())] == [status.REFUSED_OUT_OF_RESOURCES]
        (item,) = r.json().get("00081198", r.json().get("0008119A"))["Value"]  # named when the UIDs were seen
        assert "time budget" in item["00000902"]["Value"][0]
