"""The package root: `import aggjobs` loads nothing else, the Python API's names resolve on
first use, and the version is one (docs/python.md); the C extension's version is the one
the SQL calls."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

import aggjobs
from aggjobs import python_api
from aggjobs.sql import NATIVE_VERSION


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


def test_the_sql_calls_the_extensions_default_version() -> None:
    control = Path(aggjobs.__file__).parent / "native" / "aggjobs_native.control"
    assert f"default_version = '{NATIVE_VERSION}'" in control.read_text().splitlines()


def test_the_package_is_typed() -> None:
    assert (Path(aggjobs.__file__).parent / "py.typed").is_file()


def test_the_results_are_frozen() -> None:
    """The results of the Python API cannot be changed by its caller (docs/python.md)."""
    from dataclasses import FrozenInstanceError, fields, is_dataclass

    for result in (python_api.RefreshReport, python_api.BackfillReport, python_api.RunResult,
                   python_api.Status, python_api.Mismatch, python_api.DayReport):
        assert is_dataclass(result) and result.__dataclass_params__.frozen, result  # type: ignore[attr-defined]
        assert fields(result)
    report = python_api.RunResult(1, "hourly_rollup", "succeeded")
    with pytest.raises(FrozenInstanceError):
        report.status = "failed"  # type: ignore[misc]
