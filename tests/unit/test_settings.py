"""Settings.from_env: the one reader of the environment validates what the command line reads too."""

from __future__ import annotations

from pathlib import Path

import pytest

from dicomweb_server.settings import Settings


def test_the_serve_settings_come_from_the_environment() -> None:
    env = {
        "DICOMWEB_HOST": "0.0.0.0",
        "DICOMWEB_PORT": "9090",
        "DICOMWEB_WORKERS": "4",
        "DICOMWEB_LOG_LEVEL": "WARNING",
        "DICOMWEB_TRUSTED_PROXIES": "10.0.0.1",
    }
    s = Settings.from_env(env)
    assert (s.host, s.port, s.workers, s.log_level, s.trusted_proxies) == (
        "0.0.0.0",
        9090,
        4,
        "WARNING",
        "10.0.0.1",
    )
    d = Settings.from_env({})
    assert (d.host, d.port, d.workers, d.log_level, d.trusted_proxies) == ("127.0.0.1", 8080, 1, None, None)


@pytest.mark.parametrize(("name", "value"), [("DICOMWEB_PORT", "70000"), ("DICOMWEB_WORKERS", "two")])
def test_a_bad_value_is_an_error_naming_its_variable(name: str, value: str) -> None:
    with pytest.raises(ValueError, match=name):
        Settings.from_env({name: value})


def test_the_command_lines_data_folder_is_the_default_and_absolute(tmp_path: Path) -> None:
    default = tmp_path / "a" / ".." / ".data"
    s = Settings.from_env({}, data_dir_default=default)
    assert s.data_dir == (tmp_path / ".data").resolve()
    assert s.storage_path == s.data_dir / "objects"
    given = Settings.from_env({"DICOMWEB_DATA_DIR": str(tmp_path / "x")}, data_dir_default=default)
    assert given.data_dir == (tmp_path / "x").resolve()
