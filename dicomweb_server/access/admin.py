"""Administration from the command line: signing keys, tenants, clients; the development bootstrap.

``dicomweb-server keys|tenants|clients ...``.  A client secret is printed once,
at creation or rotation, and only its argon2id hash is kept.
"""

from __future__ import annotations

import argparse
import asyncio
import ipaddress
import json
import math
import os
import re
import secrets
import sys
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

from dicomweb_server.access import auth
from dicomweb_server.db import access as access_db
from dicomweb_server.db.pool import Connection, connection, create_pool
from dicomweb_server.settings import INT32_MAX, INT64_MAX, Settings, WorkflowSettings

DEV_TENANT = "dev"
DEV_CLIENT = "dev-client"
DEV_ANALYSIS_CLIENT = "dev-analysis"
# The database's own checks (alembic 0005), tested here first so that a mistake is one line
CLIENT_ID = re.compile(r"[A-Za-z0-9._-]{1,64}")


class CommandError(Exception):
    """A mistake on the command line; ``dicomweb-server`` prints it on one line and exits 2."""


def _run(url: str, work: Callable[[Connection], Awaitable[Any]]) -> Any:
    """One command's database work, on a connection of its own pool."""

    async def go() -> Any:
        pool = await create_pool(url, 2)
        try:
            async with connection(pool) as conn:
                return await work(conn)
        finally:
            await pool.close()

    return asyncio.run(go())


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


# -- keys ---------------------------------------------------------------------------------


def keys_command(args: argparse.Namespace, settings: Settings) -> None:
    path = Path(args.file) if args.file else settings.access.signing_keys
    if path is None:
        raise CommandError("name the key file with --file or DICOMWEB_SIGNING_KEYS")
    if args.action == "create":
        if path.exists():
            raise CommandError(f"{path} exists; use `keys rotate`")
        keys = auth.SigningKeys.generate(path)
        print(json.dumps({"file": str(path), "kid": keys.signing.kid}))
    elif args.action == "rotate":
        keys = auth.SigningKeys.load(path)
        print(json.dumps({"file": str(path), "new_kid": keys.rotate(), "verifying": _kids(keys)}))
    elif args.action == "retire":
        keys = auth.SigningKeys.load(path)
        print(json.dumps({"file": str(path), "retired": keys.retire(args.keep), "verifying": _kids(keys)}))


def _kids(keys: auth.SigningKeys) -> list[str]:
    return [str(k.kid) for k in keys.keys.keys]


# -- tenants and clients --------------------------------------------------------------------


def tenants_command(args: argparse.Namespace, url: str, settings: Settings) -> None:
    if args.action in ("set", "show"):
        if not args.tenant:
            raise CommandError(
                f"tenants {args.action} needs a tenant id (see `dicomweb-server tenants list`)"
            )
        if args.action == "set":
            values = workflow_values(args)
            if not _run(
                url, lambda conn: access_db.set_tenant_workflow(conn, args.tenant, values, args.reset)
            ):
                raise CommandError(f"no tenant {args.tenant!r}")
        overrides = _run(url, lambda conn: access_db.tenant_workflow(conn, args.tenant))
        if overrides is None:
            raise CommandError(f"no tenant {args.tenant!r}")
        print(json.dumps(effective_workflow(args.tenant, overrides, settings.workflow), indent=2))
    elif args.action == "create":
        if not args.tenant:
            raise CommandError("tenants create needs a tenant id, e.g. `tenants create st-mary`")
        if args.tenant == auth.ANALYSIS_TENANT:
            raise CommandError(
                f"{auth.ANALYSIS_TENANT!r} is reserved for the analysis service "
                "(`dicomweb-server clients create --analysis` creates it)"
            )
        if not auth.TENANT_ID.fullmatch(args.tenant):
            raise CommandError(
                f"{args.tenant!r} is not a tenant id: lower-case letters, digits and '-', at most 63"
            )
        created = _run(url, lambda conn: access_db.create_tenant(conn, args.tenant, args.name or args.tenant))
        print(json.dumps({"tenant": args.tenant, "created": created}))
    else:
        rows = _run(url, access_db.list_tenants)
        print(json.dumps([{**r, "created_at": r["created_at"].isoformat()} for r in rows], indent=2))


# The tenant table's CHECKs (alembic 0009), tested here first for a one-line error.
_WORKFLOW_LIMITS: dict[str, tuple[str, Callable[[float], bool], str]] = {
    "quiet_seconds": ("--quiet-seconds", lambda v: v >= 0, "at least 0"),
    "force_seconds": ("--force-seconds", lambda v: v > 0, "more than 0"),
    "max_attempts": ("--max-attempts", lambda v: 1 <= v <= 100, "from 1 to 100"),
    "lease_seconds": ("--lease-seconds", lambda v: 5 <= v <= 86400, "from 5 to 86400"),
}


