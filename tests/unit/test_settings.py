"""Settings.from_env: the one reader of the environment validates what the command line reads too.

The variable names and defaults are README's "Configuration" table; each section reads and
validates its own.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from dicomweb_server.settings import (
    AccessSettings,
    DatabaseSettings,
    DicomwebSettings,
    GiB,
    HttpSettings,
    IngestSettings,
    MetricsSettings,
    MiB,
    S3Settings,
    Settings,
    StorageSettings,
)


def test_the_serve_settings_come_from_the_environment() -> None:
    env = {
        "DICOMWEB_HOST": "0.0.0.0",
        "DICOMWEB_PORT": "9090",
        "DICOMWEB_WORKERS": "4",
        "DICOMWEB_LOG_LEVEL": "WARNING",
        "DICOMWEB_TRUSTED_PROXIES": "10.0.0.1",
    }
    s = Settings.from_env(env)
    assert (s.http.host, s.http.port, s.http.workers, s.log_level, s.http.trusted_proxies) == (
        "0.0.0.0",
        9090,
        4,
        "WARNING",
        "10.0.0.1",
    )
    d = Settings.from_env({})
    assert (d.http.host, d.http.port, d.http.workers, d.log_level, d.http.trusted_proxies) == (
        "127.0.0.1",
        8080,
        1,
        None,
        None,
    )


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("DICOMWEB_PORT", "70000"),
        ("DICOMWEB_WORKERS", "two"),
        ("DICOMWEB_HTTP_HEADER_TIMEOUT_SECONDS", "0"),
        ("DICOMWEB_HTTP_HEADER_TIMEOUT_SECONDS", "soon"),
        ("DICOMWEB_BODY_RATE_WINDOW_SECONDS", "-1"),
        ("DICOMWEB_MAX_CONNECTIONS", "0"),
        ("DICOMWEB_KEEP_ALIVE_SECONDS", "ten"),
        ("DICOMWEB_DB_POOL_SIZE", "many"),
        ("S3_PART_SIZE", "big"),
        ("DICOMWEB_GC_INTERVAL_SECONDS", "hourly"),
        ("DICOMWEB_DUPLICATE_POLICY", "keep"),
        ("DICOMWEB_MAX_PARTS", "1e4"),
        ("DICOMWEB_HEADER_SECONDS", "two"),
        ("DICOMWEB_QIDO_MAX_LIMIT", "all"),
        ("DICOMWEB_RATE_REQUESTS", str(2**31)),
        ("DICOMWEB_RATE_BYTES", "-1"),
        ("DICOMWEB_RATE_WINDOW_SECONDS", "0"),
        ("DICOMWEB_METRICS_PORT", "65536"),
    ],
)
def test_a_bad_value_is_an_error_naming_its_variable(name: str, value: str) -> None:
    bucket = {"S3_BUCKET": "dicom"} if name.startswith("S3_") else {}  # S3's are read only with a bucket
    with pytest.raises(ValueError, match=name):
        Settings.from_env({name: value, **bucket})


def test_the_command_lines_data_folder_is_the_default_and_absolute(tmp_path: Path) -> None:
    default = tmp_path / "a" / ".." / ".data"
    s = Settings.from_env({}, data_dir_default=default)
    assert s.data_dir == (tmp_path / ".data").resolve()
    assert s.storage.path == s.data_dir / "objects"
    given = Settings.from_env({"DICOMWEB_DATA_DIR": str(tmp_path / "x")}, data_dir_default=default)
    assert given.data_dir == (tmp_path / "x").resolve()


def test_unset_and_empty_variables_give_the_documented_defaults() -> None:
    for env in ({}, dict.fromkeys(ALL_VARIABLES, "")):
        s = Settings.from_env(env)
        assert s.http == HttpSettings()
        assert s.database == DatabaseSettings()
        assert s.ingest == IngestSettings()
        assert s.dicomweb == DicomwebSettings()
        assert s.access == AccessSettings()
        assert s.metrics == MetricsSettings()
        storage = s.storage
        assert (storage.s3, storage.gc_grace_seconds, storage.gc_interval_seconds) == (None, 86400, 3600)
    d = Settings.from_env({})
    assert d.data_dir == Path(".data") and d.storage.path == Path(".data/objects") and d.log_level is None
    assert (d.http.host, d.http.port, d.http.workers, d.http.max_connections) == ("127.0.0.1", 8080, 1, 1000)
    assert (d.http.keep_alive_seconds, d.http.header_timeout, d.http.header_max_bytes) == (10, 20, 65536)
    assert (d.http.body_min_rate, d.http.body_rate_window, d.http.cors_origins) == (1024, 30, ())
    assert (d.database.url, d.database.pool_size) == (None, 10)
    i = d.ingest
    assert (i.max_body_bytes, i.max_part_bytes, i.max_parts) == (4 * GiB, 2 * GiB, 10_000)
    assert (i.header_budget_bytes, i.header_seconds, i.bulk_data_threshold) == (16 * MiB, 2, 1024)
    assert (i.duplicate_policy, i.overwrite) == ("reject", False)
    assert (d.dicomweb.qido_max_limit, d.dicomweb.qido_max_offset) == (1000, 10_000_000)
    assert d.dicomweb.max_transcode_bytes == 512 * MiB
    a = d.access
    assert (a.signing_keys, a.issuer, a.token_lifetime, a.secret_overlap_seconds) == (None, None, 3600, 86400)
    assert (a.rate_requests, a.rate_bytes, a.rate_window_seconds) == (6000, 10 * GiB, 60)
    assert a.rate_limit_storage is None
    assert (a.external_issuer, a.external_jwks, a.external_audience) == (None, None, None)
    assert a.external_tenant_claim == "tenant"
    assert (d.metrics.port, d.metrics.host) == (0, "127.0.0.1")


def test_each_variable_reaches_its_section(tmp_path: Path) -> None:
    env = {
        "DATABASE_URL": "postgresql://u@db/x",
        "DICOMWEB_DB_POOL_SIZE": "4",
        "DICOMWEB_DATA_DIR": str(tmp_path),
        "S3_BUCKET": "dicom",
        "S3_ENDPOINT_URL": "http://s3.test:8333",
        "AWS_ACCESS_KEY_ID": "ak",
        "S3_SECRET_ACCESS_KEY": "sk",
        "S3_PART_SIZE": str(5 * MiB),
        "DICOMWEB_GC_GRACE_SECONDS": "60",
        "DICOMWEB_GC_INTERVAL_SECONDS": "0",
        "DICOMWEB_PUBLIC_BASE_URL": "https://pacs.test/",
        "DICOMWEB_CORS_ORIGINS": "https://viewer.test/, http://localhost:3000",
        "DICOMWEB_KEEP_ALIVE_SECONDS": "2.5",
        "DICOMWEB_HTTP_HEADER_TIMEOUT_SECONDS": "7",
        "DICOMWEB_HTTP_HEADER_MAX_BYTES": "8192",
        "DICOMWEB_BODY_MIN_RATE": "0",
        "DICOMWEB_BODY_RATE_WINDOW_SECONDS": "5",
        "DICOMWEB_MAX_CONNECTIONS": "3",
        "DICOMWEB_MAX_BODY_BYTES": "100",
        "DICOMWEB_MAX_PART_BYTES": "50",
        "DICOMWEB_MAX_PARTS": "2",
        "DICOMWEB_HEADER_BUDGET_BYTES": "4096",
        "DICOMWEB_HEADER_SECONDS": "0.5",
        "DICOMWEB_BULK_DATA_THRESHOLD": "64",
        "DICOMWEB_DUPLICATE_POLICY": "overwrite",
        "DICOMWEB_QIDO_MAX_LIMIT": "10",
        "DICOMWEB_QIDO_MAX_OFFSET": "20",
        "DICOMWEB_MAX_TRANSCODE_BYTES": "30",
        "DICOMWEB_SIGNING_KEYS": str(tmp_path / "keys.json"),
        "DICOMWEB_ISSUER": "https://pacs.test/",
        "DICOMWEB_TOKEN_LIFETIME": "600",
        "DICOMWEB_SECRET_OVERLAP_SECONDS": "0",
        "DICOMWEB_RATE_LIMIT_STORAGE": "async+redis://127.0.0.1:6379/0",
        "DICOMWEB_RATE_REQUESTS": "5",
        "DICOMWEB_RATE_BYTES": "6",
        "DICOMWEB_RATE_WINDOW_SECONDS": "7",
        "DICOMWEB_EXTERNAL_ISSUER": "https://idp.test",
        "DICOMWEB_EXTERNAL_JWKS": "https://idp.test/jwks",
        "DICOMWEB_EXTERNAL_AUDIENCE": "pacs",
        "DICOMWEB_EXTERNAL_TENANT_CLAIM": "hospital",
        "DICOMWEB_METRICS_PORT": "9464",
        "DICOMWEB_METRICS_HOST": "0.0.0.0",
    }
    s = Settings.from_env(env)
    assert s.database == DatabaseSettings("postgresql://u@db/x", 4)
    s3 = S3Settings("http://s3.test:8333", "dicom", "ak", "sk", "us-east-1", 5 * MiB)
    assert s.storage == StorageSettings(tmp_path / "objects", s3, 60, 0)
    assert s.http == HttpSettings(
        public_base_url="https://pacs.test",
        cors_origins=("https://viewer.test", "http://localhost:3000"),
        keep_alive_seconds=2.5,
        header_timeout=7,
        header_max_bytes=8192,
        body_min_rate=0,
        body_rate_window=5,
        max_connections=3,
    )
    assert s.ingest == IngestSettings(100, 50, 2, 4096, 0.5, 64, "overwrite")
    assert s.ingest.overwrite
    assert s.dicomweb == DicomwebSettings(10, 20, 30)
    assert s.access == AccessSettings(
        tmp_path / "keys.json",
        "https://pacs.test",
        600,
        0,
        "async+redis://127.0.0.1:6379/0",
        5,
        6,
        7,
        "https://idp.test",
        "https://idp.test/jwks",
        "pacs",
        "hospital",
    )
    assert s.metrics == MetricsSettings(9464, "0.0.0.0")


ALL_VARIABLES = (
    "DATABASE_URL",
    "DICOMWEB_DATA_DIR",
    "DICOMWEB_STORAGE_PATH",
    "S3_BUCKET",
    "DICOMWEB_HOST",
    "DICOMWEB_PORT",
    "DICOMWEB_WORKERS",
    "DICOMWEB_PUBLIC_BASE_URL",
    "DICOMWEB_CORS_ORIGINS",
    "DICOMWEB_MAX_TRANSCODE_BYTES",
    "DICOMWEB_MAX_BODY_BYTES",
    "DICOMWEB_MAX_PART_BYTES",
    "DICOMWEB_MAX_PARTS",
    "DICOMWEB_HEADER_BUDGET_BYTES",
    "DICOMWEB_HEADER_SECONDS",
    "DICOMWEB_BULK_DATA_THRESHOLD",
    "DICOMWEB_QIDO_MAX_LIMIT",
    "DICOMWEB_QIDO_MAX_OFFSET",
    "DICOMWEB_GC_GRACE_SECONDS",
    "DICOMWEB_GC_INTERVAL_SECONDS",
    "DICOMWEB_DB_POOL_SIZE",
    "DICOMWEB_SIGNING_KEYS",
    "DICOMWEB_ISSUER",
    "DICOMWEB_TOKEN_LIFETIME",
    "DICOMWEB_SECRET_OVERLAP_SECONDS",
    "DICOMWEB_RATE_REQUESTS",
    "DICOMWEB_RATE_BYTES",
    "DICOMWEB_RATE_WINDOW_SECONDS",
    "DICOMWEB_RATE_LIMIT_STORAGE",
    "DICOMWEB_EXTERNAL_ISSUER",
    "DICOMWEB_EXTERNAL_JWKS",
    "DICOMWEB_EXTERNAL_AUDIENCE",
    "DICOMWEB_EXTERNAL_TENANT_CLAIM",
    "DICOMWEB_TRUSTED_PROXIES",
    "DICOMWEB_KEEP_ALIVE_SECONDS",
    "DICOMWEB_HTTP_HEADER_TIMEOUT_SECONDS",
    "DICOMWEB_HTTP_HEADER_MAX_BYTES",
    "DICOMWEB_BODY_MIN_RATE",
    "DICOMWEB_BODY_RATE_WINDOW_SECONDS",
    "DICOMWEB_MAX_CONNECTIONS",
    "DICOMWEB_LOG_LEVEL",
    "DICOMWEB_METRICS_PORT",
    "DICOMWEB_METRICS_HOST",
)
