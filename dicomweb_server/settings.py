"""One settings object, built once from the environment and passed explicitly.

``Settings`` holds one frozen section per context (DESIGN.md, "One ``Settings``"), the way MONAI
keeps an ``ScpConfiguration`` beside a ``DicomWebConfiguration``: the ingest session is handed
``settings.ingest``, the connection limits ``settings.http``, and only the composition root
(app.py, cli.py) holds the whole.  Each section reads its own variables in its ``from_env`` and
validates them there, once; ``Settings.from_env`` is the only reader of ``os.environ``.  The
variable names and defaults are a contract: README, "Configuration".
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

MiB = 1024 * 1024
GiB = 1024 * MiB

INT32_MAX = 2**31 - 1  # the client table's rate_requests column (integer)
INT64_MAX = 2**63 - 1  # its rate_bytes column (bigint)

Env = Mapping[str, str]


def _str(env: Env, name: str) -> str | None:
    """The variable's value; unset and empty are both None."""
    return env.get(name) or None


def _url(env: Env, name: str) -> str | None:
    """A base URL without its trailing slash (the server appends paths to it)."""
    return (env.get(name) or "").rstrip("/") or None


def _float(env: Env, name: str, default: float, positive: bool = False) -> float:
    raw = env.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = float(raw)
    except ValueError:
        raise ValueError(f"{name} must be a number, got {raw!r}") from None
    if positive and value <= 0:
        raise ValueError(f"{name} must be > 0")
    return value


def _int(env: Env, name: str, default: int, low: int | None = None, high: int | None = None) -> int:
    raw = env.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = int(raw)
    except ValueError:
        raise ValueError(f"{name} must be an integer, got {raw!r}") from None
    if high is None and low is not None and value < low:
        raise ValueError(f"{name} must be >= {low}")
    if (low is not None and value < low) or (high is not None and value > high):
        raise ValueError(f"{name} must be from {low} to {high}, got {value}")
    return value


@dataclass(frozen=True)
class HttpSettings:
    """Where `dicomweb-server serve` listens, and each worker's connection limits
    (web/connections.py; RELIABILITY.md "Limits")."""

    host: str = "127.0.0.1"
    port: int = 8080
    workers: int = 1
    # Base for RetrieveURLs and BulkDataURIs behind a proxy; None: from the request's Host.
    public_base_url: str | None = None
    # Browser origins allowed to call the API (a web viewer such as OHIF); none by default.
    cors_origins: tuple[str, ...] = ()
    keep_alive_seconds: float = 10.0  # an idle keep-alive connection is closed after this
    header_timeout: float = 20.0  # request headers must arrive within this (408)
    header_max_bytes: int = 64 * 1024  # larger request headers: 431
    body_min_rate: int = 1024  # bytes/s a request body must keep up, per window (408); 0: off
    body_rate_window: float = 30.0  # seconds over which the body rate is averaged
    max_connections: int = 1000  # open connections per worker; past it new ones get 503
    # The proxies whose X-Forwarded-* headers are believed (none by default).
    trusted_proxies: str | None = None

    @classmethod
    def from_env(cls, e: Env) -> HttpSettings:
        return cls(
            host=e.get("DICOMWEB_HOST") or "127.0.0.1",
            port=_int(e, "DICOMWEB_PORT", 8080, 0, 65535),
            workers=_int(e, "DICOMWEB_WORKERS", 1),
            public_base_url=_url(e, "DICOMWEB_PUBLIC_BASE_URL"),
            cors_origins=tuple(
                o.strip().rstrip("/") for o in e.get("DICOMWEB_CORS_ORIGINS", "").split(",") if o.strip()
            ),
            keep_alive_seconds=_float(e, "DICOMWEB_KEEP_ALIVE_SECONDS", 10.0),
            header_timeout=_float(e, "DICOMWEB_HTTP_HEADER_TIMEOUT_SECONDS", 20.0, positive=True),
            header_max_bytes=_int(e, "DICOMWEB_HTTP_HEADER_MAX_BYTES", 64 * 1024),
            body_min_rate=_int(e, "DICOMWEB_BODY_MIN_RATE", 1024),
            body_rate_window=_float(e, "DICOMWEB_BODY_RATE_WINDOW_SECONDS", 30.0, positive=True),
            max_connections=_int(e, "DICOMWEB_MAX_CONNECTIONS", 1000, low=1),
            trusted_proxies=_str(e, "DICOMWEB_TRUSTED_PROXIES"),
        )


