"""A new user's first start: `serve` as `make run` starts it (embedded PostgreSQL, development
client), the printed walk-through pasted into bash, the CLI from another folder, then Ctrl-C.

The tests share one server process and run in this file's order; the last one stops it.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from pydicom.data import get_testdata_file

from dicomweb_server import cli
from tests.conftest import ROOT, free_port

END = "# This walk-through is kept in"
CHATTER = ("pgserver", "alembic", "initdb", "Uvicorn running", "setup plugin", "Traceback")


@dataclass
class FirstStart:
    process: subprocess.Popen[bytes]
    data: Path
    out: Path
    err: Path
    env: dict[str, str]

    def output(self) -> str:
        return self.out.read_text() + self.err.read_text()


def _env(**extra: str) -> dict[str, str]:
    """The caller's environment without any of our settings (a new user has none)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DICOMWEB_", "DATABASE_URL", "S3_"))}
    return {**env, **extra}


@pytest.fixture(scope="module")
def first(tmp_path_factory: pytest.TempPathFactory) -> Iterator[FirstStart]:
    base = tmp_path_factory.mktemp("first-start")
    data, out, err = base / "data", base / "stdout.txt", base / "stderr.txt"
    env = _env(DICOMWEB_DATA_DIR=str(data), DICOMWEB_GC_INTERVAL_SECONDS="0")
    port = free_port()
    with open(out, "wb") as o, open(err, "wb") as e:
        process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "dicomweb_server.cli",
                "serve",
                "--host",
                "127.0.0.1",
                "--port",
                str(port),
            ],
            env=env,
            cwd=ROOT,
            stdout=o,
            stderr=e,
            start_new_session=True,  # its own process group, as a terminal's foreground job
        )
    started = FirstStart(process, data, out, err, env)
    try:
        deadline = time.monotonic() + 120
        while END not in out.read_text():
            assert process.poll() is None, started.output()[-3000:]
            assert time.monotonic() < deadline, started.output()[-3000:]
            time.sleep(0.2)
        yield started
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(timeout=30)


def _walkthrough(first: FirstStart) -> str:
    text = first.out.read_text()
    return text[text.index("# DICOMweb server ready at") :]


def test_the_walkthrough_is_printed_last_without_library_chatter(first: FirstStart) -> None:
    text = first.out.read_text()
    assert text.rstrip().splitlines()[-1].startswith(END)  # nothing after it on stdout
    for noise in CHATTER:
        assert noise not in first.output(), noise
    secret_file = first.data / "dev-client.json"
    assert f"its secret is in {secret_file}" in text
    assert json.loads(secret_file.read_text())["client_secret"] in text


