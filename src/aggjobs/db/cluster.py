"""Whether the database is a Citus cluster (docs/scaling.md), asked once per connection.

The engine runs the same SQL on PostgreSQL and on Citus; a few things differ around it: no
planner settings are applied on Citus (engine/recompute.py, `planner_settings`: the shards'
own plans are the right ones), and the views' owner must be able to log in to the workers.
"""

from __future__ import annotations

import weakref

import psycopg

from ..sql import query
from .connect import scalar

_known: weakref.WeakKeyDictionary[psycopg.Connection, bool] = weakref.WeakKeyDictionary()


def is_citus(conn: psycopg.Connection) -> bool:
    """Whether extension citus is installed in the connection's database (remembered for
    the connection's life: the extension is created before aggjobs ever runs there)."""
    if conn not in _known:
        _known[conn] = bool(scalar(conn, query("citus_installed")))
    return _known[conn]