@dataclass(frozen=True)
class DatabaseSettings:
    """The index: None means `dicomweb-server serve` starts an embedded PostgreSQL."""

    url: str | None = None
    pool_size: int = 10  # connections per worker process

    @classmethod
    def from_env(cls, e: Env) -> DatabaseSettings:
        return cls(url=_str(e, "DATABASE_URL"), pool_size=_int(e, "DICOMWEB_DB_POOL_SIZE", 10))


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

    @classmethod
    def from_env(cls, e: Env) -> S3Settings | None:
        """S3 when ``S3_BUCKET`` is set; else None (local disk).  Credentials fall back to the
        AWS names, then to botocore's own chain."""
        if not e.get("S3_BUCKET"):
            return None
        return cls(
            endpoint_url=_str(e, "S3_ENDPOINT_URL"),
            bucket=e["S3_BUCKET"],
            access_key=e.get("S3_ACCESS_KEY_ID") or e.get("AWS_ACCESS_KEY_ID"),
            secret_key=e.get("S3_SECRET_ACCESS_KEY") or e.get("AWS_SECRET_ACCESS_KEY"),
            region=e.get("S3_REGION", "us-east-1"),
            part_size=_int(e, "S3_PART_SIZE", 8 * MiB),
        )


@dataclass(frozen=True)
class StorageSettings:
    """The object store (local folder or S3) and the sweep of unreferenced objects."""

    path: Path = Path(".data/objects")
    s3: S3Settings | None = None
    gc_grace_seconds: int = 24 * 3600
    gc_interval_seconds: int = 3600  # 0 disables the in-process sweep (run `dicomweb-server gc` instead)

    @classmethod
    def from_env(cls, e: Env, data_dir: Path) -> StorageSettings:
        return cls(
            path=Path(e.get("DICOMWEB_STORAGE_PATH", str(data_dir / "objects"))),
            s3=S3Settings.from_env(e),
            gc_grace_seconds=_int(e, "DICOMWEB_GC_GRACE_SECONDS", 24 * 3600),
            gc_interval_seconds=_int(e, "DICOMWEB_GC_INTERVAL_SECONDS", 3600),
        )


DUPLICATE_POLICIES = ("reject", "overwrite")


@dataclass(frozen=True)
class IngestSettings:
    """What one request and one instance may cost (RELIABILITY.md, "Limits": past one, 413 or
    0xA700), and the duplicate policy.  The ingest session's whole configuration."""

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

    @property
    def overwrite(self) -> bool:
        return self.duplicate_policy == "overwrite"

    @classmethod
    def from_env(cls, e: Env) -> IngestSettings:
        policy = e.get("DICOMWEB_DUPLICATE_POLICY", "reject")
        if policy not in DUPLICATE_POLICIES:
            raise ValueError("DICOMWEB_DUPLICATE_POLICY must be 'reject' or 'overwrite'")
        return cls(
            max_body_bytes=_int(e, "DICOMWEB_MAX_BODY_BYTES", 4 * GiB),
            max_part_bytes=_int(e, "DICOMWEB_MAX_PART_BYTES", 2 * GiB),
            max_parts=_int(e, "DICOMWEB_MAX_PARTS", 10_000),
            header_budget_bytes=_int(e, "DICOMWEB_HEADER_BUDGET_BYTES", 16 * MiB),
            header_seconds=_float(e, "DICOMWEB_HEADER_SECONDS", 2.0),
            bulk_data_threshold=_int(e, "DICOMWEB_BULK_DATA_THRESHOLD", 1024),
            duplicate_policy=policy,
        )


