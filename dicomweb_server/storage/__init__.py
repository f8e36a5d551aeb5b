"""Object storage: one narrow interface (``base.py``) and its backends, chosen at start-up.

``files.py`` keeps objects on the local filesystem, ``s3.py`` in an S3 bucket and ``memory.py`` in
memory (unit tests).  Callers import what they need from those modules; only the choice of
backend, at start-up, lives here.
"""

from __future__ import annotations

from pathlib import Path

from dicomweb_server.settings import S3Settings
from dicomweb_server.storage.base import ObjectStore
from dicomweb_server.storage.files import FileStore
from dicomweb_server.storage.s3 import S3Store


async def open_store(root: Path, s3: S3Settings | None) -> ObjectStore:
    """The configured backend: S3 when a bucket is set, else the local filesystem."""
    if s3 is not None:
        return await S3Store(s3).open()
    return FileStore(root)
