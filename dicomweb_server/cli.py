"""``dicomweb-server``: serve, migrate and sweep."""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import sys
from pathlib import Path

from . import admin, logs, metrics, workers
from .settings import Settings

ROOT = Path(__file__).resolve().parent.parent


def migrate(database_url: str) -> None:
    """Apply the alembic migrations (hand-written SQL) up to head."""
    import logging

    from alembic.config import Config

    from alembic import command

    logging.getLogger("alembic").setLevel(logging.WARNING)

    config = Config(str(ROOT / "alembic.ini"))
    config.set_main_option("script_location", str(ROOT / "alembic"))
    config.attributes["database_url"] = database_url
    config.attributes["configure_logging"] = False
    command.upgrade(config, "head")


def _database(settings: Settings) -> tuple[str, object | None]:
    if settings.database_url:
        return settings.database_url, None
    from .embedded import start_postgres

    url, server = start_postgres(settings.data_dir / "pg")
    return url, server


def _stop(server: object | None) -> None:
    """Stop the embedded PostgreSQL this process started (no-op with an external DATABASE_URL)."""
    cleanup = getattr(server, "cleanup", None)
    if cleanup is not None:
        cleanup()


def _banner(base: str, dev: admin.DevClient | None) -> str:
    """A copy-paste walk-through: a token, then store, search and fetch one of pydicom's files."""
    import pydicom
    from pydicom.data import get_testdata_file

    path = str(get_testdata_file("CT_small.dcm"))
    ds = pydicom.dcmread(path, stop_before_pixels=True)
    uids = (ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID)
    url = f"{base}/dicomweb/studies/{uids[0]}/series/{uids[1]}/instances/{uids[2]}"
    client_id, secret = (dev.client_id, dev.client_secret) if dev else ("$CLIENT_ID", "$CLIENT_SECRET")
    who = (
        f"Development tenant '{admin.DEV_TENANT}', client '{client_id}' "
        "(every scope; its secret is kept in the data folder)."
        if dev
        else "Create a client with `dicomweb-server clients create --tenant T --scopes ...`."
    )
    return f"""
DICOMweb server ready at {base}/dicomweb   (health: {base}/healthz, {base}/readyz)
{who}

Get a token (OAuth2 client credentials), then store a file, search, and fetch it back:
  TOKEN=$(curl -sS -u '{client_id}:{secret}' -d grant_type=client_credentials {base}/oauth/token \\
          | {sys.executable} -c 'import json,sys; print(json.load(sys.stdin)["access_token"])')
  curl -sS -H "Authorization: Bearer $TOKEN" -X POST {base}/dicomweb/studies \\
       -H 'Content-Type: application/dicom' --data-binary @{path}
  curl -sS -H "Authorization: Bearer $TOKEN" '{base}/dicomweb/studies?PatientID={ds.PatientID}'
  curl -sS -H "Authorization: Bearer $TOKEN" -H 'Accept: application/dicom; transfer-syntax=*' -o back.dcm \\
       {url}
  curl -sS -H "Authorization: Bearer $TOKEN" {url}/metadata
  curl -sS -H "Authorization: Bearer $TOKEN" {url}/rendered -o image.jpg

The same with dicomweb-client (pip install dicomweb-client):
  {sys.executable} - <<'PY'
  import pydicom, requests
  from dicomweb_client.api import DICOMwebClient
  token = requests.post("{base}/oauth/token", data={{"grant_type": "client_credentials"}},
                     auth=("{client_id}", "{secret}")).json()["access_token"]
  client = DICOMwebClient(url="{base}/dicomweb", headers={{"Authorization": "Bearer " + token}})
  ds = pydicom.dcmread("{path}")
  print(client.store_instances(datasets=[ds]))
  back = client.retrieve_instance(ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID)
  print("round trip ok:", back.PixelData == ds.PixelData)
  print(client.search_for_studies(search_filters={{"PatientID": ds.PatientID}}))
  PY
"""


