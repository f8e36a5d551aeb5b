"""Object storage (being split into base, files, s3 and memory; see files.py for now)."""

from dicomweb_server.storage.files import *  # noqa: F403
from dicomweb_server.storage.files import _check_key  # noqa: F401
