"""`pip install .` as a user gets it: the wheel, built from this tree and installed into a
new virtual environment (no site packages of this one, no source tree on the path), has the
SQL files, the migrations, the dashboard's assets and py.typed; its `aggjobs --version` and
`aggjobs.__version__` agree; it migrates and loads a day of demo data on the embedded
PostgreSQL. The C functions' sources are in it (`aggjobs up` compiles them for its embedded
server, docs/native.md), not their build.

Needs the package index pip is configured with (the build's setuptools and the
dependencies are installed from it, as `pip install .` does): marked `packaging`. Runs in the
embedded server's run of the suite only (CI's other run, on AGGJOBS_TEST_DATABASE_URL, would
only repeat it).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from collections.abc import Iterator
from pathlib import Path

import pytest

import aggjobs

pytestmark = [
    pytest.mark.packaging, pytest.mark.slow,
    pytest.mark.skipif(bool(os.environ.get("AGGJOBS_TEST_DATABASE_URL")),
                       reason="the wheel runs on the embedded server: its run of the suite"),
]

ROOT = Path(__file__).resolve().parents[2]
PACKAGE = ROOT / "src" / "aggjobs"
BUILT = (".o", ".so", ".bc")  # what `make native` leaves in the package's native/


def run(argv: list[str], *, env: dict[str, str] | None = None, cwd: Path | None = None,
        timeout: float = 300) -> str:
    done = subprocess.run(argv, env=env, cwd=cwd, capture_output=True, text=True,
                          timeout=timeout)
    assert done.returncode == 0, f"{argv} exited {done.returncode}:\n{done.stdout}\n{done.stderr}"
    return done.stdout


@pytest.fixture(scope="module")
def short_dir() -> Iterator[Path]:
    """A short directory (the embedded servers' sockets live under it), removed after."""
    path = Path(tempfile.mkdtemp(prefix="agjw"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture(scope="module")
def wheel(short_dir: Path) -> Path:
    # Built from a copy of what the sdist would hold, so that the build's files (build/,
    # *.egg-info) never land in the tree. pip's own build isolation: the build backend
    # pyproject.toml asks for (setuptools >= 77, for the license expression) comes from the
    # configured index, as with `pip install .`.
    tree = short_dir / "tree"
    shutil.copytree(PACKAGE, tree / "src" / "aggjobs",
                    ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(ROOT / name, tree / name)
    run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--quiet", "-w",
         str(short_dir / "dist"), str(tree)])
    (built,) = (short_dir / "dist").glob("aggjobs-*.whl")
    return built


@pytest.fixture(scope="module")
def venv(wheel: Path, short_dir: Path) -> Path:
    target = short_dir / "venv"
    env = clean_env(short_dir / "data")  # no PYTHONPATH: pip would take the tree for it
    run([sys.executable, "-m", "venv", str(target)], env=env)
    run([str(target / "bin" / "python"), "-m", "pip", "install", "--quiet", str(wheel)],
        env=env, timeout=600)
    return target


def clean_env(data_dir: Path) -> dict[str, str]:
    """This environment without aggjobs' variables and the source tree on the path."""
    env = {k: v for k, v in os.environ.items()
           if not k.startswith("AGGJOBS_") and k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    return {**env, "AGGJOBS_DATA_DIR": str(data_dir)}


def test_the_wheel_has_the_data_files(wheel: Path) -> None:
    names = set(zipfile.ZipFile(wheel).namelist())
    data = sorted(str(f.relative_to(PACKAGE.parent)) for f in PACKAGE.rglob("*")
                  if f.is_file() and f.suffix not in (".py", ".pyc", *BUILT)
                  and not f.name.startswith("."))
    assert [f for f in data if f not in names] == []
    assert {"aggjobs/py.typed", "aggjobs/db/migrations/0001_initial.sql",
            "aggjobs/api/dashboard.html", "aggjobs/api/dashboard.js"} <= names
    assert wheel.name.startswith(f"aggjobs-{aggjobs.__version__}-")
    assert {"aggjobs/native/aggjobs_native.c", "aggjobs/native/aggjobs_native.control",
            "aggjobs/native/Makefile"} <= names
    assert not any(n.endswith(BUILT) for n in names)


def test_the_installed_wheel_migrates_and_loads_a_demo_day(venv: Path, short_dir: Path) -> None:
    env = clean_env(short_dir / "data")
    bin_dir = venv / "bin"
    where = run([str(bin_dir / "python"), "-c",
                 "import aggjobs; print(aggjobs.__file__); print(aggjobs.__version__)"],
                env=env, cwd=short_dir).split()
    assert where[0].startswith(str(venv)), where  # the installed package, not the tree
    assert run([str(bin_dir / "aggjobs"), "--version"], env=env,
               cwd=short_dir).strip() == f"aggjobs {where[1]}"
    # `aggjobs up` would compile the C functions from the wheel's own copy of their sources.
    found = run([str(bin_dir / "python"), "-c",
                 "from aggjobs.db import embedded_native as e; t = e.toolchain();"
                 " print(t if isinstance(t, str) else t.sources)"], env=env, cwd=short_dir)
    if shutil.which("cc") or shutil.which("gcc"):
        assert found.strip().startswith(str(venv)), found
    try:
        run([str(bin_dir / "aggjobs"), "migrate"], env=env, cwd=short_dir)
        out = run([str(bin_dir / "aggjobs"), "demo", "--days", "1"], env=env, cwd=short_dir)
        assert out.strip(), out
    finally:
        subprocess.run([str(bin_dir / "aggjobs"), "db", "stop"], env=env, cwd=short_dir,
                       capture_output=True, timeout=120)