def test_the_walkthrough_runs_pasted_into_bash(first: FirstStart, tmp_path: Path) -> None:
    for paste in (1, 2):  # pasted again, it works again (a fresh study for the order part)
        done = subprocess.run(
            ["bash", "-e", "-o", "pipefail"],
            input=_walkthrough(first),
            cwd=tmp_path,
            env=_env(),
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert done.returncode == 0, f"paste {paste}: " + done.stdout[-2000:] + done.stderr[-2000:]
        assert "warning: here-document" not in done.stderr
        assert "round trip ok: True" in done.stdout
        original = Path(str(get_testdata_file("CT_small.dcm"))).read_bytes()
        assert (tmp_path / "back.dcm").read_bytes()[128:] == original[128:]
        assert (tmp_path / "image.jpg").read_bytes()[:2] == b"\xff\xd8"
        # The order part: the job's token read its study, the report came back whole, delivered.
        assert "job token, its study: 200" in done.stdout
        assert "the report's PDF came back byte for byte" in done.stdout
        order = json.loads((tmp_path / "order.json").read_text())
        assert order["status"] == "delivered" and len(order["reports"]) == 1
        assert "1.2.840.10008.5.1.4.1.1.104.1" in done.stdout  # its Encapsulated PDF, found by QIDO-RS


def _cli(*args: str, cwd: Path, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "dicomweb_server.cli", *args],
        env=_env(PYTHONPATH=str(ROOT), **env),
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_the_cli_from_another_folder_finds_the_data_or_refuses(first: FirstStart, tmp_path: Path) -> None:
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    listed = _cli("tenants", "list", cwd=elsewhere, DICOMWEB_DATA_DIR=str(first.data))
    assert listed.returncode == 0, listed.stderr
    assert "dev" in [t["id"] for t in json.loads(listed.stdout)]
    missing = tmp_path / "no-such-data"
    refused = _cli("clients", "list", cwd=elsewhere, DICOMWEB_DATA_DIR=str(missing))
    assert refused.returncode == 2
    assert "DICOMWEB_DATA_DIR" in refused.stderr and "DATABASE_URL" in refused.stderr
    assert len(refused.stderr.strip().splitlines()) == 1
    assert not missing.exists()
    # Without DICOMWEB_DATA_DIR: the project's .data (as `make run`), never a new ./.data here.
    anywhere = _cli("tenants", "list", cwd=elsewhere)
    assert anywhere.returncode in (0, 2), anywhere.stderr
    assert not (elsewhere / ".data").exists()


def test_cli_mistakes_are_one_line_errors(first: FirstStart, tmp_path: Path) -> None:
    env = {"DICOMWEB_DATA_DIR": str(first.data)}
    for args in (
        ("clients", "create"),
        ("clients", "create", "--tenant", "no-such-tenant"),
        ("clients", "create", "--tenant", "Not A Tenant!"),
        ("clients", "disable"),
        ("tenants", "create", "Not A Valid Tenant!"),
        ("clients", "create", "--tenant", "dev", "--rate-requests", "-5"),
        ("clients", "create", "--tenant", "dev", "--rate-bytes=-1"),
        ("clients", "create", "--tenant", "dev", "--rate-requests", "99999999999999999999"),
    ):
        done = _cli(*args, cwd=tmp_path, **env)
        assert done.returncode == 2, (args, done.stderr)
        assert "Traceback" not in done.stderr, args
        (line,) = done.stderr.strip().splitlines()
        assert line.startswith("dicomweb-server: error: "), line


def test_a_setting_out_of_range_is_a_one_line_error_naming_it(first: FirstStart, tmp_path: Path) -> None:
    for name, value in (("DICOMWEB_RATE_REQUESTS", "-1"), ("DICOMWEB_RATE_BYTES", "x")):
        done = _cli("tenants", "list", cwd=tmp_path, DICOMWEB_DATA_DIR=str(first.data), **{name: value})
        assert done.returncode == 2, done.stderr
        (line,) = done.stderr.strip().splitlines()
        assert line.startswith("dicomweb-server: error: ") and name in line, line


def test_clients_create_prints_json_on_stdout_and_the_warning_on_stderr(
    first: FirstStart, tmp_path: Path
) -> None:
    done = _cli("clients", "create", "--tenant", "dev", cwd=tmp_path, DICOMWEB_DATA_DIR=str(first.data))
    assert done.returncode == 0, done.stderr
    created = json.loads(done.stdout)  # the whole of stdout is one JSON document (jq reads it)
    assert created["tenant"] == "dev" and created["client_secret"]
    assert "shown only now" in done.stderr


def test_every_option_of_every_command_has_a_help_text() -> None:
    parser = cli._parsers()
    (sub,) = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    assert set(sub.choices) == {"serve", "migrate", "init", "keys", "tenants", "clients", "gc"}
    for name, command in sub.choices.items():
        for action in command._actions:
            if not isinstance(action, argparse._HelpAction):
                assert action.help, f"{name} {action.dest}"
    done = _cli("clients", "--help", cwd=ROOT)
    assert done.returncode == 0
    assert "the client's tenant" in done.stdout


def test_ctrl_c_stops_quietly(first: FirstStart) -> None:
    """Last: a terminal's Ctrl-C signals the whole foreground process group."""
    os.killpg(first.process.pid, signal.SIGINT)
    assert first.process.wait(timeout=60) in (0, 130)
    output = first.output()
    assert "Traceback" not in output, output[-3000:]
    assert "KeyboardInterrupt" not in output
