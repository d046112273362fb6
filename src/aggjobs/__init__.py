"""aggjobs: scheduled, incremental, self-healing analytics rollups over PostgreSQL.

The Python API (docs/python.md) is here: `aggjobs.refresh`, `verify`, `backfill`, `status`,
`run_job`, `report`, imported from aggjobs.python_api on first use, so that `import
aggjobs` (and `aggjobs.__version__`) loads nothing else. The jobs on a platform's own Celery
app: `aggjobs.celery.register`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"  # the package's version (pyproject.toml reads it from here)

if TYPE_CHECKING:  # for type checkers and editors; at run time, __getattr__ below
    from .python_api import (
        Status,
        backfill,
        refresh,
        report,
        run_job,
        status,
        verify,
    )

PYTHON_API = ("Status", "backfill", "refresh", "report", "run_job", "status", "verify")

__all__ = ["Status", "__version__", "backfill", "refresh", "report", "run_job", "status",
           "verify"]


def __getattr__(name: str) -> Any:
    """The Python API's names, imported when first used (PEP 562)."""
    if name in PYTHON_API:
        from . import python_api

        value = getattr(python_api, name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'aggjobs' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted({*globals(), *PYTHON_API})
