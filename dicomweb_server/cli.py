"""``dicomweb-server``: serve, migrate and sweep."""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import sys
from pathlib import Path

from . import logs
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


def _banner(base: str) -> str:
    """A copy-paste walk-through that stores and fetches one of pydicom's bundled files."""
    import pydicom
    from pydicom.data import get_testdata_file

    path = str(get_testdata_file("CT_small.dcm"))
    ds = pydicom.dcmread(path, stop_before_pixels=True)
    uids = (ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID)
    url = f"{base}/dicomweb/studies/{uids[0]}/series/{uids[1]}/instances/{uids[2]}"
    return f"""
DICOMweb server ready at {base}/dicomweb   (health: {base}/healthz, {base}/readyz)

Store a file with curl, then fetch it back:
  curl -sS -X POST {base}/dicomweb/studies -H 'Content-Type: application/dicom' \\
       --data-binary @{path}
  curl -sS -H 'Accept: application/dicom; transfer-syntax=*' -o back.dcm \\
       {url}
Its metadata, a frame and a rendered JPEG:
  curl -sS {url}/metadata
  curl -sS -H 'Accept: multipart/related; type="application/octet-stream"' {url}/frames/1 -o frame.mime
  curl -sS {url}/rendered -o image.jpg
Search for it:
  curl -sS '{base}/dicomweb/studies?PatientID={ds.PatientID}'
  curl -sS '{base}/dicomweb/studies/{uids[0]}/instances?includefield=all'

The same with dicomweb-client (pip install dicomweb-client):
  {sys.executable} - <<'PY'
  import pydicom
  from dicomweb_client.api import DICOMwebClient
  client = DICOMwebClient(url="{base}/dicomweb")
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
    # libuv accepts one connection per loop turn, so simultaneous connections spread over the
    # worker processes instead of all landing on whichever woke first.
    os.environ.setdefault("UV_TCP_SINGLE_ACCEPT", "1")
    migrate(url)
    base = settings.public_base_url or f"http://{args.host}:{args.port}"
    print(_banner(base), file=sys.stderr, flush=True)
    # uvicorn shuts down gracefully on SIGTERM, then re-raises it to the handler it found:
    # make that handler an exit, so the finally below still stops the embedded PostgreSQL.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    try:
        uvicorn.run(
            "dicomweb_server.app:create_app",
            factory=True,
            host=args.host,
            port=args.port,
            workers=args.workers,
            loop="uvloop",
            http="httptools",
            log_config=None,
            access_log=False,
            timeout_graceful_shutdown=10,
        )
    finally:
        _stop(server)  # uvicorn returns on SIGINT and SIGTERM: the embedded PostgreSQL stops with us


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
    p.add_argument("--workers", type=int, default=int(os.environ.get("DICOMWEB_WORKERS", "1")))
    p.set_defaults(func=serve)
    p = sub.add_parser("migrate", help="apply database migrations")
    p.set_defaults(func=lambda a: migrate(_database(Settings.from_env())[0]))
    p = sub.add_parser("gc", help="remove objects no index row references, older than the grace period")
    p.add_argument("--grace", type=float, default=None, help="seconds (default: DICOMWEB_GC_GRACE_SECONDS)")
    p.set_defaults(func=gc)
    logs.configure(os.environ.get("DICOMWEB_LOG_LEVEL", "INFO"))
    args = parser.parse_args(argv)
    args.func(args)


if __name__ == "__main__":
    main()