@dataclass(frozen=True)
class DicomwebSettings:
    """The DICOMweb transactions' own limits."""

    # QIDO: a larger limit is a 400 (never a silent truncation); no limit means this many.
    qido_max_limit: int = 1000
    qido_max_offset: int = 10_000_000
    # WADO-RS: instances larger than this are sent as stored rather than transcoded in memory.
    max_transcode_bytes: int = 512 * MiB

    @classmethod
    def from_env(cls, e: Env) -> DicomwebSettings:
        return cls(
            qido_max_limit=_int(e, "DICOMWEB_QIDO_MAX_LIMIT", 1000),
            qido_max_offset=_int(e, "DICOMWEB_QIDO_MAX_OFFSET", 10_000_000),
            max_transcode_bytes=_int(e, "DICOMWEB_MAX_TRANSCODE_BYTES", 512 * MiB),
        )


FORCE_POLICIES = ("proceed", "hold", "fail")


@dataclass(frozen=True)
class WorkflowSettings:
    """The study lifecycle's server-wide defaults; a tenant overrides each with
    ``dicomweb-server tenants set`` (NULL in its row: this default)."""

    quiet_seconds: float = 30.0  # since the last instance, before an unstable study is stable
    force_seconds: float = 5400.0  # after the first instance: a study that never goes quiet ends
    force_policy: str = "proceed"  # then: proceed (stable), hold (for review) or fail
    auto_orders: bool = True  # every stable study becomes one order
    max_attempts: int = 3  # analysis attempts before the order fails with reason "analysis"
    lease_seconds: float = 300.0  # an analysis worker's lease, extended by each heartbeat
    open_seconds: float = 900.0  # a request or association counts as open at most this long
    event_retention_days: float = 30.0  # the change feed keeps events this long
    queue_heartbeat_seconds: float = 30.0  # a background step whose process died runs again after this

    @classmethod
    def from_env(cls, e: Env) -> WorkflowSettings:
        policy = e.get("DICOMWEB_FORCE_POLICY", "proceed")
        if policy not in FORCE_POLICIES:
            raise ValueError("DICOMWEB_FORCE_POLICY must be 'proceed', 'hold' or 'fail'")
        auto = e.get("DICOMWEB_AUTO_ORDERS", "true").lower()
        if auto not in ("true", "false", "1", "0"):
            raise ValueError("DICOMWEB_AUTO_ORDERS must be true or false")
        return cls(
            quiet_seconds=_float(e, "DICOMWEB_QUIET_SECONDS", 30.0),
            force_seconds=_float(e, "DICOMWEB_FORCE_SECONDS", 5400.0),
            force_policy=policy,
            auto_orders=auto in ("true", "1"),
            max_attempts=_int(e, "DICOMWEB_MAX_ATTEMPTS", 3),
            lease_seconds=_float(e, "DICOMWEB_LEASE_SECONDS", 300.0),
            open_seconds=_float(e, "DICOMWEB_OPEN_SECONDS", 900.0),
            event_retention_days=_float(e, "DICOMWEB_EVENT_RETENTION_DAYS", 30.0),
            queue_heartbeat_seconds=_float(e, "DICOMWEB_QUEUE_HEARTBEAT_SECONDS", 30.0),
        )


