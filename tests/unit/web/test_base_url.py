"""The base URL written into responses (RetrieveURL, BulkDataURI, Warning)."""

from __future__ import annotations

from typing import Any

import pytest

from dicomweb_server.web.context import base_url


def scope(host: str | None, server: tuple[str, int] | None = ("127.0.0.1", 8080), **extra: Any) -> dict:
    headers = [(b"host", host.encode())] if host is not None else []
    return {"type": "http", "headers": headers, "server": server, "scheme": "http", **extra}


@pytest.mark.parametrize(
    ("host", "server", "want"),
    [
        ("127.0.0.1:8080", ("127.0.0.1", 8080), "http://127.0.0.1:8080"),
        # dicomweb-client drops the port from Host: our own address gets the socket's port back.
        ("127.0.0.1", ("127.0.0.1", 8080), "http://127.0.0.1:8080"),
        ("127.0.0.1", ("127.0.0.1", 80), "http://127.0.0.1"),
        # A proxy's public name is kept as given.
        ("pacs.example.org", ("127.0.0.1", 8080), "http://pacs.example.org"),
        ("[::1]:8080", ("::1", 8080), "http://[::1]:8080"),
        (None, None, "http://localhost"),
    ],
)
def test_base_url_from_host(host: str | None, server: tuple[str, int] | None, want: str) -> None:
    assert base_url(scope(host, server), None) == want


def test_public_base_url_wins_and_root_path_is_kept() -> None:
    assert base_url(scope("x"), "https://pacs.example.org/api") == "https://pacs.example.org/api"
    assert base_url(scope("h:1", root_path="/prefix"), None) == "http://h:1/prefix"
