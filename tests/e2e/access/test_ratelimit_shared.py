"""Rate limits shared through a real redis-server by two server processes (as several workers or hosts)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import asyncpg
import httpx
import pytest

from tests.conftest import Server, start_server
from tests.support.redisserver import RedisServer, run_redis


@pytest.fixture
def redis(tmp_path: Path) -> Iterator[RedisServer]:
    with run_redis(tmp_path / "redis") as server:
        yield server


def test_two_processes_share_one_budget(
    db: asyncpg.Pool, database_url: str, tmp_path: Path, redis: RedisServer
) -> None:
    env = {"DICOMWEB_RATE_LIMIT_STORAGE": redis.url, "DICOMWEB_RATE_REQUESTS": "6"}
    servers: list[Server] = []
    try:
        for i in range(2):
            servers.append(start_server(database_url, tmp_path / f"s{i}", **env))
        statuses = []
        for n in range(8):
            server = servers[n % 2]
            r = httpx.get(f"{server.url}/dicomweb/studies", headers=server.headers, timeout=30)
            statuses.append(r.status_code)
            if r.status_code == 200:
                assert r.headers["ratelimit-policy"].startswith('"requests";q=6;w=60')
            else:
                assert int(r.headers["retry-after"]) >= 1
        assert statuses == [200] * 6 + [429] * 2  # one budget across both processes
    finally:
        for server in servers:
            server.stop()
