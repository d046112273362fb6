"""Denied requests in the audit log, bounded (docs/api.md, "Denials in the audit log").

A request refused with 401 (no token, an unknown one, a revoked or expired one) has no
token to count against, so anyone can send many: they are aggregated per client address,
actor (`anonymous`, or the revoked or expired token's name) and UTC minute. The first
denial of a (client, actor) in a minute writes its row at once, as any denial does; the
others of that minute are counted in this process's memory and written as one row with
their count (`params.aggregated`, `params.count`, the paths, methods and reasons counted)
when the minute has closed: by the next request of any client after it, or when the
server stops. So a client writes at most two rows a minute however fast it sends, and no
denial goes uncounted unless the process is killed (`kill -9`: the open minute's counts
are lost).

Denials of a valid token (403, 429) are written one row each, at once: a token is
accountable, revocable, and its triggering requests are rate-limited.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import Counter
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime

import anyio
import psycopg

from .. import audit as audit_log
from ..errors import AggjobsError

log = logging.getLogger(__name__)

WINDOW_S = 60
MAX_KEYS = 10_000  # (client, actor) pairs tallied at once; beyond, one tally for the rest
MAX_LISTED = 20  # paths, methods, reasons listed in an aggregated row; the rest summed
MAX_TRACKED = 1_000  # distinct paths (methods, reasons) counted apart in one tally
OTHERS = "(others)"
OTHER_CLIENTS = "(other clients)"
AGGREGATED_STATUS = 401


@dataclass(frozen=True)
class Denial:
    actor: str
    target: str
    method: str
    needs: str
    reason: str | None
    client: str
    status: int

    def params(self) -> dict:
        return {"method": self.method, "needs": self.needs, "reason": self.reason,
                "client": self.client, "count": 1}


@dataclass
class Tally:
    """The denials of one (client, actor) in one minute after its first."""

    window: int
    count: int = 0
    first: float | None = None
    last: float | None = None
    paths: Counter = field(default_factory=Counter)
    methods: Counter = field(default_factory=Counter)
    reasons: Counter = field(default_factory=Counter)
    clients: set = field(default_factory=set)

    def add(self, denial: Denial, now: float) -> None:
        self.count += 1
        self.first = now if self.first is None else self.first
        self.last = now
        bump(self.paths, denial.target)
        bump(self.methods, denial.method)
        bump(self.reasons, denial.reason or "")
        if len(self.clients) < MAX_KEYS:
            self.clients.add(denial.client)


def bump(counts: Counter, key: str) -> None:
    counts[key if key in counts or len(counts) < MAX_TRACKED else OTHERS] += 1


def listed(counts: Counter) -> dict[str, int]:
    shown = dict(counts.most_common(MAX_LISTED))
    rest = sum(counts.values()) - sum(shown.values())
    return shown | ({OTHERS: shown.get(OTHERS, 0) + rest} if rest else {})


def iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).isoformat()


class DenialLog:
    def __init__(self, clock: Callable[[], float] = time.time):
        self.clock = clock
        self.lock = threading.Lock()
        self.tallies: dict[tuple[str, str], Tally] = {}
        self.unwritten: list[tuple[tuple[str, str], Tally]] = []  # failed writes, retried
        self.next_due: float | None = None  # when the oldest open window closes

    def record(self, conn: psycopg.Connection, denial: Denial) -> None:
        """Audit `denial`: at once, or (a 401 after the first of its client, actor and
        minute) counted, to be written when its minute closes."""
        if denial.status != AGGREGATED_STATUS:
            self.write_one(conn, denial)
            return
        now = self.clock()
        window = int(now // WINDOW_S)
        with self.lock:
            closed = self.take_closed(window)
            key = (denial.client, denial.actor)
            if key not in self.tallies and len(self.tallies) >= MAX_KEYS:
                key = (OTHER_CLIENTS, denial.actor)
            tally = self.tallies.get(key)
            if tally is None:
                self.tallies[key] = Tally(window)
                self.next_due = min(self.next_due or float("inf"), (window + 1) * WINDOW_S)
            else:
                tally.add(denial, now)
        if tally is None:
            try:
                self.write_one(conn, denial)
            except Exception:
                self.count_unwritten(key, window, denial, now)
                raise
        self.write_tallies(conn, closed)

    def count_unwritten(self, key: tuple[str, str], window: int, denial: Denial,
                        now: float) -> None:
        """A first denial whose row could not be written: counted with the others."""
        with self.lock:
            tally = self.tallies.get(key)
            if tally is None or tally.window != window:
                tally = Tally(window)
                self.unwritten.append((key, tally))
            tally.add(denial, now)

    def flush_due(self, conn: psycopg.Connection) -> None:
        """Write the tallies of the minutes that have closed (cheap when none has)."""
        if self.next_due is None or self.clock() < self.next_due:
            return
        with self.lock:
            closed = self.take_closed(int(self.clock() // WINDOW_S))
        self.write_tallies(conn, closed)

    def flush_all(self, conn: psycopg.Connection) -> None:
        """Write every tally, the open minute's too (at shutdown)."""
        with self.lock:
            closed = self.take_closed(None)
        self.write_tallies(conn, closed)

    def take_closed(self, window: int | None) -> list[tuple[tuple[str, str], Tally]]:
        """Remove and return the tallies of windows before `window` (None: all) that
        counted anything, with the failed writes of before. Under the lock."""
        closed = [(k, t) for k, t in self.tallies.items() if window is None or t.window < window]
        for key, _ in closed:
            del self.tallies[key]
        opened = [t.window for t in self.tallies.values()]
        self.next_due = (min(opened) + 1) * WINDOW_S if opened else None
        taken, self.unwritten = self.unwritten, []
        return taken + [(k, t) for k, t in closed if t.count]

    def write_tallies(self, conn: psycopg.Connection,
                      tallies: list[tuple[tuple[str, str], Tally]]) -> None:
        for i, (key, tally) in enumerate(tallies):
            try:
                self.write_tally(conn, key, tally)
            except Exception:
                with self.lock:  # written by a later flush
                    self.unwritten.extend(tallies[i:])
                raise

    def write_tally(self, conn: psycopg.Connection, key: tuple[str, str], tally: Tally) -> None:
        client, actor = key
        target = next(iter(tally.paths)) if len(tally.paths) == 1 else "*"
        params = {"aggregated": True, "count": tally.count,
                  "window": iso(tally.window * WINDOW_S), "first": iso(tally.first or 0),
                  "last": iso(tally.last or 0), "paths": listed(tally.paths),
                  "methods": listed(tally.methods), "reasons": listed(tally.reasons),
                  "client": client}
        if client == OTHER_CLIENTS:
            params["clients"] = len(tally.clients)
        audit_log.write(conn, actor=actor, action="denied", target=target, params=params,
                        outcome=str(AGGREGATED_STATUS), source=client)

    @staticmethod
    def write_one(conn: psycopg.Connection, denial: Denial) -> None:
        audit_log.write(conn, actor=denial.actor, action="denied", target=denial.target,
                        params=denial.params(), outcome=str(denial.status),
                        source=denial.client)

    def lifespan(self, connect: Callable[[], psycopg.Connection]):
        """The app's lifespan: at shutdown, every tally is written (or, the database being
        gone, logged)."""

        @asynccontextmanager
        async def span(_app) -> AsyncIterator[None]:
            yield
            await anyio.to_thread.run_sync(self.shutdown, connect)

        return span

    def shutdown(self, connect: Callable[[], psycopg.Connection]) -> None:
        if not self.unwritten and not any(t.count for t in self.tallies.values()):
            return
        try:
            with connect() as conn:
                self.flush_all(conn)
        except (AggjobsError, psycopg.Error) as exc:
            lost = sum(t.count for _, t in self.unwritten + list(self.tallies.items()))
            log.warning("could not write the audit rows of %d aggregated denials: %s",
                        lost, exc)
