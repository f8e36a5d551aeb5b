"""``dicomweb-server``: serve, migrate and sweep."""

from __future__ import annotations

import argparse
import asyncio
import functools
import json
import os
import signal
import sys
import threading
import time
import warnings
from pathlib import Path

from dicomweb_server import logs, metrics, walkthrough
from dicomweb_server.access import admin
from dicomweb_server.access.admin import CommandError
from dicomweb_server.errors import ServiceUnavailable
from dicomweb_server.settings import Settings
from dicomweb_server.web import workers

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


def _settings(create: bool) -> Settings:
    """The settings, from the environment through ``Settings.from_env`` (which validates).

    The data folder is ``DICOMWEB_DATA_DIR`` if set; otherwise the one ``make run`` uses:
    ``.data`` in the project folder when this is a source checkout, else ``.data`` in the
    current folder.  Commands that only read or administer (``create`` false) never start an
    empty embedded database.
    """
    default = ROOT / ".data" if (ROOT / "pyproject.toml").exists() else Path.cwd() / ".data"
    try:
        settings = Settings.from_env(data_dir_default=default)
    except ValueError as exc:  # a setting out of range: its message names the variable
        raise CommandError(str(exc)) from None
    folder = settings.data_dir
    if not create and not settings.database.url and not (folder / "pg").exists():
        raise CommandError(
            f"no database in {folder} (nothing has been served from it): set DICOMWEB_DATA_DIR to "
            "the server's data folder, or DATABASE_URL to its database"
        )
    _export(worker_environment(settings))
    return settings


def worker_environment(
    settings: Settings, database_url: str | None = None, issuer: str | None = None, keys: Path | None = None
) -> dict[str, str]:
    """What the server's worker processes (and this one's app factory) must find in the
    environment: they build their own ``Settings.from_env``.  The one place it is decided."""
    env = {"DICOMWEB_DATA_DIR": str(settings.data_dir)}
    if database_url:
        env["DATABASE_URL"] = database_url
    if issuer:
        env["DICOMWEB_ISSUER"] = issuer
    if keys is not None:
        env["DICOMWEB_SIGNING_KEYS"] = str(keys)
    return env


def _export(env: dict[str, str]) -> None:
    os.environ.update(env)


def _database(settings: Settings) -> tuple[str, object | None]:
    if settings.database.url:
        return settings.database.url, None
    from dicomweb_server.db.embedded import start_postgres

    url, server = start_postgres(settings.data_dir / "pg")
    return url, server


def _migrate(settings: Settings) -> None:
    """``dicomweb-server migrate``: the migrations, on the embedded PostgreSQL if need be."""
    url, server = _database(settings)
    try:
        migrate(url)
    finally:
        _stop(server)


def _stop(server: object | None) -> None:
    """Stop the embedded PostgreSQL this process started (no-op with an external DATABASE_URL)."""
    cleanup = getattr(server, "cleanup", None)
    if cleanup is not None:
        cleanup()


def _probe_url(host: str, port: int) -> str:
    if host in ("", "0.0.0.0"):
        host = "127.0.0.1"
    elif host == "::":
        host = "::1"
    if ":" in host:
        host = f"[{host}]"
    return f"http://{host}:{port}/readyz"


def _announce_when_ready(probe: str, text: str, saved: Path) -> None:
    """Print the walk-through once the server answers /readyz: after every start-up line."""
    import urllib.request

    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(probe, timeout=2) as answer:
                if answer.status == 200:
                    break
        except OSError:
            time.sleep(0.2)
    else:
        return
    note = f"# This walk-through is kept in {saved} (run it again with: bash {saved})\n"
    print("\n" + text + note, flush=True)


def _save_walkthrough(settings: Settings, text: str) -> Path:
    path = settings.data_dir / "walkthrough.sh"
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)  # it holds the dev secret
    with os.fdopen(fd, "w") as out:
        out.write(text)
    return path