def serve(args: argparse.Namespace) -> None:
    import uvicorn

    settings = Settings.from_env()
    url, server = _database(settings)
    os.environ["DATABASE_URL"] = url  # workers build their settings from the environment
    migrate(url)
    base = settings.public_base_url or f"http://{args.host}:{args.port}"
    os.environ.setdefault("DICOMWEB_ISSUER", settings.issuer or base)
    dev = None
    if admin.is_loopback(args.host) and settings.signing_keys is None:
        keys_path, dev = admin.bootstrap_dev(settings, url)
        os.environ["DICOMWEB_SIGNING_KEYS"] = str(keys_path)
    else:
        admin.refuse_insecure(args.host, settings, url)
    print(_banner(base, dev), file=sys.stderr, flush=True)
    metrics.prepare(settings.metrics_port, settings.metrics_host, args.workers)
    config = uvicorn.Config(
        "dicomweb_server.app:create_app",
        factory=True,
        host=args.host,
        port=args.port,
        workers=args.workers,
        loop="uvloop",
        http="httptools",
        log_config=None,
        access_log=False,
        # X-Forwarded-* only from the configured proxies (uvicorn trusts 127.0.0.1 by default).
        proxy_headers=bool(os.environ.get("DICOMWEB_TRUSTED_PROXIES")),
        forwarded_allow_ips=os.environ.get("DICOMWEB_TRUSTED_PROXIES") or "",
        timeout_graceful_shutdown=10,
    )
    # uvicorn shuts down gracefully on SIGTERM, then re-raises it to the handler it found:
    # make that handler an exit, so the finally below still stops the embedded PostgreSQL.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    status = 0
    try:
        if args.workers > 1:
            status = workers.Supervisor(config, args.workers, _log_level()).run()
        else:
            uvicorn.Server(config).run()
    finally:
        _stop(server)  # uvicorn returns on SIGINT and SIGTERM: the embedded PostgreSQL stops with us
    if status:
        sys.exit(status)


def _log_level() -> str:
    return os.environ.get("DICOMWEB_LOG_LEVEL", "INFO")


def gc(args: argparse.Namespace) -> None:
    from . import db, sweep
    from .storage import open_store

    settings = Settings.from_env()
    url, server = _database(settings)
    grace = settings.gc_grace_seconds if args.grace is None else args.grace

    async def run() -> None:
        pool = await db.create_pool(url, 2)
        store = await open_store(settings.storage_path, settings.s3)
        try:
            report = await sweep.sweep(pool, store, grace)
            print(
                f"scanned {report.scanned} objects, removed {report.removed_objects} unreferenced "
                f"and {report.removed_uploads} unfinished uploads"
            )
        finally:
            await store.close()
            await pool.close()

    try:
        asyncio.run(run())
    finally:
        _stop(server)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="dicomweb-server")
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser(
        "serve", help="run the HTTP server (starts an embedded PostgreSQL without DATABASE_URL)"
    )
    p.add_argument("--host", default=os.environ.get("DICOMWEB_HOST", "127.0.0.1"))
    p.add_argument("--port", type=int, default=int(os.environ.get("DICOMWEB_PORT", "8080")))
    p.add_argument(
        "--workers",
        type=int,
        default=int(os.environ.get("DICOMWEB_WORKERS", "1")),
        help="worker processes; each connection goes to the one with the fewest (see workers.py)",
    )
    p.set_defaults(func=serve)
    p = sub.add_parser("migrate", help="apply database migrations")
    p.set_defaults(func=lambda a: migrate(_database(Settings.from_env())[0]))
    admin.add_commands(sub)
    p = sub.add_parser("gc", help="remove objects no index row references, older than the grace period")
    p.add_argument("--grace", type=float, default=None, help="seconds (default: DICOMWEB_GC_GRACE_SECONDS)")
    p.set_defaults(func=gc)
    logs.configure(_log_level())
    args = parser.parse_args(argv)
    if args.command in ("keys", "tenants", "clients"):
        settings = Settings.from_env()
        if args.command == "keys":
            admin.keys_command(args, settings)
            return
        url, server = _database(settings)
        try:
            migrate(url)
            if args.command == "tenants":
                admin.tenants_command(args, url)
            else:
                admin.clients_command(args, url, settings)
        finally:
            _stop(server)
        return
    args.func(args)


if __name__ == "__main__":
    main()
