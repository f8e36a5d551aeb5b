"""JSON log lines.  Callers pass identifiers and sizes only: never names, IDs, UIDs or headers."""

from __future__ import annotations

import logging
import sys
import time

import orjson

_STANDARD = set(logging.LogRecord("", 0, "", 0, "", None, None).__dict__) | {"message", "asctime"}


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        line = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        line.update({k: v for k, v in record.__dict__.items() if k not in _STANDARD and k != "color_message"})
        if record.exc_info and record.exc_info[0] is not None:
            line["exception"] = record.exc_info[0].__name__  # the type only: messages may quote input
        return orjson.dumps(line, default=str).decode()


def configure(level: str = "INFO", libraries: bool = True) -> None:
    """JSON lines on stderr: ours at ``level``; other libraries' at ``level`` too when ``libraries``,
    else only their warnings and errors (pgserver's initdb output, alembic's plugin lines and
    uvicorn's start-up lines would bury the walk-through ``serve`` prints)."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    ours = logging.getLevelNamesMapping().get(level.upper(), logging.INFO)
    root.setLevel(ours if libraries else max(logging.WARNING, ours))
    logging.getLogger("dicomweb_server").setLevel(ours)
    silence_phi_sources()


def silence_phi_sources() -> None:
    """pydicom logs offending values (names, IDs, UIDs) when it meets invalid data, and authlib logs
    issued tokens and client objects at DEBUG: neither ever reaches our logs."""
    logging.getLogger("pydicom").setLevel(logging.CRITICAL + 1)
    logging.getLogger("authlib").setLevel(logging.WARNING)
