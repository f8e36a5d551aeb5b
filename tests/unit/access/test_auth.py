"""Forged and invalid access tokens (RFC 8725, RFC 9068): every one is refused by ``auth.Verifier``.

Each forgery changes one thing about an otherwise valid token, and where possible is
signed with *our* key, so that what is tested is the one check under attack and not
just the signature.  Tokens that joserfc refuses to build (HS256 keyed with a public
key, ``crit`` naming a claim, tampered segments) are assembled from base64url, JSON
and hmac by hand.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time
from collections.abc import Callable
from typing import Any

import pytest
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature
from joserfc import jwt
from joserfc.jwk import ECKey, RSAKey

from dicomweb_server.access import auth

ISSUER = "https://issuer.test"
CFG = auth.TokenSettings(ISSUER, ISSUER + "/dicomweb")
OURS = auth.SigningKeys.generate()  # no path: kept in memory
KID = str(OURS.signing.kid)
FOREIGN_EC = ECKey.generate_key("P-256", {"kid": "foreign-ec"}, private=True)
FOREIGN_P384 = ECKey.generate_key("P-384", {"kid": KID}, private=True)
FOREIGN_RSA = RSAKey.generate_key(2048, {"kid": KID}, private=True)


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def segment(value: Any) -> str:
    return b64(json.dumps(value).encode())


def claims(**changes: Any) -> dict[str, Any]:
    """Valid RFC 9068 claims for ``CFG``; a change to ``None`` removes the claim."""
    now = int(time.time())
    base: dict[str, Any] = {
        "iss": ISSUER,
        "aud": CFG.audience,
        "sub": "client-a",
        "client_id": "client-a",
        "tenant": "tenant-a",
        "scope": "dicomweb.read",
        "iat": now,
        "nbf": now,
        "exp": now + 600,
        "jti": "0123456789abcdef",
    }
    base.update(changes)
    return {k: v for k, v in base.items() if v is not None}


def header(**changes: Any) -> dict[str, Any]:
    base: dict[str, Any] = {"alg": "ES256", "typ": "at+jwt", "kid": KID}
    base.update(changes)
    return {k: v for k, v in base.items() if v is not None}


def signed(hdr: dict[str, Any] | None = None, body: dict[str, Any] | None = None, key: Any = None) -> str:
    """Signed with joserfc (our key unless told), the header taken verbatim; an ES256 signature
    in the low-S form we sign in, so that a forgery fails on its one defect, not on that."""
    hdr = header() if hdr is None else hdr
    token = jwt.encode(
        hdr,
        claims() if body is None else body,
        OURS.signing if key is None else key,
        algorithms=[hdr["alg"]],
        default_type=None,
    )
    return auth.canonical_es256(token) if hdr["alg"] == "ES256" else token


def es256(key: ECKey, data: bytes, high_s: bool = False) -> bytes:
    """An ES256 r||s signature, low-S unless ``high_s`` (then the same signature as (r, n - s))."""
    der = key.private_key.sign(data, ec.ECDSA(hashes.SHA256()))
    r, s = decode_dss_signature(der)
    low = min(s, auth.P256_ORDER - s)
    s = auth.P256_ORDER - low if high_s else low
    return r.to_bytes(32, "big") + s.to_bytes(32, "big")


def raw(hdr: dict[str, Any], payload: bytes, sign: Callable[[bytes], bytes] | None = None) -> str:
    """A compact JWS assembled by hand; signed with our key unless ``sign`` says otherwise."""
    signing_input = f"{segment(hdr)}.{b64(payload)}".encode()
    signature = (sign or (lambda data: es256(OURS.signing, data)))(signing_input)
    return f"{signing_input.decode()}.{b64(signature)}"


def hs256(secret: bytes) -> Callable[[bytes], bytes]:
    return lambda data: hmac.new(secret, data, hashlib.sha256).digest()


def tampered(field: str, value: Any) -> str:
    """A valid token whose payload is changed after signing (the signature kept)."""
    head, _, sig = signed().split(".")
    body = claims()
    body[field] = value
    return f"{head}.{segment(body)}.{sig}"


def other_issuer() -> str:
    theirs = auth.SigningKeys.generate()
    cfg = auth.TokenSettings("https://elsewhere.test", "https://elsewhere.test/dicomweb")
    return auth.issue(theirs, cfg, "client-a", "tenant-a", ["admin"])


def other_issuer_our_audience() -> str:
    theirs = auth.SigningKeys.generate()
    return auth.issue(theirs, auth.TokenSettings("https://elsewhere.test", CFG.audience), "c", "t", ["admin"])


def public_pem() -> bytes:
    return OURS.signing.as_pem(private=False)


def public_jwk_json() -> bytes:
    return json.dumps(OURS.signing.as_dict(private=False)).encode()


def valid() -> str:
    return signed()


def high_s(token: str) -> str:
    """The same token with its signature respelled as (r, n - s): still a valid ECDSA signature."""
    head, payload, sig = token.split(".")
    data = base64.urlsafe_b64decode(sig + "=" * (-len(sig) % 4))
    r, s = data[:32], int.from_bytes(data[32:], "big")
    return f"{head}.{payload}.{b64(r + (auth.P256_ORDER - s).to_bytes(32, 'big'))}"


NOW = int(time.time())  # for cases that only get more wrong as time passes; the others use now()


def now() -> int:
    return int(time.time())


FORGERIES: dict[str, Callable[[], str]] = {
    # -- the algorithm (RFC 8725 §2.1, §3.1) --
    "alg-none-empty-signature": lambda: f"{segment(header(alg='none'))}.{segment(claims())}.",
    "alg-None-capitalised": lambda: f"{segment(header(alg='None'))}.{segment(claims())}.",
    "alg-none-with-a-real-signature": lambda: segment(header(alg="none")) + "." + valid().split(".", 1)[1],
    "hs256-keyed-with-public-pem": lambda: raw(
        header(alg="HS256"), json.dumps(claims()).encode(), hs256(public_pem())
    ),
    "hs256-keyed-with-public-jwk-json": lambda: raw(
        header(alg="HS256"), json.dumps(claims()).encode(), hs256(public_jwk_json())
    ),
    "rs256-foreign-rsa-key": lambda: signed(header(alg="RS256"), key=FOREIGN_RSA),
    "es384-foreign-p384-key": lambda: signed(header(alg="ES384"), key=FOREIGN_P384),
    "es256-foreign-ec-key-with-our-kid": lambda: raw(
        header(), json.dumps(claims()).encode(), lambda d: es256(FOREIGN_EC, d)
    ),
    # -- time --
    "expired": lambda: signed(body=claims(iat=NOW - 7200, nbf=NOW - 7200, exp=NOW - 3600)),
    "expired-just-past-the-leeway": lambda: signed(body=claims(iat=NOW - 600, nbf=NOW - 600, exp=NOW - 31)),
    "nbf-in-the-future": lambda: signed(body=claims(nbf=NOW + 3600)),
    "iat-in-the-future": lambda: signed(body=claims(iat=NOW + 3600)),
    "exp-as-a-string": lambda: signed(body=claims(exp=str(NOW + 600))),
    "exp-as-a-float": lambda: signed(body=claims(exp=NOW + 600.5)),
    "nbf-as-a-string": lambda: signed(body=claims(nbf=str(NOW))),
    "exp-as-a-boolean": lambda: signed(body=claims(exp=True)),
    "nbf-just-past-the-leeway": lambda: signed(body=claims(nbf=now() + 45)),
    "nbf-a-minute-ahead": lambda: signed(body=claims(nbf=now() + 60)),
    "iat-just-past-the-leeway": lambda: signed(body=claims(iat=now() + 45, nbf=now())),
    "exp-2-to-the-62": lambda: signed(body=claims(exp=2**62)),
    "exp-a-day-ahead": lambda: signed(body=claims(exp=now() + 86400)),
    "lifetime-over-the-maximum": lambda: signed(
        body=claims(iat=NOW - 3000, nbf=NOW - 3000, exp=NOW + CFG.lifetime)  # exp - iat = lifetime + 3000
    ),
    "exp-a-huge-integer": lambda: signed(body=claims(exp=10**400)),
    # -- the signature's form --
    "high-s-signature-of-a-valid-token": lambda: raw(
        header(), json.dumps(claims()).encode(), lambda d: es256(OURS.signing, d, high_s=True)
    ),
    "high-s-of-an-issued-token": lambda: high_s(auth.issue(OURS, CFG, "client-a", "tenant-a", ["admin"])),
    # -- issuer and audience --
    "wrong-iss": lambda: signed(body=claims(iss="https://evil.test")),
    "iss-with-a-trailing-slash": lambda: signed(body=claims(iss=ISSUER + "/")),
    "wrong-aud": lambda: signed(body=claims(aud="https://evil.test/dicomweb")),
    "aud-list-without-ours": lambda: signed(body=claims(aud=["https://a.test", "https://b.test"])),
    "aud-is-the-issuer": lambda: signed(body=claims(aud=ISSUER)),
    # -- typ (RFC 9068 §2.1) --
    "typ-JWT": lambda: signed(header(typ="JWT")),
    "typ-missing": lambda: signed(header(typ=None)),
    # -- kid --
    "unknown-kid": lambda: signed(header(kid="not-our-kid")),
    "kid-missing": lambda: signed(header(kid=None)),
    "kid-path-traversal": lambda: signed(header(kid="../../etc/passwd")),
    "kid-dev-null": lambda: signed(header(kid="/dev/null")),
    "kid-empty": lambda: signed(header(kid="")),
    # -- key references in the header (RFC 8725 §3.10) --
    "header-jku": lambda: signed(header(jku="https://evil.test/jwks.json")),
    "header-x5u": lambda: signed(header(x5u="https://evil.test/cert.pem")),
    "header-jwk-embedding-a-foreign-key": lambda: signed(
        header(kid="foreign-ec", jwk=FOREIGN_EC.as_dict(private=False)), key=FOREIGN_EC
    ),
    "header-jwk-embedding-our-own-key": lambda: signed(header(jwk=OURS.signing.as_dict(private=False))),
    "header-x5c": lambda: signed(header(x5c=["MIIBszCCAVmgAwIBAgIUQ"])),
    "header-crit": lambda: raw(header(crit=["exp"], exp=NOW + 600), json.dumps(claims()).encode()),
    "header-b64-false": lambda: signed(header(b64=False, crit=["b64"])),
    # -- tampering --
    "tampered-scope": lambda: tampered("scope", "dicomweb.read admin dicomweb.delete"),
    "tampered-tenant": lambda: tampered("tenant", "tenant-b"),
    "tampered-client-id": lambda: tampered("client_id", "client-b"),
    "tampered-header": lambda: segment(header(typ="application/at+jwt")) + "." + valid().split(".", 1)[1],
    "stripped-signature": lambda: valid().rsplit(".", 1)[0] + ".",
    "signature-only-dropped": lambda: valid().rsplit(".", 1)[0],
    "truncated": lambda: valid()[:-12],
    "extra-segment": lambda: valid() + "." + b64(b"extra"),
    "signature-of-another-token": lambda: (
        signed(body=claims(scope="admin")).rsplit(".", 1)[0] + "." + valid().rsplit(".", 1)[1]
    ),
    # -- claims --
    "missing-tenant": lambda: signed(body=claims(tenant=None)),
    "missing-client_id": lambda: signed(body=claims(client_id=None)),
    "missing-jti": lambda: signed(body=claims(jti=None)),
    "missing-exp": lambda: signed(body=claims(exp=None)),
    "missing-iat": lambda: signed(body=claims(iat=None)),
    "missing-iss": lambda: signed(body=claims(iss=None)),
    "missing-aud": lambda: signed(body=claims(aud=None)),
    "empty-tenant": lambda: signed(body=claims(tenant="")),
    "tenant-not-a-string": lambda: signed(body=claims(tenant=["tenant-a", "tenant-b"])),
    "client_id-null": lambda: raw(header(), json.dumps({**claims(), "client_id": None}).encode()),
    "claims-a-list": lambda: raw(header(), json.dumps([claims()]).encode()),
    "claims-a-string": lambda: raw(header(), json.dumps("tenant-a").encode()),
    "claims-a-number": lambda: raw(header(), b"42"),
    "claims-not-json": lambda: raw(header(), b"{tenant: tenant-a}"),
    "header-not-json": lambda: "e30" + "x." + valid().split(".", 1)[1],
    # -- not ours at all --
    "another-issuer-own-keys": other_issuer,
    "another-issuer-our-audience": other_issuer_our_audience,
    "jwe-looking-five-parts": lambda: (
        segment({"alg": "RSA-OAEP", "enc": "A256GCM", "kid": KID}) + ".aGVsbG8.aXY.Y2lwaGVy.dGFn"
    ),
    "random-garbage": lambda: "q9C4h0PqZ7Vn1wJx",
    "three-dots-of-nothing": lambda: "..",
    "empty-string": lambda: "",
    "non-ascii": lambda: "é.ü.ß",
    "whitespace-padded": lambda: f"  {valid()}  ",
    "trailing-newline": lambda: valid() + "\n",
}


def test_the_corpus_is_large_enough() -> None:
    assert len(FORGERIES) >= 30


def test_the_untouched_base_token_verifies() -> None:
    """The control for the corpus: without its one defect, a forgery's base is accepted."""
    principal = auth.Verifier(OURS, CFG).verify(valid())
    assert principal.client_id == "client-a"
    assert principal.tenant == "tenant-a"
    assert principal.scopes == frozenset({"dicomweb.read"})
    assert principal.token_id == "0123456789abcdef"


