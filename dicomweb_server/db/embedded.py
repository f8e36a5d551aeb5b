"""An embedded PostgreSQL for development and tests, when no DATABASE_URL is given.

Uses the ``pgserver`` package (PostgreSQL binaries in a wheel): a private server
with its data in a local folder, listening only on a Unix socket, stopped when
the process that started it exits.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any


def start_postgres(data_dir: Path) -> tuple[str, Any]:
    """Start (or reuse) the server in ``data_dir``; return its URL and a handle with ``cleanup()``."""
    with warnings.catch_warnings():
        # platformdirs warns when XDG_RUNTIME_DIR is unset (CI, containers); the fallback is fine.
        warnings.simplefilter("ignore")
        from pgserver.postgres_server import get_server

    data_dir.mkdir(parents=True, exist_ok=True)
    server = get_server(data_dir.resolve(), cleanup_mode="stop")
    return str(server.get_uri()), server