def workflow_values(args: argparse.Namespace) -> dict[str, Any]:
    """The overrides given to ``tenants set``, checked against the table's limits."""
    values: dict[str, Any] = {}
    for column, (option, ok, shown) in _WORKFLOW_LIMITS.items():
        value = getattr(args, column)
        if value is None:
            continue
        if not math.isfinite(value) or not ok(value):
            raise CommandError(f"{option} must be {shown}, got {value}")
        values[column] = value
    if args.force_policy is not None:
        values["force_policy"] = args.force_policy
    if args.auto_orders is not None:
        values["auto_orders"] = args.auto_orders
    return values


def effective_workflow(tenant: str, overrides: dict[str, Any], defaults: WorkflowSettings) -> dict[str, Any]:
    """What the tenant's steps use: each setting's value and whether it is the tenant's override
    or the server's default (DICOMWEB_* environment)."""
    out = {}
    for column in access_db.WORKFLOW_COLUMNS:
        own = overrides[column]
        out[column] = {
            "value": getattr(defaults, column) if own is None else own,
            "from": "server" if own is None else "tenant",
        }
    return {"tenant": tenant, "workflow": out}


def _check_new_client(url: str, tenant: str, client_id: str) -> None:
    if not CLIENT_ID.fullmatch(client_id):
        raise CommandError(f"{client_id!r} is not a client id: letters, digits, '.', '_' and '-', at most 64")

    async def check(conn: Connection) -> str | None:
        if tenant not in {row["id"] for row in await access_db.list_tenants(conn)}:
            return f"no tenant {tenant!r} (create it with `dicomweb-server tenants create {tenant}`)"
        if await access_db.find_client(conn, client_id) is not None:
            return f"client {client_id!r} exists (rotate its secret with `clients rotate-secret`)"
        return None

    problem = _run(url, check)
    if problem:
        raise CommandError(problem)


def clients_command(args: argparse.Namespace, url: str, settings: Settings) -> None:
    if args.action in ("rotate-secret", "disable", "enable") and not args.client_id:
        raise CommandError(f"clients {args.action} needs a client id (see `dicomweb-server clients list`)")
    if args.action == "create":
        if getattr(args, "analysis", False):
            _analysis_client(args, url)
        scopes = args.scopes.split(",") if args.scopes else ["dicomweb.read", "dicomweb.write"]
        unknown = set(scopes) - set(auth.SCOPES)
        if unknown:
            raise CommandError(
                f"unknown scopes: {', '.join(sorted(unknown))}; known: {', '.join(auth.SCOPES)}"
            )
        if not args.tenant:
            raise CommandError("clients create needs --tenant (see `dicomweb-server tenants list`)")
        if args.tenant == auth.ANALYSIS_TENANT and scopes != [auth.ANALYSIS_SCOPE]:
            raise CommandError("clients of the analysis tenant have the analysis scope only: use --analysis")
        if auth.ANALYSIS_SCOPE in scopes and args.tenant != auth.ANALYSIS_TENANT:
            raise CommandError(
                "a hospital's client cannot hold the analysis scope: the analysis service's clients "
                "are made with `clients create --analysis`"
            )
        for option, value, high in (
            ("--rate-requests", args.rate_requests, INT32_MAX),
            ("--rate-bytes", args.rate_bytes, INT64_MAX),
        ):
            if value is not None and not 0 <= value <= high:
                raise CommandError(f"{option} must be from 0 to {high}, got {value}")
        client_id = args.client_id or f"{args.tenant[:55]}-{secrets.token_hex(4)}"
        _check_new_client(url, args.tenant, client_id)
        secret = auth.new_secret()
        _run(
            url,
            lambda conn: access_db.create_client(
                conn,
                client_id,
                args.tenant,
                args.name or client_id,
                scopes,
                auth.hash_secret(secret),
                args.rate_requests,
                args.rate_bytes,
            ),
        )
        print(
            json.dumps(
                {"client_id": client_id, "client_secret": secret, "tenant": args.tenant, "scopes": scopes}
            ),
            flush=True,
        )
        print("The secret is shown only now; keep it safe.", file=sys.stderr, flush=True)
    elif args.action == "list":
        rows = _run(url, lambda conn: access_db.list_clients(conn, args.tenant))
        print(
            json.dumps(
                [
                    {
                        "client_id": c.client_id,
                        "tenant": c.tenant,
                        "name": c.name,
                        "scopes": sorted(c.scopes),
                        "active_secrets": len(c.secret_hashes),
                        "disabled": c.disabled,
                    }
                    for c in rows
                ],
                indent=2,
            )
        )
    elif args.action == "rotate-secret":
        secret = auth.new_secret()
        overlap = settings.access.secret_overlap_seconds
        if not _run(
            url, lambda conn: access_db.rotate_secret(conn, args.client_id, auth.hash_secret(secret), overlap)
        ):
            raise CommandError(f"no client {args.client_id}")
        print(
            json.dumps(
                {"client_id": args.client_id, "client_secret": secret, "old_secret_valid_for_s": overlap}
            )
        )
    elif args.action in ("disable", "enable"):
        disable = args.action == "disable"
        done = _run(url, lambda conn: access_db.set_client_disabled(conn, args.client_id, disable))
        if not done:
            raise CommandError(f"no client {args.client_id}")
        print(json.dumps({"client_id": args.client_id, "disabled": args.action == "disable"}))


