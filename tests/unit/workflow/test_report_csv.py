"""CSV made from a report's worker JSON (workflow/report_csv.py)."""

from __future__ import annotations

import csv
import io

from dicomweb_server.workflow.report_csv import from_json


def rows(text: str) -> list[list[str]]:
    return list(csv.reader(io.StringIO(text)))


def test_a_top_level_list_of_objects_is_the_rows_with_the_union_of_keys() -> None:
    text = from_json([{"region": "hippocampus", "volume": 3.5}, {"region": "amygdala", "side": "left"}])
    assert text.endswith("\r\n")
    assert rows(text) == [["region", "volume", "side"], ["hippocampus", "3.5", ""], ["amygdala", "", "left"]]


def test_the_first_list_of_objects_under_a_key() -> None:
    value = {"version": "2", "meta": {"regions": [{"name": "a", "z": -1.5, "flags": [1, 2]}]}}
    assert rows(from_json(value)) == [["name", "z", "flags"], ["a", "-1.5", "[1,2]"]]


def test_otherwise_key_value_with_dotted_paths() -> None:
    value = {"volumes": {"left": 1, "right": None}, "ok": True, "tags": ["x", "y"], "empty": {}}
    assert rows(from_json(value)) == [
        ["key", "value"],
        ["volumes.left", "1"],
        ["volumes.right", ""],
        ["ok", "true"],
        ["tags.0", "x"],
        ["tags.1", "y"],
        ["empty", "{}"],
    ]


def test_commas_and_quotes_are_quoted() -> None:
    assert rows(from_json([{"note": 'a, "b"'}])) == [["note"], ['a, "b"']]
