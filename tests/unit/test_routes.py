"""openapi/openapi.json describes exactly the routes the app serves."""

from __future__ import annotations

import json
import re
from functools import partial
from pathlib import Path

from starlette.routing import Mount, Route

from dicomweb_server.dicom.query import Resource
from dicomweb_server.dicom.resources import Level
from dicomweb_server.routes import API, ROUTES

SPEC = json.loads((Path(__file__).resolve().parents[2] / "openapi" / "openapi.json").read_text())


def served() -> set[tuple[str, str]]:
    pairs = set()
    for route in ROUTES:
        if isinstance(route, Mount):  # the API page's static assets (Swagger UI's files)
            continue
        assert isinstance(route, Route)
        for method in route.methods or ():
            if method != "HEAD":
                # Starlette's convertor suffix ({path:path}) is not part of an OpenAPI template.
                pairs.add((re.sub(r"{(\w+):\w+}", r"{\1}", route.path), method.lower()))
    return pairs


def documented() -> set[tuple[str, str]]:
    return {(path, method) for path, ops in SPEC["paths"].items() for method in ops}


def test_every_route_is_documented_and_nothing_else() -> None:
    assert served() == documented()


def test_path_parameters_match_the_template() -> None:
    for path, ops in SPEC["paths"].items():
        names = set(re.findall(r"{(\w+)}", path))
        for op in ops.values():
            declared = {p["name"] for p in op.get("parameters", []) if p["in"] == "path"}
            assert declared == names, path
            assert op["responses"], path
            assert op["operationId"]


def test_spec_is_openapi_3_1() -> None:
    assert SPEC["openapi"].startswith("3.1")


def test_routes_accept_the_levels_of_table_10_6_1_4() -> None:
    def resource(level: Level, *accepts: Level) -> Resource:
        return Resource(level, frozenset(accepts))

    searches = {
        path: handler.keywords["resource"]
        for path, _, handler, _ in API
        if isinstance(handler, partial) and "resource" in handler.keywords
    }
    assert searches == {
        "/dicomweb/studies": resource(Level.STUDY, Level.STUDY),
        "/dicomweb/series": resource(Level.SERIES, Level.STUDY, Level.SERIES),
        "/dicomweb/instances": resource(Level.INSTANCE, *Level),
        "/dicomweb/studies/{study}/series": resource(Level.SERIES, Level.SERIES),
        "/dicomweb/studies/{study}/instances": resource(Level.INSTANCE, Level.SERIES, Level.INSTANCE),
        "/dicomweb/studies/{study}/series/{series}/instances": resource(Level.INSTANCE, Level.INSTANCE),
    }
