"""Fixtures of the order tests: the analysis service's client, made once by the real CLI, and
analysis worker processes stopped at the end of each test whatever happened."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.support import analysis_worker


@pytest.fixture(scope="session")
def analysis_client(database_url: str, tmp_path_factory: pytest.TempPathFactory) -> tuple[str, str]:
    """(client id, secret) from ``dicomweb-server clients create --analysis``."""
    return analysis_worker.create_client(database_url, tmp_path_factory.mktemp("analysis-cli"))


StartWorker = Callable[..., analysis_worker.Process]


@pytest.fixture
def start_worker(analysis_client: tuple[str, str], tmp_path: Path) -> Iterator[StartWorker]:
    """``start_worker(url, *options)``: a worker process of that client (its stderr in the test's
    folder), killed at the end of the test if it is still running."""
    started: list[analysis_worker.Process] = []

    def start(url: str, *options: str) -> analysis_worker.Process:
        client_id, secret = analysis_client
        log = tmp_path / f"worker-{len(started)}.log"
        process = analysis_worker.start(url, client_id, secret, *options, log=log)
        started.append(process)
        return process

    yield start
    for process in started:
        process.kill()


@pytest.fixture(autouse=True)
def _stop_servers_of_the_test() -> Iterator[None]:
    """Every server process a test started is killed when it ends, passed or failed: a server
    left running keeps consuming the shared database's queue, and would run the next test's
    steps against its own objects folder (QC failing there)."""
    from tests.conftest import _STARTED

    before = len(_STARTED)
    yield
    for server in _STARTED[before:]:
        server.stop("kill")
