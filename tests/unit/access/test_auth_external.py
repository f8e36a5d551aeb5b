"""Tokens from one configured external identity provider: its keys, its issuer, a claim for the tenant."""

from __future__ import annotations

import json
import time
import uuid
from pathlib import Path

import pytest
from joserfc import jwt
from joserfc.jwk import ECKey, KeySet, RSAKey

from dicomweb_server.access import auth
from tests.conftest import ASGI_ISSUER, KEYS

IDP = "https://idp.example.org/realms/hospital"
AUDIENCE = ASGI_ISSUER + "/dicomweb"


def idp_key() -> RSAKey:
    key = RSAKey.generate_key(2048, {"alg": "RS256", "use": "sig"}, private=True)
    key.ensure_kid()
    return key


IDP_KEY = idp_key()


def external(tmp_path: Path, claim: str = "hospital") -> auth.ExternalIssuer:
    jwks = tmp_path / "idp-jwks.json"
    jwks.write_text(json.dumps(KeySet([IDP_KEY]).as_dict(private=False)))
    return auth.ExternalIssuer.load(IDP, AUDIENCE, str(jwks), claim)


def idp_token(key: object = IDP_KEY, alg: str = "RS256", **overrides: object) -> str:
    now = int(time.time())
    claims = {
        "iss": IDP,
        "aud": [AUDIENCE, "account"],
        "azp": "pacs-router",
        "hospital": "default",
        "scope": "dicomweb.read profile",
        "iat": now,
        "exp": now + 300,
        "jti": uuid.uuid4().hex,
        **overrides,
    }
    claims = {k: v for k, v in claims.items() if v is not None}
    header = {"alg": alg, "typ": "at+jwt", "kid": key.kid}  # type: ignore[attr-defined]
    return jwt.encode(header, claims, key, algorithms=[alg])  # type: ignore[arg-type]


def verifier(tmp_path: Path) -> auth.Verifier:
    return auth.Verifier(KEYS, auth.TokenSettings(ASGI_ISSUER, AUDIENCE), external(tmp_path))


def test_an_idp_token_maps_its_claim_to_the_tenant(tmp_path: Path) -> None:
    principal = verifier(tmp_path).verify(idp_token())
    assert principal.external
    assert (principal.client_id, principal.tenant) == ("pacs-router", "default")
    assert principal.scopes == {"dicomweb.read", "profile"}


def test_our_own_tokens_still_verify_alongside(tmp_path: Path) -> None:
    ours = auth.issue(KEYS, auth.TokenSettings(ASGI_ISSUER, AUDIENCE), "c", "default", ["dicomweb.read"])
    assert not verifier(tmp_path).verify(ours).external


@pytest.mark.parametrize(
    ("case", "token"),
    [
        ("idp issuer, signed with our key", lambda: idp_token(KEYS.signing, "ES256")),
        ("idp issuer, a foreign RSA key", lambda: idp_token(idp_key())),
        ("idp issuer, HS256 with the public key", None),
        ("no tenant claim", lambda: idp_token(hospital=None)),
        ("tenant claim not a tenant id", lambda: idp_token(hospital="../other")),
        ("tenant claim not a string", lambda: idp_token(hospital=["default"])),
        ("wrong audience", lambda: idp_token(aud="https://elsewhere")),
        ("expired", lambda: idp_token(exp=int(time.time()) - 3600)),
        ("no client id", lambda: idp_token(azp=None)),
        ("exp of 2^62", lambda: idp_token(exp=2**62)),
        ("a lifetime over the maximum", lambda: idp_token(exp=int(time.time()) + 86400 + 60)),
        ("nbf past the leeway", lambda: idp_token(nbf=int(time.time()) + 45)),
        ("iat past the leeway", lambda: idp_token(iat=int(time.time()) + 45)),
        ("our issuer, signed by the idp", lambda: idp_token(iss=ASGI_ISSUER)),
    ],
)
def test_forged_or_invalid_idp_tokens_are_refused(tmp_path: Path, case: str, token: object) -> None:
    if token is None:  # HS256 keyed with the IdP's public key (algorithm confusion)
        import base64
        import hashlib
        import hmac

        def b64(data: bytes) -> str:
            return base64.urlsafe_b64encode(data).rstrip(b"=").decode()

        header = b64(json.dumps({"alg": "HS256", "typ": "at+jwt", "kid": IDP_KEY.kid}).encode())
        body = b64(json.dumps(jwt.decode(idp_token(), IDP_KEY).claims).encode())
        secret = json.dumps(IDP_KEY.as_dict(private=False)).encode()
        signature = b64(hmac.new(secret, f"{header}.{body}".encode(), hashlib.sha256).digest())
        value = f"{header}.{body}.{signature}"
    else:
        value = token()  # type: ignore[operator]
    with pytest.raises(auth.InvalidToken):
        verifier(tmp_path).verify(value)


def test_no_external_issuer_configured_refuses_idp_tokens() -> None:
    plain = auth.Verifier(KEYS, auth.TokenSettings(ASGI_ISSUER, AUDIENCE))
    with pytest.raises(auth.InvalidToken):
        plain.verify(idp_token())


def test_an_ec_idp_key_works_too(tmp_path: Path) -> None:
    key = ECKey.generate_key("P-256", {"alg": "ES256", "use": "sig"}, private=True)
    key.ensure_kid()
    jwks = tmp_path / "ec.json"
    jwks.write_text(json.dumps(KeySet([key]).as_dict(private=False)))
    ext = auth.ExternalIssuer.load(IDP, AUDIENCE, str(jwks), "hospital")
    v = auth.Verifier(KEYS, auth.TokenSettings(ASGI_ISSUER, AUDIENCE), ext)
    assert v.verify(idp_token(key, "ES256")).tenant == "default"


def test_idp_tokens_get_the_same_leeway_and_up_to_a_day_of_lifetime(tmp_path: Path) -> None:
    now = int(time.time())
    v = verifier(tmp_path)
    assert v.verify(idp_token(nbf=now + 20, iat=now + 20)).external
    assert v.verify(idp_token(iat=now - 600, exp=now - 20)).external
    assert v.verify(idp_token(iat=now, exp=now + auth.EXTERNAL_MAX_LIFETIME)).external
