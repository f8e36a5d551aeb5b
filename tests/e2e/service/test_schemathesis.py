"""Schemathesis over every operation of openapi/openapi.json, against the ASGI app in this process.

Each operation gets a bounded, deterministic set of generated requests (valid and invalid inputs),
sent with a real bearer token of a client that has every scope.  Every response must be no 5xx and
must conform to the document: a documented status code and content type, a body matching its schema.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import schemathesis
from schemathesis.checks import not_a_server_error
from schemathesis.python.asgi import shutdown_lifespans
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from dicomweb_server.app import create_app
from tests.conftest import bearer, make_settings, token_for

# A test artefact, not a server fault: the app's lifespan runs in schemathesis' own event-loop
# thread, where pgqueuer's consumer loops draw their poll jitter from the ``random`` module
# (pgqueuer/core/qm.py, buffers.py) while Hypothesis generates the next case in this thread.
# Hypothesis sees the shared generator move during generation and warns that a strategy used
# ``random``; no strategy does (our own code draws keys from ``secrets``, storage/base.py).
pytestmark = pytest.mark.filterwarnings(
    "ignore:Do not use the `random` module inside strategies:hypothesis.errors.HypothesisDeprecationWarning"
)

SPEC = json.loads((Path(__file__).resolve().parents[3] / "openapi" / "openapi.json").read_text())
CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance, response_schema_conformance]
MAX_EXAMPLES = int(os.environ.get("SCHEMATHESIS_MAX_EXAMPLES", "25"))  # more for a longer hunt


CONFIG = schemathesis.Config.from_dict(
    {
        "seed": 20261203,
        "generation": {
            "max-examples": MAX_EXAMPLES,
            "deterministic": True,
            "no-shrink": True,
            "mode": "all",
            "database": "none",
        },
    }
)
schema = schemathesis.openapi.from_dict(SPEC, config=CONFIG)
# STOW bodies are bytes as generated (most are not DICOM: each must get a clean 4xx or a failure entry).
schemathesis.serializer.alias(["application/dicom", "multipart/related"], "application/octet-stream")
# A completion's parts (POST /api/v1/jobs/{job}/complete) declare their media types in the form's
# encoding; schemathesis has no serializer for PDF or CSV parts: they go as the bytes generated.
schemathesis.serializer.alias(["application/pdf", "text/csv"], "application/octet-stream")


@pytest.fixture(scope="module")
def app(database_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    """One app for the module; schemathesis runs its lifespan in its own event loop thread."""
    settings = make_settings(
        database_url,
        tmp_path_factory.mktemp("schemathesis") / "objects",
        access=dict(rate_requests=10**9, rate_bytes=2**62),
    )
    app = create_app(settings)
    yield app
    shutdown_lifespans()


@pytest.fixture(autouse=True)
def _clients(db: object) -> None:
    """The test tenants and clients exist (the ``db`` fixture creates them)."""


LONGEST_WAIT = 0.2  # seconds: the change feed's long poll may wait 30, the client gives up after 10


def _short_wait(case: schemathesis.Case) -> None:
    """Keep a generated, valid ``wait`` of GET /api/v1/events short (invalid ones stay as made)."""
    if case.path != "/api/v1/events" or not isinstance(case.query, dict):
        return
    try:
        wait = float(case.query.get("wait", 0))
    except (TypeError, ValueError):
        return
    if wait > LONGEST_WAIT and wait <= 30:
        case.query["wait"] = LONGEST_WAIT


@schema.parametrize()
def test_every_operation_conforms_and_never_fails(case: schemathesis.Case, app: Any) -> None:
    _short_wait(case)
    case.call_and_validate(app=app, headers=bearer(token_for()), checks=CHECKS)
