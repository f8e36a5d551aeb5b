"""The container's first start without a container: deploy/entrypoint.sh run as a plain process
creates the signing keys, serves, and the README's bootstrap of the first tenant and client works.
docker-compose.yml and the Dockerfile are checked to agree with it."""

from __future__ import annotations

import json
import os
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path

import asyncpg
import httpx
import yaml

from tests.conftest import ROOT, free_port

ENTRYPOINT = ROOT / "deploy" / "entrypoint.sh"


def _env(database_url: str, data: Path, port: int) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DICOMWEB_", "S3_"))}
    return {
        **env,
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}",
        "PYTHONPATH": str(ROOT),
        "DATABASE_URL": database_url,
        "DICOMWEB_DATA_DIR": str(data),
        "DICOMWEB_SIGNING_KEYS": str(data / "keys" / "jwks.json"),  # as the Dockerfile sets it
        "DICOMWEB_HOST": "127.0.0.1",  # the image listens on 0.0.0.0; a test stays on loopback
        "DICOMWEB_PORT": str(port),
        "DICOMWEB_WORKERS": "1",
        "DICOMWEB_GC_INTERVAL_SECONDS": "0",
        "DICOMWEB_PUBLIC_BASE_URL": f"http://127.0.0.1:{port}",
    }


def _entrypoint(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["sh", str(ENTRYPOINT), *args], env=env, cwd="/", capture_output=True, text=True, timeout=120
    )


def _serve(env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    with open(log, "ab") as out:
        process = subprocess.Popen(["sh", str(ENTRYPOINT)], env=env, cwd="/", stdout=out, stderr=out)
    url = f"http://127.0.0.1:{env['DICOMWEB_PORT']}/readyz"
    deadline = time.monotonic() + 60
    while True:
        assert process.poll() is None, log.read_text()[-3000:]
        assert time.monotonic() < deadline, log.read_text()[-3000:]
        try:
            if httpx.get(url, timeout=2).status_code == 200:
                return process
        except httpx.HTTPError:
            pass
        time.sleep(0.2)


def _stop(process: subprocess.Popen[bytes]) -> int:
    process.send_signal(signal.SIGTERM)  # docker stop
    return process.wait(timeout=30)


def test_first_start_creates_keys_and_the_documented_bootstrap_works(
    db: asyncpg.Pool, database_url: str, tmp_path: Path
) -> None:
    data, port = tmp_path / "volume", free_port()
    env = _env(database_url, data, port)
    server = _serve(env, tmp_path / "server.log")
    try:
        keys = data / "keys" / "jwks.json"
        assert stat.S_IMODE(keys.stat().st_mode) == 0o600
        first_keys = keys.read_bytes()
        # README "Docker": the first tenant and client, with the entrypoint's sub-command form.
        tenant = _entrypoint(env, "tenants", "create", "hospital", "--name", "Hospital")
        assert tenant.returncode == 0, tenant.stderr
        created = _entrypoint(env, "clients", "create", "--tenant", "hospital", "--scopes", "dicomweb.read")
        assert created.returncode == 0, created.stderr
        client = json.loads(created.stdout.strip().splitlines()[-1])
        base = f"http://127.0.0.1:{port}"
        token = httpx.post(
            base + "/oauth/token",
            data={"grant_type": "client_credentials"},
            auth=(client["client_id"], client["client_secret"]),
        )
        assert token.status_code == 200, token.text
        search = httpx.get(
            base + "/dicomweb/studies", headers={"Authorization": "Bearer " + token.json()["access_token"]}
        )
        assert search.status_code == 200 and search.json() == []
    finally:
        assert _stop(server) == 0
    server = _serve(env, tmp_path / "server.log")  # a restart keeps the keys (and the tokens valid)
    try:
        assert keys.read_bytes() == first_keys
    finally:
        _stop(server)


def test_the_compose_file_and_the_image_agree_with_the_entrypoint() -> None:
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    app = compose["services"]["app"]
    env = app["environment"]
    keys = Path(env["DICOMWEB_SIGNING_KEYS"])
    (volume,) = [v for v in app["volumes"] if v.startswith("appdata:")]
    mount = Path(volume.split(":", 1)[1])
    assert mount in keys.parents  # the keys the first start creates outlive the container
    assert keys != mount / "signing-keys.json"  # that name is the refused development key file
    assert "appdata" in compose["volumes"]
    assert all(p.startswith("127.0.0.1:") for p in app["ports"])  # not published beyond the host
    dockerfile = (ROOT / "Dockerfile").read_text()
    assert 'ENTRYPOINT ["dicomweb-entrypoint"]' in dockerfile
    assert "COPY deploy/entrypoint.sh /usr/local/bin/dicomweb-entrypoint" in dockerfile
    assert f"DICOMWEB_DATA_DIR={mount}" in dockerfile
    assert ENTRYPOINT.stat().st_mode & stat.S_IXUSR
