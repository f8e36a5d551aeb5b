"""The wheel ships every subpackage: built from this checkout, installed apart from it, every module imports.

``[tool.setuptools] packages = [...]`` listed the top package only; once the code moved into
subpackages a wheel built that way would have held ``dicomweb_server/__init__.py`` and little else,
while the editable install used in development kept working.  So the wheel is built for real
(``pip wheel``, isolated build as a packager would run it), installed by pip into a folder of its own
(``--target``; the dependencies are the test environment's), and a fresh interpreter imports every
module from that folder, never from the checkout or its editable install.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

from tests.conftest import ROOT

PACKAGE = ROOT / "dicomweb_server"


def _modules() -> list[str]:
    names = []
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = path.relative_to(ROOT).with_suffix("").parts
        names.append(".".join(parts[:-1] if parts[-1] == "__init__" else parts))
    return names


def test_the_wheel_holds_and_imports_every_module(tmp_path: Path) -> None:
    # Built from a copy: setuptools keeps build/ and *.egg-info beside the sources, and files left there
    # by an earlier build would be packed again whatever the configuration says.
    source = tmp_path / "source"
    source.mkdir()
    shutil.copy(ROOT / "pyproject.toml", source)
    shutil.copytree(PACKAGE, source / PACKAGE.name, ignore=shutil.ignore_patterns("__pycache__"))
    built = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(tmp_path / "dist"), str(source)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert built.returncode == 0, built.stderr
    (wheel,) = (tmp_path / "dist").glob("dicomweb_server-*.whl")
    with zipfile.ZipFile(wheel) as archive:
        shipped = {name for name in archive.namelist() if name.endswith(".py")}
    site = tmp_path / "site"
    installed = subprocess.run(
        [sys.executable, "-m", "pip", "install", "--no-deps", "-q", "--target", str(site), wheel],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert installed.returncode == 0, installed.stderr
    sources = {str(p.relative_to(ROOT)) for p in PACKAGE.rglob("*.py")}
    assert sources - shipped == set(), "source files missing from the wheel"

    modules = _modules()
    assert any(name.count(".") >= 2 for name in modules)  # the subpackages are really there
    script = (
        "import importlib, sys\n"
        f"for name in {modules!r}:\n"
        "    module = importlib.import_module(name)\n"
        "    assert module.__file__.startswith(sys.argv[1]), (name, module.__file__)\n"
        "print(len(sys.modules))\n"
    )
    # -P: the working directory is not put first on sys.path by a -c script, so the unpacked wheel,
    # not this checkout (or its editable install), must provide every module.
    ran = subprocess.run(
        [sys.executable, "-P", "-c", script, str(site)],
        cwd=tmp_path,
        env={"PYTHONPATH": str(site), "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert ran.returncode == 0, ran.stderr
