"""Orthanc targets: SQLite index (default) or PostgreSQL index (private pgserver instance)."""

from __future__ import annotations

import json
import os
import subprocess
import warnings
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlparse

import httpx

from bench.harness.procs import ManagedProcess, TargetUnavailable, free_port, http_ok, terminate_leftovers
from bench.harness.target import Endpoint, Target

ORTHANC = "/usr/sbin/Orthanc"
PLUGIN_DIR = Path("/usr/share/orthanc/plugins")
DICOMWEB_PLUGIN = PLUGIN_DIR / "libOrthancDicomWeb.so"
PG_INDEX_PLUGIN = PLUGIN_DIR / "libOrthancPostgreSQLIndex.so"


def orthanc_version() -> str:
    try:
        out = subprocess.run([ORTHANC, "--version"], capture_output=True, text=True, timeout=10).stdout
    except OSError:
        return "not installed"
    return out.splitlines()[0].strip() if out else "unknown"


class OrthancTarget(Target):
    def __init__(self, postgres: bool, index_connections: int = 1) -> None:
        self.postgres = postgres
        self.index_connections = index_connections
        self.name = "orthanc-postgresql" if postgres else "orthanc-sqlite"
        self._proc: ManagedProcess | None = None
        self._pg: Any = None
        self._workdir: Path | None = None
        self._base = ""

    def _config(self, workdir: Path, http_port: int, dicom_port: int) -> dict[str, Any]:
        plugins = [str(DICOMWEB_PLUGIN)]
        config: dict[str, Any] = {
            "Name": f"bench-{self.name}",
            "StorageDirectory": str(workdir / "storage"),
            "IndexDirectory": str(workdir / "index"),
            "HttpPort": http_port,
            "DicomPort": dicom_port,
            "RemoteAccessAllowed": True,  # it is alone in a loopback-only network namespace
            "AuthenticationEnabled": False,
            "SaveJobs": False,
            "Plugins": plugins,
            "DicomWeb": {"Enable": True, "Root": "/dicom-web/", "EnableWado": False},
        }
        if self.postgres:
            plugins.append(str(PG_INDEX_PLUGIN))
            config["PostgreSQL"] = {
                "EnableIndex": True,
                "EnableStorage": False,
                "ConnectionUri": self._pg_uri(workdir),
                "Lock": False,
                "EnableSsl": False,
                "IndexConnectionsCount": self.index_connections,
            }
        return config

    def _pg_uri(self, workdir: Path) -> str:
        with warnings.catch_warnings():  # platformdirs complains that XDG_RUNTIME_DIR is unset
            warnings.simplefilter("ignore")
            from pgserver import postgres_server  # heavy import; only this target needs it

        pgdata = workdir / "pg"
        self._pg = postgres_server.get_server(pgdata, cleanup_mode="stop")
        uri: str = self._pg.get_uri()
        socket_dir = parse_qs(urlparse(uri).query)["host"][0]
        return f"postgresql://postgres@/postgres?host={socket_dir}"

    def start(self, workdir: Path, log_dir: Path) -> Endpoint:
        for path in (DICOMWEB_PLUGIN, *([PG_INDEX_PLUGIN] if self.postgres else [])):
            if not path.exists():
                raise TargetUnavailable(f"{self.name}: plugin {path} missing")
        if not Path(ORTHANC).exists():
            raise TargetUnavailable(f"{self.name}: {ORTHANC} missing (apt-get install orthanc)")
        self._workdir = workdir
        http_port, dicom_port = free_port(), free_port()
        while dicom_port == http_port:
            dicom_port = free_port()
        config_path = workdir / "orthanc.json"
        config_path.write_text(json.dumps(self._config(workdir, http_port, dicom_port), indent=2))
        self._base = f"http://127.0.0.1:{http_port}"
        self._proc = ManagedProcess(
            self.name, [ORTHANC, str(config_path)], log_dir / f"{self.name}.log", env=dict(os.environ)
        )
        self._proc.wait_ready(http_ok(f"{self._base}/system"), timeout=120)
        notes = self._check_plugins()
        root = f"{self._base}/dicom-web"
        return Endpoint(
            self.name, self._base, root, self._proc.pid, workdir, self._proc.log_path, notes=notes
        )

    def _check_plugins(self) -> dict[str, str]:
        """Fail loudly rather than benchmark a misconfigured Orthanc (e.g. silently on SQLite)."""
        system = httpx.get(f"{self._base}/system", timeout=10).json()
        plugins = httpx.get(f"{self._base}/plugins", timeout=10).json()
        if "dicom-web" not in plugins:
            raise TargetUnavailable(f"{self.name}: DICOMweb plugin not loaded (plugins: {plugins})")
        notes = {
            "orthanc": str(system.get("Version")),
            "dicomweb-plugin": httpx.get(f"{self._base}/plugins/dicom-web", timeout=10).json()["Version"],
        }
        backend = system.get("DatabaseBackendPlugin")
        if self.postgres:
            if not backend or "postgresql-index" not in plugins:
                raise TargetUnavailable(f"{self.name}: PostgreSQL index not active (backend={backend})")
            pg = httpx.get(f"{self._base}/plugins/postgresql-index", timeout=10).json()
            notes["postgresql-plugin"] = str(pg.get("Version"))
            notes["IndexConnectionsCount"] = str(self.index_connections)
        elif backend:
            raise TargetUnavailable(f"{self.name}: unexpected database plugin {backend}")
        return notes

    def stored_instances(self) -> int | None:
        stats = httpx.get(f"{self._base}/statistics", timeout=60).json()
        return int(stats["CountInstances"])

    def stop(self) -> None:
        if self._proc is not None:
            self._proc.stop()
            self._proc = None
        if self._pg is not None:
            self._pg.cleanup()
            self._pg = None
        if self._workdir is not None:
            terminate_leftovers(self._workdir, self.name)
