"""`aggjobs db status|start|stop`: the embedded PostgreSQL and broker under AGGJOBS_DATA_DIR."""

from __future__ import annotations

import json
from typing import Annotated

import typer
from rich import box
from rich.console import Console
from rich.table import Table

from ..operations.servers import Server, servers, start_servers, stop_servers
from ..settings import get_settings

db_app = typer.Typer(
    help="The embedded PostgreSQL and broker (used when AGGJOBS_DATABASE_URL is unset): "
    "status, start, stop. They keep running after the command that started them.",
    no_args_is_help=True,
)
console = Console()

NOT_RUNNING = 3  # `db status` when a server aggjobs uses is stopped (as `pg_ctl status`)


def servers_table(rows: list[Server]) -> Table:
    table = Table(title="embedded servers", box=box.SIMPLE_HEAD, pad_edge=False,
                  title_justify="left")
    for column in ("server", "state", "pid", "where", "used"):
        table.add_column(column, overflow="fold")
    for s in rows:
        table.add_row(s.name, "running" if s.running else "stopped",
                      str(s.pid) if s.pid else "", s.where,
                      "yes" if s.used else f"no: {s.note}")
    return table


@db_app.command("status")
def db_status(as_json: Annotated[bool, typer.Option("--json", help="Print JSON for scripts.")]
              = False) -> None:
    """Whether the embedded servers run, their pids and where they live. Exits 3 when one
    that aggjobs uses (as configured) is stopped."""
    rows = servers(get_settings())
    if as_json:
        print(json.dumps([s.as_dict() for s in rows], indent=2))
    else:
        console.print(servers_table(rows))
    if any(s.used and not s.running for s in rows):
        raise typer.Exit(NOT_RUNNING)


@db_app.command("start")
def db_start() -> None:
    """Start the embedded servers aggjobs uses (any command starts them on demand too)."""
    console.print(servers_table(start_servers(get_settings())))


@db_app.command("stop")
def db_stop() -> None:
    """Stop the embedded servers under AGGJOBS_DATA_DIR (the broker first, then PostgreSQL's
    fast shutdown: open sessions are ended, nothing committed is lost). Stop the workers,
    the scheduler and `aggjobs serve` first: they start the database again when they next
    need it."""
    settings = get_settings()
    stopped = stop_servers(settings.data_dir)
    where = settings.data_dir.expanduser().resolve()
    if stopped:
        console.print(f"stopped under {where}: {', '.join(stopped)}", highlight=False)
    else:
        console.print(f"no embedded server runs under {where}", highlight=False)