def _analysis_client(args: argparse.Namespace, url: str) -> None:
    """``clients create --analysis``: the reserved tenant (made if missing) and a client there
    with the ``analysis`` scope only (issue #12 §3)."""
    if args.tenant and args.tenant != auth.ANALYSIS_TENANT:
        raise CommandError("--analysis makes a client of the analysis tenant: leave out --tenant")
    if args.scopes and args.scopes != auth.ANALYSIS_SCOPE:
        raise CommandError("an analysis client has the analysis scope only: leave out --scopes")
    _run(url, lambda conn: access_db.create_tenant(conn, auth.ANALYSIS_TENANT, "Analysis service"))
    args.tenant, args.scopes = auth.ANALYSIS_TENANT, auth.ANALYSIS_SCOPE


def add_commands(sub: Any, common: argparse.ArgumentParser) -> None:
    p = sub.add_parser(
        "keys",
        parents=[common],
        help="signing keys: create, rotate (new key signs, old keys verify), retire",
        description="Manage the JSON Web Key Set file whose private keys sign the access tokens.",
    )
    p.add_argument(
        "action",
        choices=["create", "rotate", "retire"],
        help="create: a new file with one key; rotate: add a key that signs from now on (the older "
        "ones keep verifying); retire: drop all but the newest --keep keys",
    )
    p.add_argument("--file", help="key file (default: DICOMWEB_SIGNING_KEYS)")
    p.add_argument(
        "--keep", type=int, default=1, help="retire: how many keys to keep, newest first (default 1)"
    )
    p = sub.add_parser(
        "tenants",
        parents=[common],
        help="tenants: create, list, set (workflow overrides), show (effective workflow settings)",
        description="Every client, instance and audit row belongs to one tenant. A tenant's workflow "
        "settings override the server's defaults (DICOMWEB_QUIET_SECONDS, ...) and apply at once.",
    )
    p.add_argument(
        "action",
        choices=["create", "list", "set", "show"],
        help="create a tenant, list them all as JSON, set its workflow overrides, show its effective "
        "workflow settings as JSON",
    )
    p.add_argument(
        "tenant", nargs="?", help="create: the tenant id (lower-case letters, digits and '-', at most 63)"
    )
    p.add_argument("--name", help="create: a display name (default: the id)")
    p.add_argument(
        "--quiet-seconds", dest="quiet_seconds", type=float, help="set: seconds of quiet before stable (>= 0)"
    )
    p.add_argument(
        "--force-seconds",
        dest="force_seconds",
        type=float,
        help="set: seconds after the first instance when a study that never goes quiet ends (> 0)",
    )
    p.add_argument(
        "--force-policy",
        dest="force_policy",
        choices=["proceed", "hold", "fail"],
        help="set: what the force-complete limit does",
    )
    p.add_argument(
        "--auto-orders",
        dest="auto_orders",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="set: every stable study becomes an order (or not)",
    )
    p.add_argument("--max-attempts", dest="max_attempts", type=int, help="set: analysis attempts, 1 to 100")
    p.add_argument(
        "--lease-seconds", dest="lease_seconds", type=float, help="set: an analysis lease, 5 to 86400 s"
    )
    p.add_argument(
        "--reset",
        action="store_true",
        help="set: every override not given goes back to the server's default",
    )
    p = sub.add_parser(
        "clients",
        parents=[common],
        help="OAuth2 clients: create, list, rotate-secret, disable, enable",
        description="OAuth2 clients (client credentials grant). A secret is printed once, as JSON on "
        "stdout; only its argon2id hash is kept.",
    )
    p.add_argument(
        "action",
        choices=["create", "list", "rotate-secret", "disable", "enable"],
        help="create (needs --tenant), list (optionally of one --tenant), rotate-secret, disable or "
        "enable CLIENT_ID",
    )
    p.add_argument(
        "client_id",
        nargs="?",
        help="the client id; create: optional (default: TENANT-<8 hex digits>), letters, digits, "
        "'.', '_' and '-', at most 64",
    )
    p.add_argument("--tenant", help="create: the client's tenant (required); list: only this tenant's")
    p.add_argument(
        "--analysis",
        action="store_true",
        help="create: a client of the analysis service (tenant 'analysis', made if missing; scope "
        "analysis only)",
    )
    p.add_argument("--name", help="create: a display name (default: the client id)")
    p.add_argument(
        "--scopes",
        help=f"create: comma-separated, from: {', '.join(auth.SCOPES)} "
        "(default: dicomweb.read,dicomweb.write)",
    )
    p.add_argument(
        "--rate-requests",
        type=int,
        help="create: requests per window, 0 to 2^31-1 (default: DICOMWEB_RATE_REQUESTS)",
    )
    p.add_argument(
        "--rate-bytes",
        type=int,
        help="create: uploaded bytes per window, 0 to 2^63-1 (default: DICOMWEB_RATE_BYTES)",
    )