@pytest.mark.parametrize("build", list(FORGERIES.values()), ids=list(FORGERIES))
def test_forged_or_invalid_token_is_refused(build: Callable[[], str]) -> None:
    token = build()
    verifier = auth.Verifier(OURS, CFG)
    with pytest.raises(auth.InvalidToken):
        verifier.verify(token)
    with pytest.raises(auth.InvalidToken):  # and again: a refusal is not cached as a success
        verifier.verify(token)


def test_a_refused_forgery_does_not_poison_the_cache_for_the_real_token() -> None:
    verifier = auth.Verifier(OURS, CFG)
    real = valid()
    with pytest.raises(auth.InvalidToken):
        verifier.verify(tampered("tenant", "tenant-b"))
    assert verifier.verify(real).tenant == "tenant-a"
    with pytest.raises(auth.InvalidToken):
        verifier.verify(tampered("tenant", "tenant-b"))


# -- time: one leeway, a capped lifetime ---------------------------------------------------------


def test_the_one_leeway_is_30_seconds_for_exp_nbf_and_iat() -> None:
    assert auth.LEEWAY == 30 and auth.Verifier(OURS, CFG).leeway == 30
    verifier = auth.Verifier(OURS, CFG)
    now = int(time.time())
    # Inside the leeway (a few seconds of it kept for the test's own clock): accepted.
    for inside in (
        claims(nbf=now + 20),
        claims(iat=now + 20, nbf=now),
        claims(iat=now - 600, nbf=now - 600, exp=now - 20),
        claims(iat=now, exp=now + CFG.lifetime + 20),
    ):
        assert verifier.verify(signed(body=inside)).client_id == "client-a", inside


