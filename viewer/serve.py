"""``make viewer``: OHIF Viewer v3 on your own data, against the server ``make run`` is running.

OHIF's prebuilt ``dist/`` (the build ``make viewer-check`` uses, pinned in package.json) is
served on http://127.0.0.1:3000 (``--port``), and the same origin forwards ``/dicomweb/...`` to
the running server (``--server``, default http://127.0.0.1:8080) with a bearer token of the
development client that ``make run`` created (its secret is in the data folder's
``dev-client.json``).  The browser then needs neither CORS nor a token: a signed-in user's OHIF
would get one from its OIDC login.  The server sees the viewer's Host, so the BulkDataURIs and
RetrieveURLs it writes point back through this proxy.

Open the printed URL in your browser; Ctrl-C stops it.
"""

from __future__ import annotations

import argparse
import functools
import http.server
import json
import os
import shutil
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx

VIEWER = Path(__file__).resolve().parent
ROOT = VIEWER.parent
FORWARDED_REQUEST = ("accept", "accept-encoding", "content-type", "content-length", "range", "if-none-match")
HOP_BY_HOP = {"connection", "keep-alive", "transfer-encoding", "te", "trailer", "upgrade"}


class Tokens:
    """The development client's access token, fetched again shortly before it expires."""

    def __init__(self, server: str, secret_file: Path):
        self.server = server
        self.secret_file = secret_file
        self.token = ""
        self.expires = 0.0
        self.lock = threading.Lock()

    def get(self, fresh: bool = False) -> str:
        with self.lock:
            if fresh or time.monotonic() > self.expires - 60:
                saved = json.loads(self.secret_file.read_text())
                answer = httpx.post(
                    self.server + "/oauth/token",
                    data={"grant_type": "client_credentials", "scope": "dicomweb.read"},
                    auth=(saved["client_id"], saved["client_secret"]),
                    timeout=30,
                )
                answer.raise_for_status()
                body = answer.json()
                self.token = str(body["access_token"])
                self.expires = time.monotonic() + float(body.get("expires_in", 300))
            return self.token


def handler_class(
    site: Path, server: str, tokens: Tokens, client: httpx.Client
) -> type[http.server.SimpleHTTPRequestHandler]:
    sys.path.insert(0, str(VIEWER))
    from check import SpaHandler  # the static files as viewer-check serves them

    class Handler(SpaHandler):  # type: ignore[misc,valid-type]
        def do_GET(self) -> None:
            if self.path.startswith("/dicomweb"):
                self.forward()
            else:
                super().do_GET()

        def do_HEAD(self) -> None:
            if self.path.startswith("/dicomweb"):
                self.forward()
            else:
                super().do_HEAD()

        def forward(self) -> None:
            headers = {k: v for k, v in self.headers.items() if k.lower() in FORWARDED_REQUEST}
            headers["Host"] = self.headers.get("Host", "")  # URLs in answers come back through us
            for attempt in (1, 2):
                headers["Authorization"] = "Bearer " + tokens.get(fresh=attempt == 2)
                request = client.build_request(self.command, server + self.path, headers=headers)
                response = client.send(request, stream=True)
                if response.status_code != 401 or attempt == 2:
                    break
                response.close()
            try:
                self.send_response(response.status_code)
                for name, value in response.headers.multi_items():
                    if name.lower() not in HOP_BY_HOP:  # raw bytes: any Content-Encoding stays
                        self.send_header(name, value)
                self.send_header("Connection", "close")
                self.end_headers()
                if self.command != "HEAD":
                    for chunk in response.iter_raw():
                        self.wfile.write(chunk)
            finally:
                response.close()

    return functools.partial(Handler, directory=str(site))  # type: ignore[return-value]


def site_for(dist: Path, work: Path, dicomweb_root: str) -> Path:
    """A copy of dist/ (symlinks) with viewer-check's app-config.js, pointed at ``dicomweb_root``."""
    site = work / "ohif"
    shutil.copytree(dist, site, copy_function=os.symlink)
    (site / "app-config.js").unlink(missing_ok=True)
    config = (VIEWER / "app-config.js").read_text().replace("@DICOMWEB_ROOT@", dicomweb_root)
    (site / "app-config.js").write_text(config.replace("dicomweb-server viewer-check", "dicomweb-server"))
    return site


def data_dir() -> Path:
    """The folder `make run` uses: DICOMWEB_DATA_DIR, else the project's .data."""
    return Path(os.environ.get("DICOMWEB_DATA_DIR") or ROOT / ".data")


class Viewer(http.server.ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, site: Path, port: int, server: str, secret_file: Path):
        tokens = Tokens(server, secret_file)
        tokens.get()  # fail now, with the reason, rather than in the browser
        self.upstream = httpx.Client(timeout=httpx.Timeout(30, read=300))
        super().__init__(("127.0.0.1", port), handler_class(site, server, tokens, self.upstream))

    def server_close(self) -> None:
        super().server_close()
        self.upstream.close()


def serving(site: Path, port: int, server: str, secret_file: Path) -> Viewer:
    return Viewer(site, port, server, secret_file)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--server", default="http://127.0.0.1:8080", help="the running server's base URL")
    parser.add_argument("--port", type=int, default=3000, help="port for OHIF on 127.0.0.1 (default 3000)")
    args = parser.parse_args()
    secret_file = data_dir() / "dev-client.json"
    if not secret_file.exists():
        raise SystemExit(f"{secret_file} is missing: start the server with `make run` first")
    try:
        httpx.get(args.server + "/readyz", timeout=5).raise_for_status()
    except httpx.HTTPError as exc:
        raise SystemExit(f"no server at {args.server} ({exc}): start it with `make run` first") from None
    sys.path.insert(0, str(VIEWER))
    from check import ohif_dist

    dist = ohif_dist()
    with tempfile.TemporaryDirectory(prefix="ohif-") as work:
        origin = f"http://127.0.0.1:{args.port}"
        site = site_for(dist, Path(work), origin + "/dicomweb")
        httpd = serving(site, args.port, args.server.rstrip("/"), secret_file)
        print(f"OHIF Viewer on {origin} (your studies in {args.server}); Ctrl-C stops it", flush=True)
        try:
            httpd.serve_forever()
        except KeyboardInterrupt:
            pass
        finally:
            httpd.server_close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
