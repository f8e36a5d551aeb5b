"""OAuth2 client credentials (RFC 6749 §4.4) and JWT access tokens (RFC 9068, RFC 8725).

The token endpoint (authlib's) is in token_endpoint.py.  Tokens are signed and verified with
joserfc, with the algorithm list pinned and the key chosen by ``kid`` from our
own key set only (``jku``, ``x5u`` and embedded ``jwk`` are refused).  Secrets
are kept as argon2id hashes.  Nothing here touches the network or the database.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import json
import os
import re
import secrets
import time
import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError
from joserfc import jwt
from joserfc.errors import JoseError
from joserfc.jwk import ECKey, KeySet

# Scopes by function (the access issue's table); a client gets what it asks for and is allowed.
SCOPES = (
    "dicomweb.read",
    "dicomweb.write",
    "dicomweb.delete",
    "orders.read",
    "orders.write",
    "analysis",
    "admin",
)
ALGORITHMS = ["ES256"]  # pinned: never taken from the token (RFC 8725 §3.1)
# One clock leeway (seconds) for exp, nbf and iat, ours and the external issuer's alike.
LEEWAY = 30
# The longest lifetime (exp - iat) accepted from the external identity provider.
EXTERNAL_MAX_LIFETIME = 24 * 3600
# The order of the P-256 group: an ES256 signature (r, s) with s > n/2 is refused.  (r, n - s)
# verifies as well as (r, s), so without this a valid token has a second, different spelling.
P256_ORDER = 0xFFFFFFFF00000000FFFFFFFFFFFFFFFFBCE6FAADA7179E84F3B9CAC2FC632551
TOKEN_TYPES = ("at+jwt", "application/at+jwt")  # RFC 9068 §4
_REFUSED_HEADERS = ("jku", "x5u", "jwk", "x5c", "crit")
# The reserved tenant of the one analysis service (issue #12 §3): only its clients may hold the
# ``analysis`` scope, and they read a hospital's studies only through a job token.
ANALYSIS_TENANT = "analysis"
ANALYSIS_SCOPE = "analysis"
_HASHER = PasswordHasher()  # argon2id, the library's defaults (RFC 9106 second recommendation)


class InvalidToken(Exception):
    """The bearer token is not one of ours, or not valid now (401 invalid_token)."""


@dataclass(frozen=True)
class Principal:
    """Who is calling: a verified token's client, tenant and scopes."""

    client_id: str
    tenant: str
    scopes: frozenset[str]
    token_id: str
    expires: int
    external: bool = False  # issued by the configured external identity provider
    # A job token (issue #12 §3): only the DICOMweb reads inside these studies; None: any.
    studies: frozenset[str] | None = None
    # The analysis job a job token was minted for: it reads only while that job holds its lease.
    job: str | None = None


def allowed_scopes(tenant: str, scopes: Iterable[str]) -> frozenset[str]:
    """The scopes a client of ``tenant`` may hold: ``analysis`` only in ANALYSIS_TENANT, so a
    hospital's client never acts as the analysis service whatever its row says."""
    held = frozenset(scopes)
    return held if tenant == ANALYSIS_TENANT else held - {ANALYSIS_SCOPE}


# -- secrets ----------------------------------------------------------------------------


def new_secret() -> str:
    """A client secret: 256 random bits, shown once."""
    return secrets.token_urlsafe(32)


def hash_secret(secret: str) -> str:
    return _HASHER.hash(secret)


def secret_matches(secret: str, hashes: Iterable[str]) -> bool:
    """Whether ``secret`` matches any active hash; argon2 compares in constant time.

    Every hash is tried, so the time taken does not tell which one matched."""
    matched = False
    for stored in hashes:
        with contextlib.suppress(VerificationError, InvalidHashError):
            matched |= _HASHER.verify(stored, secret)
    return matched


# -- signing keys -----------------------------------------------------------------------