def serve(args: argparse.Namespace, settings: Settings) -> None:
    import uvicorn

    from dicomweb_server.web.connections import ConnectionLimits, GuardedHttp

    http = settings.http
    host = http.host if args.host is None else args.host
    port = http.port if args.port is None else args.port
    count = http.workers if args.workers is None else args.workers
    url, server = _database(settings)
    status = 0
    try:
        migrate(url)
        # The base URL as a client on this machine reaches it (0.0.0.0 is no address to connect to).
        base = http.public_base_url or _probe_url(host, port).removesuffix("/readyz")
        keys = None
        dev = None
        if admin.is_loopback(host) and settings.access.signing_keys is None:
            keys, dev = admin.bootstrap_dev(settings, url)
        else:
            admin.refuse_insecure(host, settings, url)
        # Workers build their settings from the environment.
        _export(worker_environment(settings, url, settings.access.issuer or base, keys))
        text = walkthrough.text(base, dev, settings)
        saved = _save_walkthrough(settings, text)
        threading.Thread(
            target=_announce_when_ready, args=(_probe_url(host, port), text, saved), daemon=True
        ).start()
        metrics.prepare(settings.metrics.port, settings.metrics.host, count)
        limits = ConnectionLimits.from_settings(http)
        config = uvicorn.Config(
            "dicomweb_server.app:create_app",
            factory=True,
            host=host,
            port=port,
            workers=count,
            loop="uvloop",
            # uvicorn's httptools protocol with header, body-rate and connection limits (connections.py)
            http=functools.partial(GuardedHttp, limits=limits),  # type: ignore[arg-type]
            timeout_keep_alive=max(1, round(http.keep_alive_seconds)),
            log_config=None,
            access_log=False,
            # X-Forwarded-* only from the configured proxies (uvicorn trusts 127.0.0.1 by default).
            proxy_headers=bool(http.trusted_proxies),
            forwarded_allow_ips=http.trusted_proxies or "",
            timeout_graceful_shutdown=10,
        )
        # uvicorn shuts down gracefully on SIGTERM, then re-raises it to the handler it found:
        # make that handler an exit, so the finally below still stops the embedded PostgreSQL.
        signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
        if count > 1:
            status = workers.Supervisor(config, count, _log_level(args, settings), args.verbose).run()
        else:
            uvicorn.Server(config).run()
    except KeyboardInterrupt:  # Ctrl-C: uvicorn has shut down and re-raised SIGINT; stop quietly
        status = 130
    finally:
        _stop(server)  # the embedded PostgreSQL stops with us
    if status:
        sys.exit(status)


def init(args: argparse.Namespace, settings: Settings) -> None:
    """A deployment's first start (the container's entrypoint runs it before ``serve``): create the
    signing key file if there is none, and apply the migrations.  Safe to run on every start."""
    from dicomweb_server.access import auth

    path = settings.access.signing_keys
    if path is None:
        raise CommandError("init needs DICOMWEB_SIGNING_KEYS: the key file to create (or keep)")
    created = not path.exists()
    keys = auth.SigningKeys.load_or_generate(path)
    url, server = _database(settings)
    try:
        migrate(url)
    finally:
        _stop(server)
    print(
        json.dumps({"signing_keys": str(path), "created": created, "kid": str(keys.signing.kid)}), flush=True
    )


def _log_level(args: argparse.Namespace, settings: Settings | None) -> str:
    given = settings.log_level if settings is not None else None
    return given or ("DEBUG" if getattr(args, "verbose", False) else "INFO")


def gc(args: argparse.Namespace, settings: Settings) -> None:
    from dicomweb_server.app import resources
    from dicomweb_server.ingest import sweep

    url, server = _database(settings)
    grace = settings.storage.gc_grace_seconds if args.grace is None else args.grace

    async def run() -> None:
        async with resources(settings, url, pool_size=2) as parts:
            report = await sweep.sweep(parts.pool, parts.store, grace)
            print(
                f"scanned {report.scanned} objects, removed {report.removed_objects} unreferenced "
                f"and {report.removed_uploads} unfinished uploads"
            )

    try:
        asyncio.run(run())
    finally:
        _stop(server)


