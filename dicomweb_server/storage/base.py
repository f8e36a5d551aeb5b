"""Object storage: the one narrow interface every backend keeps, and the key scheme.

Keys are derived by the server (``new_key``), never from UIDs or other input.
An object is written straight to its final key; until the index row that
references it commits, it is invisible to clients and, after a grace period,
garbage (see ``ingest/sweep.py``).  The backends: ``files.py`` (local
filesystem), ``s3.py`` (aiobotocore) and ``memory.py`` (for unit tests).
"""

from __future__ import annotations

import re
import secrets
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Protocol

from dicomweb_server.errors import StorageError

READ_CHUNK = 1024 * 1024
KEY = re.compile(r"[a-z0-9][a-z0-9-]{0,62}/\d{8}/\d{4}/[0-9a-f]{32}")


class StorageFull(StorageError):
    """No space left for the object (STOW FailureReason 0xA700)."""


def new_key(tenant: str, now: float | None = None) -> str:
    """A fresh object key: ``tenant/YYYYMMDD/HHMM/<128 random bits>`` (UTC).

    Objects written in the same minute share a directory, so one directory fsync
    covers a whole request; the date prefix also tells an operator an object's age.
    The random part comes from the OS (``secrets``), not the ``random`` module's shared
    generator: anything in the process may seed that one (a test framework does, before
    each example), and then two objects would get one key.  Keys must be unique, not
    secret (they never leave the server), and a unique index backs it.
    """
    stamp = time.strftime("%Y%m%d/%H%M", time.gmtime(now))
    key = f"{tenant}/{stamp}/{secrets.randbits(128):032x}"
    check_key(key)
    return key


def check_key(key: str) -> None:
    """Every backend checks a key before it touches anything: a key is never a path from input."""
    if not KEY.fullmatch(key):
        raise StorageError("invalid object key")


@dataclass(frozen=True)
class StoredObject:
    key: str
    size: int
    modified: float  # seconds since the epoch


class ObjectWriter(Protocol):
    async def write(self, data: bytes | memoryview) -> None: ...

    async def commit(self) -> bytes:
        """Make the object durable at its key and return the SHA-256 of its bytes.

        After this returns the object survives a crash.  Hashing here lets the file
        backend hash small objects in its worker thread, off the event loop."""

    async def abort(self) -> None:
        """Discard everything written; safe to call more than once."""


class ObjectStore(Protocol):
    def writer(self, key: str) -> ObjectWriter: ...

    def read(self, key: str, start: int = 0, end: int | None = None) -> AsyncIterator[bytes]:
        """Stream bytes ``[start, end)`` of an object."""

    async def delete(self, key: str) -> None: ...

    def objects(self) -> AsyncIterator[StoredObject]: ...

    async def remove_stale_uploads(self, older_than: float) -> int:
        """Remove unfinished writes (temp files, multipart uploads) started before ``older_than``."""

    async def ping(self) -> None: ...

    async def close(self) -> None: ...
