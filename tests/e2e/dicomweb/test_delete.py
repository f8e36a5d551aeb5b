"""DELETE of studies, series and instances: gone from QIDO and WADO at once, aggregates kept true."""

from __future__ import annotations

import asyncpg
from pydicom.uid import generate_uid

from dicomweb_server.ingest import sweep
from tests.conftest import App
from tests.support.dicomfiles import content_type, instance, multipart

STUDIES = "/dicomweb/studies"


async def store(app: App, files: list[bytes]) -> None:
    r = await app.client.post(STUDIES, content=multipart(files), headers={"Content-Type": content_type()})
    assert r.status_code == 200, r.text


def object_files(app: App) -> set[str]:
    root = app.settings.storage.path
    return {str(p.relative_to(root)) for p in root.rglob("*") if p.is_file() and ".staging" not in p.parts}


async def study_attrs(app: App, study: str) -> dict:
    r = await app.client.get(
        "/dicomweb/studies",
        params={"StudyInstanceUID": study, "includefield": "00080061,00201206,00201208"},
    )
    (found,) = r.json()
    return found


async def test_delete_instance_series_and_study(app: App, db: asyncpg.Pool) -> None:
    study, s1, s2 = generate_uid(), generate_uid(), generate_uid()
    sops = [generate_uid() for _ in range(4)]
    files = [
        instance(study, s1, sops[0]),
        instance(study, s1, sops[1]),
        instance(study, s2, sops[2], modality="MR"),
        instance(study, s2, sops[3], modality="MR"),
    ]
    await store(app, files)
    assert len(object_files(app)) == 4

    r = await app.client.delete(f"{STUDIES}/{study}/series/{s1}/instances/{sops[0]}")
    assert r.status_code == 204
    assert r.content == b""
    r = await app.client.get(f"{STUDIES}/{study}/series/{s1}/instances/{sops[0]}")
    assert r.status_code == 404
    attrs = await study_attrs(app, study)
    assert attrs["00201208"]["Value"] == [3]  # NumberOfStudyRelatedInstances
    assert attrs["00201206"]["Value"] == [2]  # NumberOfStudyRelatedSeries
    assert len(object_files(app)) == 3

    # The last instance of a series takes the series, and its modality, with it.
    r = await app.client.delete(f"{STUDIES}/{study}/series/{s1}/instances/{sops[1]}")
    assert r.status_code == 204
    attrs = await study_attrs(app, study)
    assert attrs["00201206"]["Value"] == [1]
    assert attrs["00080061"]["Value"] == ["MR"]
    r = await app.client.get(f"{STUDIES}/{study}/series")
    assert [s["0020000E"]["Value"][0] for s in r.json()] == [s2]

    r = await app.client.delete(f"{STUDIES}/{study}/series/{s2}")
    assert r.status_code == 204
    r = await app.client.get("/dicomweb/studies", params={"StudyInstanceUID": study})
    assert r.json() == []
    assert await db.fetchval("SELECT count(*) FROM study") == 0
    assert object_files(app) == set()
    r = await app.client.get(f"{STUDIES}/{study}/metadata")
    assert r.status_code == 404


async def test_delete_study_leaves_other_studies_alone(app: App) -> None:
    keep, drop = generate_uid(), generate_uid()
    await store(
        app, [instance(keep, generate_uid()), instance(drop, generate_uid()), instance(drop, generate_uid())]
    )
    r = await app.client.delete(f"{STUDIES}/{drop}")
    assert r.status_code == 204
    r = await app.client.get("/dicomweb/studies")
    assert [s["0020000D"]["Value"][0] for s in r.json()] == [keep]
    assert len(object_files(app)) == 1
    r = await app.client.get(f"{STUDIES}/{keep}", headers={"Accept": "application/zip"})
    assert r.status_code == 200


async def test_delete_unknown_resource_is_404(app: App) -> None:
    study, series = generate_uid(), generate_uid()
    await store(app, [instance(study, series)])
    for path in (
        f"{STUDIES}/{generate_uid()}",
        f"{STUDIES}/{study}/series/{generate_uid()}",
        f"{STUDIES}/{study}/series/{series}/instances/{generate_uid()}",
        f"{STUDIES}/{generate_uid()}/series/{series}",  # a real series under the wrong study
    ):
        r = await app.client.delete(path)
        assert r.status_code == 404, path
    assert len(object_files(app)) == 1


async def test_a_deleted_instance_can_be_stored_again(app: App) -> None:
    study, series, sop = generate_uid(), generate_uid(), generate_uid()
    await store(app, [instance(study, series, sop, seed=1)])
    assert (await app.client.delete(f"{STUDIES}/{study}")).status_code == 204
    data = instance(study, series, sop, seed=2)  # other bytes: no longer a conflicting duplicate
    await store(app, [data])
    r = await app.client.get(
        f"{STUDIES}/{study}/series/{series}/instances/{sop}",
        headers={"Accept": "application/dicom; transfer-syntax=*"},
    )
    assert r.content[128:] == data[128:]


async def test_objects_left_by_a_crash_after_the_index_commit_are_swept(app: App) -> None:
    """The index commit is the delete; objects removed afterwards.  If the process dies in
    between, the sweep finds them unreferenced and removes them."""
    study = generate_uid()
    await store(app, [instance(study, generate_uid())])
    before = object_files(app)
    state = app.state
    from dicomweb_server.db import delete as index
    from dicomweb_server.db.pool import transaction

    async with transaction(state.pool) as conn:
        keys = await index.delete(conn, "default", study)  # the index half only: the "crash"
    assert keys and set(keys) == before
    assert object_files(app) == before
    report = await sweep.sweep(state.pool, state.store, grace=0)
    assert report.removed_objects == 1
    assert object_files(app) == set()