def _parsers() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--verbose",
        action="store_true",
        help="also log the libraries' start-up lines (PostgreSQL, alembic, uvicorn) and Python "
        "warnings; DICOMWEB_LOG_LEVEL sets the level of ours (default INFO)",
    )
    parser = argparse.ArgumentParser(
        prog="dicomweb-server",
        description="DICOMweb server. Without DATABASE_URL it uses the embedded PostgreSQL in the data "
        "folder: DICOMWEB_DATA_DIR, else .data in the project folder (as `make run`), else ./.data.",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    p = sub.add_parser(
        "serve",
        parents=[common],
        help="run the HTTP server (starts an embedded PostgreSQL without DATABASE_URL)",
        description="Apply the migrations, then serve. On a loopback address without "
        "DICOMWEB_SIGNING_KEYS it creates a development tenant and client and prints a walk-through.",
    )
    p.add_argument(
        "--host",
        default=None,
        help="address to listen on (default: DICOMWEB_HOST or 127.0.0.1); any other than loopback "
        "needs DICOMWEB_SIGNING_KEYS",
    )
    p.add_argument(
        "--port",
        type=int,
        default=None,
        help="TCP port (default: DICOMWEB_PORT or 8080)",
    )
    p.add_argument(
        "--workers",
        type=int,
        default=None,
        help="worker processes (default: DICOMWEB_WORKERS or 1); each connection goes to the one "
        "with the fewest (see workers.py)",
    )
    p.set_defaults(func=serve)
    p = sub.add_parser(
        "migrate",
        parents=[common],
        help="apply database migrations",
        description="Apply the database migrations up to the latest (serve does this too).",
    )
    p.set_defaults(func=lambda a, settings: _migrate(settings))
    p = sub.add_parser(
        "init",
        parents=[common],
        help="first start of a deployment: create the signing key file if missing, apply migrations",
        description="Create the key file named by DICOMWEB_SIGNING_KEYS unless it exists, then apply "
        "the migrations; safe to run on every start (the container entrypoint does).",
    )
    p.set_defaults(func=init)
    admin.add_commands(sub, common)
    p = sub.add_parser(
        "gc",
        parents=[common],
        help="remove objects no index row references, older than the grace period",
        description="One garbage-collection pass over the object store.",
    )
    p.add_argument(
        "--grace",
        type=float,
        default=None,
        help="seconds an unreferenced object must be old to go (default: DICOMWEB_GC_GRACE_SECONDS)",
    )
    p.set_defaults(func=gc)
    return parser


# Commands that may start (and so create) the embedded database in the data folder.
_CREATES = frozenset({"serve", "migrate", "init", "keys"})


def main(argv: list[str] | None = None) -> None:
    parser = _parsers()
    args = parser.parse_args(argv)
    try:
        settings = _settings(create=args.command in _CREATES)
    except CommandError as exc:
        logs.configure(_log_level(args, None), libraries=args.verbose)
        print(f"dicomweb-server: error: {exc}", file=sys.stderr)
        sys.exit(2)
    logs.configure(_log_level(args, settings), libraries=args.verbose)
    if not args.verbose:
        warnings.simplefilter("ignore")  # library warnings (and pydicom's, which quote values) stay out
    try:
        _run(args, settings)
    except (CommandError, ServiceUnavailable) as exc:
        print(f"dicomweb-server: error: {exc}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        sys.exit(130)


def _run(args: argparse.Namespace, settings: Settings) -> None:
    if args.command in ("keys", "tenants", "clients"):
        if args.command == "keys":
            admin.keys_command(args, settings)
            return
        url, server = _database(settings)
        try:
            migrate(url)
            if args.command == "tenants":
                admin.tenants_command(args, url, settings)
            else:
                admin.clients_command(args, url, settings)
        finally:
            _stop(server)
        return
    args.func(args, settings)


if __name__ == "__main__":
    main()
