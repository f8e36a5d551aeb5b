"""Migration 0007: a client's own rate limits are never negative (the table refuses them)."""

from __future__ import annotations

import asyncpg
import pytest

from dicomweb_server.access import auth
from dicomweb_server.db import access as index
from dicomweb_server.db.pool import connection
from tests.conftest import TENANT


@pytest.mark.parametrize(("requests", "size"), [(-5, None), (None, -1)])
async def test_a_negative_client_budget_is_refused(
    db: asyncpg.Pool, requests: int | None, size: int | None
) -> None:
    with pytest.raises(asyncpg.CheckViolationError):
        async with connection(db) as conn:
            client_id, hashed = f"budget-{requests}-{size}", auth.hash_secret("s")
            await index.create_client(conn, client_id, TENANT, "n", auth.SCOPES, hashed, requests, size)


async def test_zero_budgets_are_allowed(db: asyncpg.Pool) -> None:
    async with connection(db) as conn:
        await index.create_client(conn, "budget-zero", TENANT, "n", auth.SCOPES, auth.hash_secret("s"), 0, 0)
        assert (await index.find_client(conn, "budget-zero")) is not None
