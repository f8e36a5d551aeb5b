"""A report's worker JSON as CSV (RFC 4180), for a report stored without a CSV of its own.

A worker's result is usually a table in disguise: a top-level list of objects (one per region,
say), or such a list under some key (``{"regions": [...], "version": ...}``).  That list becomes
the rows, with the union of its objects' keys, in first-seen order, as the header.  Anything
else is flattened to two columns, ``key,value``, with dotted paths (``volumes.left.hippocampus``,
list items by index), so no value is ever dropped.  Nested values inside a row are written as
JSON.  Pure: values in, text out.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Iterator
from typing import Any

import orjson


def _rows_of(value: Any) -> list[dict[str, Any]] | None:
    """The first list of objects: the value itself, or found under a key (depth first)."""
    if isinstance(value, list):
        if value and all(isinstance(v, dict) for v in value):
            return value
        return None
    if isinstance(value, dict):
        for child in value.values():
            found = _rows_of(child)
            if found is not None:
                return found
    return None


def _cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, dict | list):
        return orjson.dumps(value).decode()
    return str(value)


def _flatten(value: Any, prefix: str = "") -> Iterator[tuple[str, str]]:
    if isinstance(value, dict) and value:
        for key, child in value.items():
            yield from _flatten(child, f"{prefix}.{key}" if prefix else str(key))
    elif isinstance(value, list) and value:
        for index, child in enumerate(value):
            yield from _flatten(child, f"{prefix}.{index}" if prefix else str(index))
    else:
        yield prefix, _cell(value)


def from_json(value: Any) -> str:
    """CSV text for a JSON value: its rows with a header, else ``key,value`` pairs."""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\r\n")  # RFC 4180 §2: CRLF line breaks
    rows = _rows_of(value)
    if rows is not None:
        header = list(dict.fromkeys(key for row in rows for key in row))
        writer.writerow(header)
        for row in rows:
            writer.writerow([_cell(row.get(key)) for key in header])
    else:
        writer.writerow(["key", "value"])
        writer.writerows(_flatten(value))
    return out.getvalue()
