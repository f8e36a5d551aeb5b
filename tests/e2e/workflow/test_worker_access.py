"""The analysis service's side of access (issue #12 §3): its reserved tenant, the token endpoint
never granting ``analysis`` to a hospital's client, the CLI refusing such a client, the
development analysis client, and job tokens confined to their studies."""

from __future__ import annotations

import argparse
import json
import os
import stat
import time
from functools import partial
from pathlib import Path

import asyncpg
import pytest

from dicomweb_server.access import admin, auth
from dicomweb_server.db import access as index
from dicomweb_server.db.pool import connection
from tests.conftest import ASGI_ISSUER, KEYS, TENANT, App, bearer, make_settings
from tests.e2e.access.test_access import CHEAP, anonymous, new_client, token_basic

STUDY = "1.2.826.0.1.3680043.8.498.71"


async def test_the_token_endpoint_never_grants_analysis_to_a_hospital_client(
    app: App, db: asyncpg.Pool
) -> None:
    client_id, secret = await new_client(db, ("dicomweb.read", "analysis"), cheap=True)  # a bad row
    async with anonymous(app) as anon:
        everything = await token_basic(anon, client_id, secret)
        assert everything.status_code == 200 and everything.json()["scope"] == "dicomweb.read"
        asked = await token_basic(anon, client_id, secret, scope="analysis")
        assert asked.status_code == 400 and asked.json()["error"] == "invalid_scope"


async def test_the_token_endpoint_grants_analysis_to_an_analysis_client(app: App, db: asyncpg.Pool) -> None:
    secret = "analysis-secret-" + "x" * 20
    async with connection(db) as conn:
        await index.create_client(
            conn, "analysis-t1", auth.ANALYSIS_TENANT, "a", ["analysis"], CHEAP.hash(secret)
        )
    async with anonymous(app) as anon:
        r = await token_basic(anon, "analysis-t1", secret)
        assert r.status_code == 200 and r.json()["scope"] == "analysis"
        token = r.json()["access_token"]
        claim = await anon.post("/api/v1/jobs/claim", json={"worker": "w"}, headers=bearer(token))
        assert claim.status_code == 204
        assert (await anon.get("/dicomweb/studies", headers=bearer(token))).status_code == 403


def _job_token(studies: list[str], client_id: str = "test-analysis", tenant: str = TENANT) -> str:
    cfg = auth.TokenSettings(ASGI_ISSUER, ASGI_ISSUER + "/dicomweb")
    return auth.mint_job_token(KEYS, cfg, client_id, tenant, studies, 2**40)


async def test_a_job_token_needs_an_analysis_client(app: App) -> None:
    async with anonymous(app) as anon:
        url = f"/dicomweb/studies/{STUDY}/metadata"
        ok = await anon.get(url, headers=bearer(_job_token([STUDY])))
        assert ok.status_code == 404  # allowed in, the study is not stored
        hospital = await anon.get(url, headers=bearer(_job_token([STUDY], client_id="test-client")))
        assert hospital.status_code == 401
        store = await anon.post(f"/dicomweb/studies/{STUDY}", headers=bearer(_job_token([STUDY])))
        assert store.status_code == 403


def test_job_token_expiry_is_capped_by_the_lifetime() -> None:
    cfg = auth.TokenSettings(ASGI_ISSUER, ASGI_ISSUER + "/dicomweb", lifetime=600)
    token = auth.mint_job_token(KEYS, cfg, "a", TENANT, [STUDY], 2**40)
    principal = auth.Verifier(KEYS, cfg).verify(token)
    assert principal.studies == frozenset({STUDY}) and principal.scopes == frozenset({"dicomweb.read"})
    assert principal.expires <= time.time() + 601
    soon = auth.mint_job_token(KEYS, cfg, "a", TENANT, [STUDY], int(time.time()) + 60)
    assert auth.Verifier(KEYS, cfg).verify(soon).expires <= time.time() + 61
    plain = auth.Verifier(KEYS, cfg).verify(auth.issue(KEYS, cfg, "a", TENANT, ["dicomweb.read"]))
    assert plain.studies is None


def _args(**fields: object) -> argparse.Namespace:
    base: dict[str, object] = dict(
        action="create",
        client_id=None,
        tenant=None,
        name=None,
        scopes=None,
        analysis=False,
        rate_requests=None,
        rate_bytes=None,
    )
    return argparse.Namespace(**{**base, **fields})


def test_cli_refuses_the_analysis_scope_for_a_hospital(database_url: str, tmp_path: Path) -> None:
    settings = make_settings(database_url, tmp_path / "objects")
    with pytest.raises(admin.CommandError, match="analysis"):
        admin.clients_command(_args(tenant=TENANT, scopes="dicomweb.read,analysis"), database_url, settings)
    with pytest.raises(admin.CommandError, match="analysis"):
        admin.clients_command(
            _args(tenant=auth.ANALYSIS_TENANT, scopes="dicomweb.read"), database_url, settings
        )
    with pytest.raises(admin.CommandError, match="reserved"):
        admin.tenants_command(
            argparse.Namespace(action="create", tenant="analysis", name=None), database_url, settings
        )


def test_cli_creates_an_analysis_client(
    database_url: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    settings = make_settings(database_url, tmp_path / "objects")
    admin.clients_command(_args(analysis=True, name="Brain analysis"), database_url, settings)
    made = json.loads(capsys.readouterr().out)
    assert made["tenant"] == auth.ANALYSIS_TENANT and made["scopes"] == ["analysis"]
    with pytest.raises(admin.CommandError):
        admin.clients_command(_args(analysis=True, tenant=TENANT), database_url, settings)


def test_bootstrap_dev_makes_the_analysis_client(database_url: str, tmp_path: Path) -> None:
    settings = make_settings(database_url, tmp_path / "data" / "objects", access=dict(signing_keys=None))
    _, dev = admin.bootstrap_dev(settings, database_url)
    assert dev.analysis is not None and dev.analysis.client_id == admin.DEV_ANALYSIS_CLIENT
    saved = admin.dev_analysis_path(settings)
    assert json.loads(saved.read_text()) == {
        "client_id": admin.DEV_ANALYSIS_CLIENT,
        "client_secret": dev.analysis.client_secret,
    }
    assert stat.S_IMODE(os.stat(saved).st_mode) == 0o600
    try:
        _, again = admin.bootstrap_dev(settings, database_url)  # the saved secrets keep working
        assert again == dev
    finally:  # an enabled development client would stop other tests' servers on public addresses
        for name in (admin.DEV_CLIENT, admin.DEV_ANALYSIS_CLIENT):
            admin._run(database_url, partial(index.set_client_disabled, client_id=name, disabled=True))
