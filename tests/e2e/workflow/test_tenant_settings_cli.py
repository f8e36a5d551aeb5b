"""``dicomweb-server tenants set|show`` (issue #12 §7) through ``cli.main`` on the test database;
the steps read the tenant row each time, so a change applies without a restart."""

from __future__ import annotations

import asyncio
import json
import uuid
from pathlib import Path

import asyncpg
import pytest

from dicomweb_server import cli
from dicomweb_server.db import arrival
from dicomweb_server.settings import WorkflowSettings


async def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    try:
        await asyncio.to_thread(cli.main, list(argv))
        code = 0
    except SystemExit as exc:
        code = int(exc.code or 0)
    out, err = capsys.readouterr()
    return code, out, err


async def test_set_show_reset_and_limits(
    db: asyncpg.Pool,
    database_url: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setenv("DATABASE_URL", database_url)
    monkeypatch.setenv("DICOMWEB_DATA_DIR", str(tmp_path))
    monkeypatch.setenv("DICOMWEB_QUIET_SECONDS", "12")
    tenant = f"wf-{uuid.uuid4().hex[:8]}"
    try:
        assert (await run(capsys, "tenants", "create", tenant))[0] == 0
        code, out, _ = await run(
            capsys,
            "tenants",
            "set",
            tenant,
            "--force-seconds",
            "600",
            "--no-auto-orders",
            "--max-attempts",
            "7",
        )
        assert code == 0
        shown = json.loads(out)
        assert shown["tenant"] == tenant
        assert shown["workflow"]["force_seconds"] == {"value": 600.0, "from": "tenant"}
        assert shown["workflow"]["auto_orders"] == {"value": False, "from": "tenant"}
        assert shown["workflow"]["max_attempts"] == {"value": 7, "from": "tenant"}
        assert shown["workflow"]["quiet_seconds"] == {
            "value": 12.0,
            "from": "server",
        }  # DICOMWEB_QUIET_SECONDS
        assert shown["workflow"]["force_policy"] == {"value": "proceed", "from": "server"}
        async with db.acquire() as conn:  # what the settle step and the router read, at once
            now = await arrival.tenant_settings(conn, tenant, WorkflowSettings())
        assert (now["force"], now["auto_orders"], now["max_attempts"]) == (600.0, False, 7)
        code, out, _ = await run(capsys, "tenants", "show", tenant)
        assert code == 0 and json.loads(out) == shown
        for bad, says in (
            (["--quiet-seconds", "-1"], "--quiet-seconds must be at least 0"),
            (["--force-seconds", "0"], "--force-seconds must be more than 0"),
            (["--max-attempts", "101"], "--max-attempts must be from 1 to 100"),
            (["--lease-seconds", "4"], "--lease-seconds must be from 5 to 86400"),
            (["--lease-seconds", "nan"], "--lease-seconds must be from 5 to 86400"),
        ):
            code, _, err = await run(capsys, "tenants", "set", tenant, *bad)
            assert code == 2 and says in err, (bad, err)
        code, out, _ = await run(capsys, "tenants", "set", tenant, "--reset", "--force-policy", "hold")
        assert code == 0
        reset = json.loads(out)["workflow"]
        assert reset["force_policy"] == {"value": "hold", "from": "tenant"}
        assert all(v["from"] == "server" for k, v in reset.items() if k != "force_policy")
        code, _, err = await run(capsys, "tenants", "show", "no-such-tenant")
        assert code == 2 and "no tenant 'no-such-tenant'" in err
        code, _, err = await run(capsys, "tenants", "set", "no-such-tenant", "--max-attempts", "2")
        assert code == 2 and "no tenant" in err
    finally:
        await db.execute("DELETE FROM tenant WHERE id = $1", tenant)