# -- development bootstrap and the secure-by-default check ------------------------------------


@dataclass(frozen=True)
class DevClient:
    client_id: str
    client_secret: str
    analysis: DevClient | None = None  # the development analysis client, beside the dev client


def dev_analysis_path(settings: Settings) -> Path:
    return settings.data_dir / "dev-analysis.json"


def dev_keys_path(settings: Settings) -> Path:
    return settings.data_dir / "signing-keys.json"


def dev_secret_path(settings: Settings) -> Path:
    return settings.data_dir / "dev-client.json"


def bootstrap_dev(settings: Settings, url: str) -> tuple[Path, DevClient]:
    """On a loopback address with no key file configured: a local key file, a ``dev`` tenant and
    a client with every hospital scope, and a ``dev-analysis`` client of the analysis tenant
    (``DevClient.analysis``), their secrets kept (mode 0600) under the data folder so that the
    printed walk-through keeps working.  Never used on any other address."""
    path = settings.access.signing_keys or dev_keys_path(settings)
    auth.SigningKeys.load_or_generate(path)
    hospital = sorted(auth.allowed_scopes(DEV_TENANT, auth.SCOPES))

    async def ensure(conn: Connection) -> DevClient:
        await access_db.create_tenant(conn, DEV_TENANT, "Development tenant (make run)")
        await access_db.create_tenant(conn, auth.ANALYSIS_TENANT, "Analysis service")
        dev = await _dev_client(conn, DEV_CLIENT, DEV_TENANT, hospital, dev_secret_path(settings))
        analysis = await _dev_client(
            conn,
            DEV_ANALYSIS_CLIENT,
            auth.ANALYSIS_TENANT,
            [auth.ANALYSIS_SCOPE],
            dev_analysis_path(settings),
        )
        return DevClient(dev.client_id, dev.client_secret, analysis)

    settings.data_dir.mkdir(parents=True, exist_ok=True)
    return path, _run(url, ensure)


async def _dev_client(
    conn: Connection, client_id: str, tenant: str, scopes: list[str], secret_file: Path
) -> DevClient:
    """One development client, its secret in ``secret_file`` (kept while it still matches)."""
    record = await access_db.find_client(conn, client_id)
    saved = await asyncio.to_thread(_saved_secret, secret_file)
    if record is not None and saved is not None and auth.secret_matches(saved, record.secret_hashes):
        return DevClient(client_id, saved)
    secret = auth.new_secret()
    if record is None:
        await access_db.create_client(conn, client_id, tenant, "make run", scopes, auth.hash_secret(secret))
    else:
        await access_db.rotate_secret(conn, client_id, auth.hash_secret(secret), 0)
    fd = os.open(secret_file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as out:
        json.dump({"client_id": client_id, "client_secret": secret}, out)
    return DevClient(client_id, secret)


def _saved_secret(secret_file: Path) -> str | None:
    if not secret_file.exists():
        return None
    return str(json.loads(secret_file.read_text())["client_secret"])


def refuse_insecure(host: str, settings: Settings, url: str) -> None:
    """Never serve beyond loopback without real signing keys, or while the development client works."""
    if is_loopback(host):
        return
    keys = settings.access.signing_keys
    if keys is None or not keys.exists():
        raise CommandError(
            f"refusing to listen on {host}: set DICOMWEB_SIGNING_KEYS to a key file "
            "(`dicomweb-server keys create --file ...`)"
        )
    if keys.resolve() == dev_keys_path(settings).resolve():
        raise CommandError(f"refusing to listen on {host} with the development signing keys")
    for name in (DEV_CLIENT, DEV_ANALYSIS_CLIENT):
        dev = _run(url, partial(access_db.find_client, client_id=name))
        if dev is not None and not dev.disabled:
            raise CommandError(
                f"refusing to listen on {host} while the development client {name} is enabled "
                f"(`dicomweb-server clients disable {name}`)"
            )
