"""What every benchmark target provides: start/stop, endpoints, and a storage check."""

from __future__ import annotations

import os
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from pathlib import Path

import psutil

from bench.harness.procs import processes_using


@dataclass(frozen=True)
class Endpoint:
    """A running target. ``dicomweb_root`` has no trailing slash (e.g. ``http://127.0.0.1:8042/dicom-web``)."""

    target: str
    base_url: str
    dicomweb_root: str
    app_pid: int
    workdir: Path
    log_path: Path
    stores_dicom: bool = True  # False for the sink, which only counts bytes
    notes: dict[str, str] = field(default_factory=dict)
    headers: dict[str, str] = field(default_factory=dict)  # sent with every request (ours: the bearer token)
    tenant: str = "default"  # the tenant the requests act for (ours: the token's)

    @property
    def stow_url(self) -> str:
        return f"{self.dicomweb_root}/studies"

    def aux_roots(self) -> list[int]:
        """Side processes working in this target's directory (its PostgreSQL, object store, ...)."""
        me = psutil.Process()
        return processes_using(self.workdir, exclude={me.pid, self.app_pid, *(p.pid for p in me.parents())})


class Target(ABC):
    name: str

    @abstractmethod
    def start(self, workdir: Path, log_dir: Path) -> Endpoint:
        """Start in a fresh ``workdir``; raise ``TargetUnavailable`` if it cannot run."""

    @abstractmethod
    def stop(self) -> None:
        """Stop everything ``start`` launched; must be safe to call after a failed start."""

    def stored_instances(self) -> int | None:
        """Instances the server reports as stored, or None when it cannot tell."""
        return None


def disk_usage(path: Path) -> int:
    """Allocated bytes under ``path`` (like ``du``), ignoring files that vanish meanwhile."""
    total = 0
    for root, _dirs, files in os.walk(path):
        for name in files:
            try:
                total += os.lstat(os.path.join(root, name)).st_blocks * 512
            except OSError:
                continue
    return total
