"""Access through a real uvicorn process: dicomweb-client with a bearer token, two tenants,
the administration CLI, and the refusal to serve a public address insecurely."""

from __future__ import annotations

import io
import json
import os
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path

import asyncpg
import httpx
import pydicom
import pytest
from pydicom.uid import generate_uid

from dicomweb_server.access import auth
from dicomweb_server.db import access as index
from dicomweb_server.db.pool import connection
from tests.conftest import (
    KEYS_FILE,
    OTHER_CLIENT,
    OTHER_TENANT,
    ROOT,
    Server,
    bearer,
    free_port,
    token_for,
)
from tests.support.dicomfiles import instance

CLIENT_CACHE_SECONDS = 5.0  # access.CLIENT_CACHE_SECONDS in the server process


def cli(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "dicomweb_server.cli", *args],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )


def cli_json(env: dict[str, str], *args: str) -> object:
    done = cli(env, *args)
    assert done.returncode == 0, done.stderr[-2000:]
    return json.loads(done.stdout.split("\n", 1)[0] if args[:2] == ("clients", "create") else done.stdout)


def get_token(server: Server, client_id: str, secret: str, **form: str) -> httpx.Response:
    return httpx.post(
        server.url + "/oauth/token",
        data={"grant_type": "client_credentials", **form},
        auth=(client_id, secret),
        timeout=10,
    )


def test_dicomweb_client_stores_retrieves_and_a_second_tenant_sees_nothing(live_server: Server) -> None:
    from dicomweb_client.api import DICOMwebClient
    from requests.exceptions import HTTPError

    study, series, sop = generate_uid(), generate_uid(), generate_uid()
    ds = pydicom.dcmread(io.BytesIO(instance(study, series, sop, patient="Socket^Tenant")))
    mine = DICOMwebClient(url=f"{live_server.url}/dicomweb", headers=live_server.headers)
    mine.store_instances(datasets=[ds])
    back = mine.retrieve_instance(study, series, sop)
    assert back.PixelData == ds.PixelData
    assert [s["0020000D"]["Value"][0] for s in mine.search_for_studies()] == [study]

    token = token_for(live_server.url, OTHER_CLIENT, OTHER_TENANT)
    theirs = DICOMwebClient(url=f"{live_server.url}/dicomweb", headers=bearer(token))
    assert theirs.search_for_studies() == []
    assert theirs.search_for_studies(search_filters={"StudyInstanceUID": study}) == []
    assert theirs.search_for_series() == []
    assert theirs.search_for_instances() == []
    with pytest.raises(HTTPError) as caught:
        theirs.retrieve_instance(study, series, sop)
    assert caught.value.response.status_code == 404
    with pytest.raises(HTTPError) as caught:
        theirs.retrieve_study_metadata(study)
    assert caught.value.response.status_code == 404

    anonymous = DICOMwebClient(url=f"{live_server.url}/dicomweb")
    with pytest.raises(HTTPError) as caught:
        anonymous.search_for_studies()
    assert caught.value.response.status_code == 401
    assert caught.value.response.headers["WWW-Authenticate"].startswith("Bearer")


def test_cli_client_lifecycle_against_the_live_server(live_server: Server) -> None:
    env = live_server.env
    created = cli_json(
        env, "clients", "create", "--tenant", "default", "--scopes", "dicomweb.read,dicomweb.write"
    )
    assert isinstance(created, dict)
    client_id, first = created["client_id"], created["client_secret"]
    assert created["tenant"] == "default"
    assert created["scopes"] == ["dicomweb.read", "dicomweb.write"]

    r = get_token(live_server, client_id, first)
    assert r.status_code == 200, r.text
    assert r.json()["scope"] == "dicomweb.read dicomweb.write"
    token = r.json()["access_token"]
    claims = auth.Verifier(
        auth.SigningKeys.load(KEYS_FILE), auth.TokenSettings(live_server.url, live_server.url + "/dicomweb")
    ).verify(token)
    assert (claims.client_id, claims.tenant) == (client_id, "default")
    study = generate_uid()
    r = httpx.post(
        live_server.url + "/dicomweb/studies",
        content=instance(study),
        headers={"Content-Type": "application/dicom", **bearer(token)},
    )
    assert r.status_code == 200, r.text
    r = httpx.get(
        live_server.url + "/dicomweb/studies", params={"StudyInstanceUID": study}, headers=bearer(token)
    )
    assert r.status_code == 200 and len(r.json()) == 1
    r = httpx.delete(live_server.url + f"/dicomweb/studies/{study}", headers=bearer(token))
    assert r.status_code == 403  # no dicomweb.delete scope
    assert 'error="insufficient_scope"' in r.headers["www-authenticate"]

    rotated = cli_json(env, "clients", "rotate-secret", client_id)
    assert isinstance(rotated, dict)
    second = rotated["client_secret"]
    assert second != first and rotated["old_secret_valid_for_s"] > 0
    assert get_token(live_server, client_id, first).status_code == 200  # the overlap
    assert get_token(live_server, client_id, second).status_code == 200
    listed = cli_json(env, "clients", "list", "--tenant", "default")
    assert isinstance(listed, list)
    (mine,) = [c for c in listed if c["client_id"] == client_id]
    assert mine["active_secrets"] == 2 and not mine["disabled"]
    assert first not in json.dumps(listed) and second not in json.dumps(listed)
    third = cli_json({**env, "DICOMWEB_SECRET_OVERLAP_SECONDS": "0"}, "clients", "rotate-secret", client_id)
    assert isinstance(third, dict)
    assert get_token(live_server, client_id, third["client_secret"]).status_code == 200
    assert get_token(live_server, client_id, second).status_code == 401
    assert get_token(live_server, client_id, first).status_code == 401

    assert httpx.get(live_server.url + "/dicomweb/studies", headers=bearer(token)).status_code == 200
    assert cli_json(env, "clients", "disable", client_id) == {"client_id": client_id, "disabled": True}
    disabled_at = time.monotonic()
    r = get_token(live_server, client_id, third["client_secret"])
    assert r.status_code == 401
    assert r.json()["error"] == "invalid_client"
    # A token issued before is refused within the client cache's few seconds.
    status = 200
    while status == 200 and time.monotonic() - disabled_at < CLIENT_CACHE_SECONDS + 3:
        status = httpx.get(live_server.url + "/dicomweb/studies", headers=bearer(token)).status_code
        if status == 200:
            time.sleep(0.25)
    assert status == 401
    assert time.monotonic() - disabled_at < CLIENT_CACHE_SECONDS + 3
    assert cli(env, "clients", "disable", "no-such-client").returncode != 0