@dataclass(frozen=True)
class AccessSettings:
    """OAuth2 client credentials and RFC 9068 tokens, the default rate limits, and optionally one
    external identity provider."""

    # The key file holds private JWKs; `dicomweb-server serve` on a loopback address creates one
    # under the data folder.
    signing_keys: Path | None = None
    issuer: str | None = None  # default: the public base URL; the audience is issuer + "/dicomweb"
    token_lifetime: int = 3600
    secret_overlap_seconds: int = 24 * 3600  # an old secret keeps working this long after a rotation
    rate_limit_storage: str | None = None  # e.g. async+redis://127.0.0.1:6379/0; None: in this process
    # Per client and window, unless the client has its own.  A viewer (OHIF) asks for one frame
    # per request: opening a 500-image series is ~1,000 requests in a few seconds (README).
    # The bounds are the client table's columns.
    rate_requests: int = 6000
    rate_bytes: int = 10 * GiB
    rate_window_seconds: int = 60
    # One external identity provider's RFC 9068 tokens, verified with its JWKS (a file or a URL
    # read at startup); the tenant comes from one claim.
    external_issuer: str | None = None
    external_jwks: str | None = None
    external_audience: str | None = None  # default: our own audience
    external_tenant_claim: str = "tenant"

    @classmethod
    def from_env(cls, e: Env) -> AccessSettings:
        keys = e.get("DICOMWEB_SIGNING_KEYS")
        return cls(
            signing_keys=Path(keys) if keys else None,
            issuer=_url(e, "DICOMWEB_ISSUER"),
            token_lifetime=_int(e, "DICOMWEB_TOKEN_LIFETIME", 3600),
            secret_overlap_seconds=_int(e, "DICOMWEB_SECRET_OVERLAP_SECONDS", 24 * 3600),
            rate_limit_storage=_str(e, "DICOMWEB_RATE_LIMIT_STORAGE"),
            rate_requests=_int(e, "DICOMWEB_RATE_REQUESTS", 6000, 0, INT32_MAX),
            rate_bytes=_int(e, "DICOMWEB_RATE_BYTES", 10 * GiB, 0, INT64_MAX),
            rate_window_seconds=_int(e, "DICOMWEB_RATE_WINDOW_SECONDS", 60, 1, 24 * 3600),
            external_issuer=_str(e, "DICOMWEB_EXTERNAL_ISSUER"),
            external_jwks=_str(e, "DICOMWEB_EXTERNAL_JWKS"),
            external_audience=_str(e, "DICOMWEB_EXTERNAL_AUDIENCE"),
            external_tenant_claim=e.get("DICOMWEB_EXTERNAL_TENANT_CLAIM") or "tenant",
        )


@dataclass(frozen=True)
class MetricsSettings:
    """Prometheus metrics on a listener of their own (metrics.py); port 0: off."""

    port: int = 0
    host: str = "127.0.0.1"

    @classmethod
    def from_env(cls, e: Env) -> MetricsSettings:
        return cls(
            port=_int(e, "DICOMWEB_METRICS_PORT", 0, 0, 65535),
            host=e.get("DICOMWEB_METRICS_HOST") or "127.0.0.1",
        )


@dataclass(frozen=True)
class Settings:
    """The whole configuration: the data folder, our log level and one section per context."""

    data_dir: Path = Path(".data")
    log_level: str | None = None  # None: INFO, or DEBUG with --verbose
    http: HttpSettings = field(default_factory=HttpSettings)
    database: DatabaseSettings = field(default_factory=DatabaseSettings)
    storage: StorageSettings = field(default_factory=StorageSettings)
    ingest: IngestSettings = field(default_factory=IngestSettings)
    dicomweb: DicomwebSettings = field(default_factory=DicomwebSettings)
    access: AccessSettings = field(default_factory=AccessSettings)
    workflow: WorkflowSettings = field(default_factory=WorkflowSettings)
    metrics: MetricsSettings = field(default_factory=MetricsSettings)

    @classmethod
    def from_env(cls, env: Env | None = None, data_dir_default: Path | None = None) -> Settings:
        """The settings from ``env`` (the process environment), validated: a bad value is a
        ``ValueError`` naming its variable.  ``data_dir_default`` (the command line's) is used
        when ``DICOMWEB_DATA_DIR`` is unset, and the folder is then made absolute."""
        e = dict(os.environ if env is None else env)
        if data_dir_default is None:
            data_dir = Path(e.get("DICOMWEB_DATA_DIR", ".data"))
        else:
            given = e.get("DICOMWEB_DATA_DIR")
            data_dir = (Path(given) if given else data_dir_default).resolve()
        return cls(
            data_dir=data_dir,
            log_level=_str(e, "DICOMWEB_LOG_LEVEL"),
            http=HttpSettings.from_env(e),
            database=DatabaseSettings.from_env(e),
            storage=StorageSettings.from_env(e, data_dir),
            ingest=IngestSettings.from_env(e),
            dicomweb=DicomwebSettings.from_env(e),
            access=AccessSettings.from_env(e),
            workflow=WorkflowSettings.from_env(e),
            metrics=MetricsSettings.from_env(e),
        )
