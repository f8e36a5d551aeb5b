"""An external identity provider's tokens over ASGI: its tenant claim scopes the data like ours."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path

import asyncpg
import pytest
from joserfc.jwk import KeySet
from pydicom.uid import generate_uid

from tests.conftest import App, bearer, make_settings, running_app
from tests.support.dicomfiles import content_type, instance, multipart
from tests.unit.access.test_auth_external import IDP, IDP_KEY, idp_token


@pytest.fixture
async def with_idp(db: asyncpg.Pool, database_url: str, tmp_path: Path) -> AsyncIterator[App]:
    jwks = tmp_path / "idp.json"
    jwks.write_text(json.dumps(KeySet([IDP_KEY]).as_dict(private=False)))
    settings = make_settings(
        database_url,
        tmp_path / "objects",
        access=dict(external_issuer=IDP, external_jwks=str(jwks), external_tenant_claim="hospital"),
    )
    async with running_app(settings) as app:
        yield app


async def test_idp_tokens_see_their_tenant_only(with_idp: App) -> None:
    study = generate_uid()
    r = await with_idp.client.post(  # stored with our own token, tenant "default"
        "/dicomweb/studies", content=multipart([instance(study)]), headers={"Content-Type": content_type()}
    )
    assert r.status_code == 200
    reader = bearer(idp_token())  # tenant "default" through the "hospital" claim, dicomweb.read
    r = await with_idp.client.get("/dicomweb/studies", params={"StudyInstanceUID": study}, headers=reader)
    assert r.status_code == 200 and len(r.json()) == 1
    other = bearer(idp_token(hospital="other"))
    r = await with_idp.client.get("/dicomweb/studies", params={"StudyInstanceUID": study}, headers=other)
    assert r.status_code == 200 and r.json() == []
    r = await with_idp.client.get(f"/dicomweb/studies/{study}/metadata", headers=other)
    assert r.status_code == 404


async def test_idp_tokens_need_a_known_tenant_and_the_scope(with_idp: App) -> None:
    r = await with_idp.client.get("/dicomweb/studies", headers=bearer(idp_token(hospital="nosuch")))
    assert r.status_code == 401
    assert 'error="invalid_token"' in r.headers["www-authenticate"]
    r = await with_idp.client.post(
        "/dicomweb/studies",
        content=multipart([instance()]),
        headers={"Content-Type": content_type(), **bearer(idp_token())},  # read scope only
    )
    assert r.status_code == 403
    assert 'scope="dicomweb.write"' in r.headers["www-authenticate"]