@dataclass
class SigningKeys:
    """Our key set: the newest key signs, every key kept verifies (rotation with overlap).

    Stored as a JSON Web Key Set file holding private keys (mode 0600).
    """

    keys: KeySet
    path: Path | None = None
    _stamp: float = 0.0  # the key file's mtime when loaded
    _checked: float = 0.0

    @classmethod
    def generate(cls, path: Path | None = None) -> SigningKeys:
        keys = cls(KeySet([_new_key()]), path)
        keys.save()
        return keys

    @classmethod
    def load(cls, path: Path) -> SigningKeys:
        stamp = path.stat().st_mtime
        data = json.loads(path.read_text())
        return cls(KeySet.import_key_set(data), path, stamp, time.monotonic())

    def kids(self) -> set[str]:
        return {str(k.kid) for k in self.keys.keys}

    def reload_if_changed(self, every: float = 5.0) -> None:
        """Pick up `keys rotate` / `keys retire` from the file (checked at most every ``every`` s)."""
        now = time.monotonic()
        if self.path is None or now - self._checked < every:
            return
        self._checked = now
        try:
            stamp = self.path.stat().st_mtime
            if stamp != self._stamp:
                self.keys = KeySet.import_key_set(json.loads(self.path.read_text()))
                self._stamp = stamp
        except (OSError, ValueError):
            pass  # keep the keys we have; a half-written file is replaced atomically anyway

    @classmethod
    def load_or_generate(cls, path: Path) -> SigningKeys:
        return cls.load(path) if path.exists() else cls.generate(path)

    def save(self) -> None:
        if self.path is None:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_suffix(".tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as out:
            json.dump(self.keys.as_dict(private=True), out)
        os.replace(tmp, self.path)

    @property
    def signing(self) -> ECKey:
        return self.keys.keys[-1]  # type: ignore[return-value]

    def rotate(self) -> str:
        """Add a new signing key; older keys keep verifying until ``retire``."""
        key = _new_key()
        self.keys.keys.append(key)
        self.save()
        return str(key.kid)

    def retire(self, keep: int = 1) -> list[str]:
        """Drop all but the newest ``keep`` keys (after the overlap: the token lifetime)."""
        dropped = self.keys.keys[:-keep] if keep else []
        self.keys.keys[:] = self.keys.keys[-keep:]
        self.save()
        return [str(k.kid) for k in dropped]

    def public(self) -> dict[str, Any]:
        """The JWKS document: public halves only."""
        return dict(self.keys.as_dict(private=False))


def _new_key() -> ECKey:
    key = ECKey.generate_key("P-256", {"use": "sig", "alg": "ES256"}, private=True)
    key.ensure_kid()
    return key


# -- issuing ----------------------------------------------------------------------------


@dataclass(frozen=True)
class TokenSettings:
    issuer: str
    audience: str
    lifetime: int = 3600


def issue(
    keys: SigningKeys,
    cfg: TokenSettings,
    client_id: str,
    tenant: str,
    scopes: Iterable[str],
    *,
    studies: Sequence[str] | None = None,
    expires_at: int | None = None,
    job: str | None = None,
) -> str:
    """An RFC 9068 access token.

    ``studies``: a job token, limited to those studies (a private ``studies`` claim);
    ``job``: the analysis job it serves (a private ``job`` claim, checked live by the guard);
    ``expires_at``: an earlier expiry than the configured lifetime (never a later one)."""
    now = int(time.time())
    exp = now + cfg.lifetime if expires_at is None else max(now + 1, min(expires_at, now + cfg.lifetime))
    key = keys.signing
    header = {"alg": "ES256", "typ": "at+jwt", "kid": key.kid}
    claims: dict[str, Any] = {
        "iss": cfg.issuer,
        "aud": cfg.audience,
        "sub": client_id,
        "client_id": client_id,
        "tenant": tenant,
        "scope": " ".join(sorted(set(scopes))),
        "iat": now,
        "nbf": now,
        "exp": exp,
        "jti": uuid.uuid4().hex,
    }
    if studies is not None:
        claims["studies"] = sorted(set(studies))
    if job is not None:
        claims["job"] = job
    return canonical_es256(jwt.encode(header, claims, key, algorithms=ALGORITHMS))


def _b64decode(segment: str) -> bytes:
    return base64.urlsafe_b64decode(segment + "=" * (-len(segment) % 4))


def canonical_es256(token: str) -> str:
    """The same token with its ES256 signature in low-S form (s <= n/2), the only one we accept.

    ECDSA signing picks s or n - s by chance; both verify, so we normalise what we sign."""
    head, payload, signature = token.split(".")
    raw = _b64decode(signature)
    r, s = int.from_bytes(raw[:32], "big"), int.from_bytes(raw[32:], "big")
    if s > P256_ORDER // 2:
        s = P256_ORDER - s
    low = r.to_bytes(32, "big") + s.to_bytes(32, "big")
    return f"{head}.{payload}.{base64.urlsafe_b64encode(low).rstrip(b'=').decode()}"


def _high_s(token: str) -> bool:
    """Whether a compact token's signature is an ES256 r||s with s > n/2 (checked before verifying;
    anything that is not 64 bytes of base64url is left to the verifier to refuse)."""
    try:
        raw = _b64decode(token.rsplit(".", 1)[1])
    except (ValueError, IndexError):
        return False
    return len(raw) == 64 and int.from_bytes(raw[32:], "big") > P256_ORDER // 2


# -- verifying ---------------------------------------------------------------------------


TENANT_ID = re.compile(r"[a-z0-9][a-z0-9-]{0,62}")  # as the tenant table and object keys require


@dataclass(frozen=True)
class ExternalIssuer:
    """One identity provider whose access tokens we also accept (RFC 9068 profile), its keys
    from a JWKS file or URL read at startup, one claim naming the tenant."""

    issuer: str
    audience: str
    keys: KeySet
    tenant_claim: str = "tenant"
    algorithms: tuple[str, ...] = ("RS256", "ES256")
    max_lifetime: int = EXTERNAL_MAX_LIFETIME

    @classmethod
    def load(cls, issuer: str, audience: str, jwks: str, tenant_claim: str = "tenant") -> ExternalIssuer:
        if jwks.startswith("https://") or jwks.startswith("http://"):
            import urllib.request

            with urllib.request.urlopen(jwks, timeout=10) as response:
                data = json.loads(response.read())
        else:
            data = json.loads(Path(jwks).read_text())
        return cls(issuer, audience, KeySet.import_key_set(data), tenant_claim)

    def kids(self) -> set[str]:
        return {str(k.kid) for k in self.keys.keys}


def _unverified_issuer(token: str) -> str | None:
    """The ``iss`` a token claims, only to choose whose keys verify it (nothing is trusted yet)."""
    try:
        payload = token.split(".")[1]
        claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    except (ValueError, IndexError):
        return None
    issuer = claims.get("iss") if isinstance(claims, dict) else None
    return issuer if isinstance(issuer, str) else None


@dataclass
class Verifier:
    """Checks bearer tokens; verified tokens are cached until they expire (a hash-keyed dict)."""

    keys: SigningKeys
    cfg: TokenSettings
    external: ExternalIssuer | None = None
    leeway: int = LEEWAY
    _cache: dict[bytes, tuple[Principal, str]] = field(default_factory=dict)

    def verify(self, token: str) -> Principal:
        digest = hashlib.blake2b(token.encode(), digest_size=20).digest()
        now = int(time.time())
        self.keys.reload_if_changed()
        known = self._cache.get(digest)
        # A cached token stays valid only while it has not expired and its key is still ours.
        if known is not None and known[0].expires > now - self.leeway and known[1] in self._kids(known[0]):
            return known[0]
        principal, kid = self._verify(token, now)
        if len(self._cache) > 10_000:
            self._cache.clear()
        self._cache[digest] = (principal, kid)
        return principal

    def _kids(self, principal: Principal) -> set[str]:
        return self.external.kids() if principal.external and self.external else self.keys.kids()

    def _verify(self, token: str, now: int) -> tuple[Principal, str]:
        if token.count(".") != 2:
            raise InvalidToken("not a JWS compact token")
        ext = self.external
        external = ext is not None and _unverified_issuer(token) == ext.issuer
        if external and ext is not None:
            keyset, algorithms, kids = ext.keys, list(ext.algorithms), ext.kids()
            issuer, audience, tenant_claim = ext.issuer, ext.audience, ext.tenant_claim
            max_lifetime = ext.max_lifetime
        else:
            keyset, algorithms, kids = self.keys.keys, ALGORITHMS, self.keys.kids()
            issuer, audience, tenant_claim = self.cfg.issuer, self.cfg.audience, "tenant"
            max_lifetime = self.cfg.lifetime
            if _high_s(token):  # ours are all ES256, signed in low-S form (canonical_es256)
                raise InvalidToken("the signature is not in canonical (low-S) form")
        try:
            decoded = jwt.decode(token, keyset, algorithms=algorithms)
        except (JoseError, ValueError, KeyError, TypeError):
            raise InvalidToken("the signature or the format is not valid") from None
        header, claims = decoded.header, decoded.claims
        if any(name in header for name in _REFUSED_HEADERS):
            raise InvalidToken("key references in the header are not accepted")
        if header.get("alg") not in algorithms or str(header.get("typ", "")).lower() not in TOKEN_TYPES:
            raise InvalidToken("wrong alg or typ")
        if header.get("kid") not in kids:
            raise InvalidToken("unknown key")
        client_id = claims.get("client_id") or (claims.get("azp") if external else None)
        self._check_claims(
            {**claims, "client_id": client_id, "tenant": claims.get(tenant_claim)},
            now,
            issuer,
            audience,
            max_lifetime,
        )
        principal = Principal(
            client_id=str(client_id),
            tenant=str(claims[tenant_claim]),
            scopes=frozenset(str(claims.get("scope", "")).split()),
            token_id=claims["jti"],
            expires=int(claims["exp"]),
            external=external,
            studies=None if external else _studies(claims),
            job=None if external else _job(claims),
        )
        return principal, str(header["kid"])

    def _check_claims(
        self, claims: dict[str, Any], now: int, issuer: str, audience: str, max_lifetime: int
    ) -> None:
        for name in ("iss", "aud", "exp", "iat", "jti", "client_id", "tenant"):
            if claims.get(name) is None:
                raise InvalidToken(f"missing claim {name}")
        if claims["iss"] != issuer:
            raise InvalidToken("wrong issuer")
        audiences = claims["aud"] if isinstance(claims["aud"], list) else [claims["aud"]]
        if audience not in audiences:
            raise InvalidToken("wrong audience")
        if not isinstance(claims["tenant"], str) or not TENANT_ID.fullmatch(claims["tenant"]):
            raise InvalidToken("the tenant claim is not a tenant id")
        for name in ("exp", "iat", "nbf"):
            if name in claims and (not isinstance(claims[name], int) or isinstance(claims[name], bool)):
                raise InvalidToken(f"{name} is not a number")
        leeway = self.leeway
        exp, iat = claims["exp"], claims["iat"]
        if exp <= now - leeway:
            raise InvalidToken("expired")
        if claims.get("nbf", 0) > now + leeway or iat > now + leeway:
            raise InvalidToken("not valid yet")
        # Never longer-lived than we (or the external issuer) would issue: a leaked key or a
        # mistaken issuer cannot mint a token that outlives a key rotation.
        if exp - iat > max_lifetime + leeway or exp - now > max_lifetime + leeway:
            raise InvalidToken("the token lives longer than tokens are issued for")
        if not all(isinstance(claims[n], str) and claims[n] for n in ("client_id", "tenant", "jti")):
            raise InvalidToken("malformed claims")


def _job(claims: dict[str, Any]) -> str | None:
    """A job token's job id (our own tokens only); a malformed claim is no token at all."""
    value = claims.get("job")
    if value is not None and (not isinstance(value, str) or not value or "studies" not in claims):
        raise InvalidToken("the job claim is not a job id of a job token")
    return value


def _studies(claims: dict[str, Any]) -> frozenset[str] | None:
    """A job token's studies (our own tokens only); a malformed claim is no token at all."""
    if "studies" not in claims:
        return None
    value = claims["studies"]
    if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
        raise InvalidToken("the studies claim is not a list of UIDs")
    return frozenset(value)


JOB_SCOPES = ("dicomweb.read",)


def mint_job_token(
    keys: SigningKeys,
    cfg: TokenSettings,
    client_id: str,
    tenant: str,
    studies: Sequence[str],
    expires_at: int,
    job: str | None = None,
) -> str:
    """A job token for an analysis worker's claim (issue #12 §3): its analysis client, the order's
    tenant, read-only and only inside the job's studies, expiring with the lease.  With ``job``
    it also stops working as soon as that job no longer holds its lease (completed, failed,
    cancelled, expired; the guard checks it), not only at ``exp`` plus the clock leeway.  The app
    hands it to the workflow as ``app.state.mint_job_token`` (workflow never imports access)."""
    return issue(keys, cfg, client_id, tenant, JOB_SCOPES, studies=studies, expires_at=expires_at, job=job)
