"""One settings object, built once from the environment and passed explicitly."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

MiB = 1024 * 1024
GiB = 1024 * MiB


def _float(env: dict[str, str], name: str, default: float) -> float:
    raw = env.get(name)
    if raw is None or raw == "":
        return default
    try:
        return float(raw)
    except ValueError:
        raise ValueError(f"{name} must be a number, got {raw!r}") from None


def _int(
    env: dict[str, str], name: str, default: int, low: int | None = None, high: int | None = None
) -> int:
    raw = env.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = int(raw)
    except ValueError:
        raise ValueError(f"{name} must be an integer, got {raw!r}") from None
    if (low is not None and value < low) or (high is not None and value > high):
        raise ValueError(f"{name} must be from {low} to {high}, got {value}")
    return value


INT32_MAX = 2**31 - 1  # the client table's rate_requests column (integer)
INT64_MAX = 2**63 - 1  # its rate_bytes column (bigint)


@dataclass(frozen=True)
class S3Settings:
    endpoint_url: str | None
    bucket: str
    access_key: str | None
    secret_key: str | None
    region: str
    # Objects up to this size go up in one PUT; larger ones in a multipart upload
    # with parts of this size (S3 minimum part size is 5 MiB).
    part_size: int = 8 * MiB


@dataclass(frozen=True)
class Settings:
    database_url: str | None = None
    data_dir: Path = Path(".data")
    storage_path: Path = Path(".data/objects")
    s3: S3Settings | None = None
    public_base_url: str | None = None
    # STOW limits (RELIABILITY.md, "Limits"). Exceeding one answers 413.
    max_body_bytes: int = 4 * GiB
    max_part_bytes: int = 2 * GiB
    max_parts: int = 10_000
    # Bytes of a part kept in memory to parse its DICOM header (everything before Pixel Data).
    header_budget_bytes: int = 16 * MiB
    # CPU seconds one header may take to parse and describe (millions of tiny elements): 0xA700 past it.
    header_seconds: float = 2.0
    # Values of binary VRs longer than this become a BulkDataURI in the stored DICOM JSON.
    bulk_data_threshold: int = 1024
    # "reject": same SOP Instance UID with different bytes fails with 0x0111; "overwrite" replaces it.
    duplicate_policy: str = "reject"
    gc_grace_seconds: int = 24 * 3600
    gc_interval_seconds: int = 3600  # 0 disables the in-process sweep (run `dicomweb-server gc` instead)
    db_pool_size: int = 10
    # QIDO: a larger limit is a 400 (never a silent truncation); no limit means this many.
    qido_max_limit: int = 1000
    qido_max_offset: int = 10_000_000
    # Browser origins allowed to call the API (a web viewer such as OHIF); none by default.
    cors_origins: tuple[str, ...] = ()
    # WADO-RS: instances larger than this are sent as stored rather than transcoded in memory.
    max_transcode_bytes: int = 512 * MiB
    # Connections (connections.py; RELIABILITY.md "Limits"), per worker process.
    keep_alive_seconds: float = 10.0  # an idle keep-alive connection is closed after this
    http_header_timeout: float = 20.0  # request headers must arrive within this (408)
    http_header_max_bytes: int = 64 * 1024  # larger request headers: 431
    body_min_rate: int = 1024  # bytes/s a request body must keep up, per window (408); 0: off
    body_rate_window: float = 30.0  # seconds over which the body rate is averaged
    max_connections: int = 1000  # open connections per worker; past it new ones get 503
    # Access (OAuth2 client credentials, RFC 9068 tokens).  The key file holds private JWKs;
    # `dicomweb-server serve` on a loopback address creates one under the data folder.
    signing_keys: Path | None = None
    issuer: str | None = None  # default: the public base URL; the audience is issuer + "/dicomweb"
    token_lifetime: int = 3600
    secret_overlap_seconds: int = 24 * 3600  # an old secret keeps working this long after a rotation
    rate_limit_storage: str | None = None  # e.g. async+redis://127.0.0.1:6379/0; None: in this process
    # Per client and window, unless the client has its own.  A viewer (OHIF) asks for one frame
    # per request: opening a 500-image series is ~1,000 requests in a few seconds (README).
    rate_requests: int = 6000
    rate_bytes: int = 10 * GiB
    rate_window_seconds: int = 60
    # Optionally, one external identity provider's RFC 9068 tokens, verified with its JWKS
    # (a file or a URL read at startup); the tenant comes from one claim.
    external_issuer: str | None = None
    external_jwks: str | None = None
    external_audience: str | None = None  # default: our own audience
    external_tenant_claim: str = "tenant"
    # Prometheus metrics on a listener of their own (metrics.py); 0: off.
    metrics_port: int = 0
    metrics_host: str = "127.0.0.1"
    # `dicomweb-server serve` (cli.py): where it listens, how many workers, our log level, and
    # the proxies whose X-Forwarded-* headers are believed (none by default).
    host: str = "127.0.0.1"
    port: int = 8080
    workers: int = 1
    log_level: str | None = None  # None: INFO, or DEBUG with --verbose
    trusted_proxies: str | None = None

    @classmethod
    def from_env(cls, env: dict[str, str] | None = None, data_dir_default: Path | None = None) -> Settings:
        """The settings from ``env`` (the process environment), validated: a bad value is a
        ``ValueError`` naming its variable.  ``data_dir_default`` (the command line's) is used
        when ``DICOMWEB_DATA_DIR`` is unset, and the folder is then made absolute."""
        e = dict(os.environ if env is None else env)
        if data_dir_default is None:
            data_dir = Path(e.get("DICOMWEB_DATA_DIR", ".data"))
        else:
            given = e.get("DICOMWEB_DATA_DIR")
            data_dir = (Path(given) if given else data_dir_default).resolve()
        s3 = None
        if e.get("S3_BUCKET"):
            s3 = S3Settings(
                endpoint_url=e.get("S3_ENDPOINT_URL") or None,
                bucket=e["S3_BUCKET"],
                access_key=e.get("S3_ACCESS_KEY_ID") or e.get("AWS_ACCESS_KEY_ID"),
                secret_key=e.get("S3_SECRET_ACCESS_KEY") or e.get("AWS_SECRET_ACCESS_KEY"),
                region=e.get("S3_REGION", "us-east-1"),
                part_size=_int(e, "S3_PART_SIZE", 8 * MiB),
            )
        policy = e.get("DICOMWEB_DUPLICATE_POLICY", "reject")
        if policy not in ("reject", "overwrite"):
            raise ValueError("DICOMWEB_DUPLICATE_POLICY must be 'reject' or 'overwrite'")
        for name in ("DICOMWEB_HTTP_HEADER_TIMEOUT_SECONDS", "DICOMWEB_BODY_RATE_WINDOW_SECONDS"):
            if _float(e, name, 1.0) <= 0:
                raise ValueError(f"{name} must be > 0")
        if _int(e, "DICOMWEB_MAX_CONNECTIONS", 1) < 1:
            raise ValueError("DICOMWEB_MAX_CONNECTIONS must be >= 1")
        return cls(
            database_url=e.get("DATABASE_URL") or None,
            data_dir=data_dir,
            storage_path=Path(e.get("DICOMWEB_STORAGE_PATH", str(data_dir / "objects"))),
            s3=s3,
            public_base_url=(e.get("DICOMWEB_PUBLIC_BASE_URL") or "").rstrip("/") or None,
            max_body_bytes=_int(e, "DICOMWEB_MAX_BODY_BYTES", 4 * GiB),
            max_part_bytes=_int(e, "DICOMWEB_MAX_PART_BYTES", 2 * GiB),
            max_parts=_int(e, "DICOMWEB_MAX_PARTS", 10_000),
            header_budget_bytes=_int(e, "DICOMWEB_HEADER_BUDGET_BYTES", 16 * MiB),
            header_seconds=float(e.get("DICOMWEB_HEADER_SECONDS") or 2.0),
            bulk_data_threshold=_int(e, "DICOMWEB_BULK_DATA_THRESHOLD", 1024),
            duplicate_policy=policy,
            gc_grace_seconds=_int(e, "DICOMWEB_GC_GRACE_SECONDS", 24 * 3600),
            gc_interval_seconds=_int(e, "DICOMWEB_GC_INTERVAL_SECONDS", 3600),
            db_pool_size=_int(e, "DICOMWEB_DB_POOL_SIZE", 10),
            qido_max_limit=_int(e, "DICOMWEB_QIDO_MAX_LIMIT", 1000),
            qido_max_offset=_int(e, "DICOMWEB_QIDO_MAX_OFFSET", 10_000_000),
            cors_origins=tuple(
                o.strip().rstrip("/") for o in e.get("DICOMWEB_CORS_ORIGINS", "").split(",") if o.strip()
            ),
            max_transcode_bytes=_int(e, "DICOMWEB_MAX_TRANSCODE_BYTES", 512 * MiB),
            keep_alive_seconds=_float(e, "DICOMWEB_KEEP_ALIVE_SECONDS", 10.0),
            http_header_timeout=_float(e, "DICOMWEB_HTTP_HEADER_TIMEOUT_SECONDS", 20.0),
            http_header_max_bytes=_int(e, "DICOMWEB_HTTP_HEADER_MAX_BYTES", 64 * 1024),
            body_min_rate=_int(e, "DICOMWEB_BODY_MIN_RATE", 1024),
            body_rate_window=_float(e, "DICOMWEB_BODY_RATE_WINDOW_SECONDS", 30.0),
            max_connections=_int(e, "DICOMWEB_MAX_CONNECTIONS", 1000),
            signing_keys=Path(e["DICOMWEB_SIGNING_KEYS"]) if e.get("DICOMWEB_SIGNING_KEYS") else None,
            issuer=(e.get("DICOMWEB_ISSUER") or "").rstrip("/") or None,
            token_lifetime=_int(e, "DICOMWEB_TOKEN_LIFETIME", 3600),
            secret_overlap_seconds=_int(e, "DICOMWEB_SECRET_OVERLAP_SECONDS", 24 * 3600),
            rate_limit_storage=e.get("DICOMWEB_RATE_LIMIT_STORAGE") or None,
            rate_requests=_int(e, "DICOMWEB_RATE_REQUESTS", 6000, 0, INT32_MAX),
            rate_bytes=_int(e, "DICOMWEB_RATE_BYTES", 10 * GiB, 0, INT64_MAX),
            rate_window_seconds=_int(e, "DICOMWEB_RATE_WINDOW_SECONDS", 60, 1, 24 * 3600),
            external_issuer=e.get("DICOMWEB_EXTERNAL_ISSUER") or None,
            external_jwks=e.get("DICOMWEB_EXTERNAL_JWKS") or None,
            external_audience=e.get("DICOMWEB_EXTERNAL_AUDIENCE") or None,
            external_tenant_claim=e.get("DICOMWEB_EXTERNAL_TENANT_CLAIM") or "tenant",
            metrics_port=_int(e, "DICOMWEB_METRICS_PORT", 0, 0, 65535),
            metrics_host=e.get("DICOMWEB_METRICS_HOST") or "127.0.0.1",
            host=e.get("DICOMWEB_HOST") or "127.0.0.1",
            port=_int(e, "DICOMWEB_PORT", 8080, 0, 65535),
            workers=_int(e, "DICOMWEB_WORKERS", 1),
            log_level=e.get("DICOMWEB_LOG_LEVEL") or None,
            trusted_proxies=e.get("DICOMWEB_TRUSTED_PROXIES") or None,
        )
