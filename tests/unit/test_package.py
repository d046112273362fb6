"""The package root: `import aggjobs` loads nothing else, the Python API's names resolve on
first use, and the version is one (docs/python.md)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

import aggjobs
from aggjobs import python_api


def test_import_aggjobs_loads_nothing_else() -> None:
    code = ("import sys, aggjobs; aggjobs.__version__; "
            "print(sorted(m for m in sys.modules if m.startswith(('aggjobs', 'psycopg', "
            "'celery'))))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True).stdout
    assert out.strip() == "['aggjobs']"


def test_the_python_api_is_at_the_root() -> None:
    for name in aggjobs.__all__:
        if name != "__version__":
            assert getattr(aggjobs, name) is getattr(python_api, name)
    assert set(aggjobs.__all__) <= set(dir(aggjobs))
    with pytest.raises(AttributeError, match="no_such"):
        aggjobs.no_such  # noqa: B018


def test_the_command_and_the_package_agree_on_the_version() -> None:
    command = Path(sys.executable).parent / "aggjobs"
    out = subprocess.run([str(command), "--version"], capture_output=True, text=True,
                         check=True).stdout
    assert out.strip() == f"aggjobs {aggjobs.__version__}"


def test_the_package_is_typed() -> None:
    assert (Path(aggjobs.__file__).parent / "py.typed").is_file()