def test_issued_tokens_are_low_s_and_a_high_s_respelling_is_refused() -> None:
    verifier = auth.Verifier(OURS, CFG)
    for _ in range(16):  # ECDSA picks s or n - s by chance: 16 tokens all low-S
        token = auth.issue(OURS, CFG, "client-a", "tenant-a", ["dicomweb.read"])
        sig = base64.urlsafe_b64decode(token.split(".")[2] + "==")
        assert int.from_bytes(sig[32:], "big") <= auth.P256_ORDER // 2
        assert verifier.verify(token).client_id == "client-a"
        with pytest.raises(auth.InvalidToken, match="low-S"):
            auth.Verifier(OURS, CFG).verify(high_s(token))


def test_a_longer_configured_lifetime_is_honoured_and_capped() -> None:
    long = auth.TokenSettings(ISSUER, ISSUER + "/dicomweb", lifetime=8 * 3600)
    token = auth.issue(OURS, long, "client-a", "tenant-a", ["dicomweb.read"])
    assert auth.Verifier(OURS, long).verify(token).tenant == "tenant-a"
    with pytest.raises(auth.InvalidToken, match="longer"):
        auth.Verifier(OURS, CFG).verify(token)  # a server configured for 1 h refuses it


# -- positive cases: issue and verify, key rotation with overlap ---------------------------------