def test_cli_tenants_create_and_list(db: asyncpg.Pool, database_url: str, tmp_path: Path) -> None:
    env = {**os.environ, "DATABASE_URL": database_url, "DICOMWEB_DATA_DIR": str(tmp_path)}
    tenant = f"cli-{uuid.uuid4().hex[:8]}"
    assert cli_json(env, "tenants", "create", tenant, "--name", "CLI tenant") == {
        "tenant": tenant,
        "created": True,
    }
    assert cli_json(env, "tenants", "create", tenant) == {"tenant": tenant, "created": False}
    listed = cli_json(env, "tenants", "list")
    assert isinstance(listed, list)
    (row,) = [t for t in listed if t["id"] == tenant]
    assert row["name"] == "CLI tenant" and row["disabled"] is False
    assert cli(env, "tenants", "create", "Not A Valid Tenant!").returncode != 0


def _insecure_env(database_url: str, data: Path, keys: Path | None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("DICOMWEB_")}
    env.update(DATABASE_URL=database_url, DICOMWEB_DATA_DIR=str(data), DICOMWEB_GC_INTERVAL_SECONDS="0")
    if keys is not None:
        env["DICOMWEB_SIGNING_KEYS"] = str(keys)
    return env


def _listening(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.2):
            return True
    except OSError:
        return False


def _refused(env: dict[str, str]) -> str:
    """Run `serve --host 0.0.0.0`; it must exit non-zero without ever listening. Its output."""
    port = free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "dicomweb_server.cli", "serve", "--host", "0.0.0.0", "--port", str(port)],
        env=env,
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    listened = False
    deadline = time.monotonic() + 60  # a loaded machine: migrations first
    try:
        while process.poll() is None and time.monotonic() < deadline:
            if _listening(port):
                listened = True
                break
            time.sleep(0.05)
    finally:
        if process.poll() is None:
            process.kill()
        output = process.communicate(timeout=20)[0]
    assert not listened, f"the server listened on 0.0.0.0:{port}: {output[-2000:]}"
    assert process.returncode not in (None, 0), output[-2000:]
    return output


@pytest.fixture
async def dev_client_enabled(db: asyncpg.Pool) -> None:
    """The development client exists and is enabled (as after `make run`)."""
    from dicomweb_server.access.admin import DEV_CLIENT, DEV_TENANT

    async with connection(db) as conn:
        await index.create_tenant(conn, DEV_TENANT, "Development tenant")
        if await index.find_client(conn, DEV_CLIENT) is None:
            hashed = auth.hash_secret("dev")
            await index.create_client(conn, DEV_CLIENT, DEV_TENANT, "dev", auth.SCOPES, hashed)
        await index.set_client_disabled(conn, DEV_CLIENT, False)


def test_serve_refuses_a_public_address_without_signing_keys(
    dev_client_enabled: None, database_url: str, tmp_path: Path
) -> None:
    output = _refused(_insecure_env(database_url, tmp_path, None))
    assert "refusing to listen on 0.0.0.0" in output
    assert "DICOMWEB_SIGNING_KEYS" in output


def test_serve_refuses_a_public_address_with_the_development_keys(
    dev_client_enabled: None, database_url: str, tmp_path: Path
) -> None:
    dev_keys = tmp_path / "signing-keys.json"  # admin.dev_keys_path: the data folder's key file
    auth.SigningKeys.generate(dev_keys)
    output = _refused(_insecure_env(database_url, tmp_path, dev_keys))
    assert "refusing to listen on 0.0.0.0 with the development signing keys" in output


def test_serve_refuses_a_public_address_while_the_development_client_is_enabled(
    dev_client_enabled: None, database_url: str, tmp_path: Path
) -> None:
    output = _refused(_insecure_env(database_url, tmp_path / "data", KEYS_FILE))
    assert "refusing to listen on 0.0.0.0 while the development client dev-client is enabled" in output