def test_issued_token_verifies_with_its_claims() -> None:
    token = auth.issue(OURS, CFG, "client-x", "tenant-x", ["dicomweb.write", "dicomweb.read"])
    principal = auth.Verifier(OURS, CFG).verify(token)
    assert principal.client_id == "client-x"
    assert principal.tenant == "tenant-x"
    assert principal.scopes == frozenset({"dicomweb.read", "dicomweb.write"})
    assert principal.expires - int(time.time()) in range(CFG.lifetime - 5, CFG.lifetime + 1)
    head = json.loads(base64.urlsafe_b64decode(token.split(".")[0] + "=="))
    assert head == {"alg": "ES256", "typ": "at+jwt", "kid": KID}


def _rotating() -> auth.SigningKeys:
    return auth.SigningKeys.generate()


def test_rotation_new_key_signs_and_old_tokens_verify_until_retired() -> None:
    keys = _rotating()
    old_kid = str(keys.signing.kid)
    old = auth.issue(keys, CFG, "c", "t", ["dicomweb.read"])
    new_kid = keys.rotate()
    assert new_kid != old_kid
    new = auth.issue(keys, CFG, "c", "t", ["dicomweb.read"])
    assert json.loads(base64.urlsafe_b64decode(new.split(".")[0] + "=="))["kid"] == new_kid
    assert {k["kid"] for k in keys.public()["keys"]} == {old_kid, new_kid}
    verifier = auth.Verifier(keys, CFG)
    assert verifier.verify(old).client_id == "c"  # the overlap: both keys verify
    assert verifier.verify(new).client_id == "c"

    assert keys.retire() == [old_kid]
    assert [k["kid"] for k in keys.public()["keys"]] == [new_kid]
    with pytest.raises(auth.InvalidToken):
        auth.Verifier(keys, CFG).verify(old)
    assert auth.Verifier(keys, CFG).verify(new).client_id == "c"


def test_retired_key_is_refused_by_a_verifier_that_already_accepted_its_token() -> None:
    """The verifier caches verified tokens; retiring a key must end its tokens there too,
    not an hour later when the cached entry expires."""
    keys = _rotating()
    old = auth.issue(keys, CFG, "c", "t", ["admin"])
    verifier = auth.Verifier(keys, CFG)
    assert verifier.verify(old).scopes == frozenset({"admin"})
    keys.rotate()
    keys.retire()
    with pytest.raises(auth.InvalidToken):
        verifier.verify(old)


def test_rotation_is_saved_to_the_key_file(tmp_path: Any) -> None:
    path = tmp_path / "keys.json"
    keys = auth.SigningKeys.generate(path)
    old = auth.issue(keys, CFG, "c", "t", ["dicomweb.read"])
    keys.rotate()
    reloaded = auth.SigningKeys.load(path)
    assert auth.Verifier(reloaded, CFG).verify(old).client_id == "c"
    keys.retire()
    with pytest.raises(auth.InvalidToken):
        auth.Verifier(auth.SigningKeys.load(path), CFG).verify(old)
    assert (path.stat().st_mode & 0o777) == 0o600
