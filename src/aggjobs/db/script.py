"""SQL scripts (migrations, schema.sql, views.sql) executed one statement at a time.

A whole script sent as one query string works on PostgreSQL, but Citus forwards the query
string of some statements to its workers (a `CREATE INDEX` on a distributed table: the
whole text, every statement of it) and the workers refuse it: "cannot insert multiple
commands into a prepared statement" (issue 18, point 7). Each statement is therefore sent
on its own, through the extended protocol, which refuses a string of several statements:
a splitting mistake fails loudly instead of passing as one statement.
"""

from __future__ import annotations

import re

import psycopg

# What can hide a `;`: quoted identifiers and strings (E'' escapes included), dollar
# quotes, comments. Tried in this order at each position of the scan.
_TOKEN = re.compile(
    r"""
      (?P<line>--[^\n]*)
    | (?P<block>/\*)
    | (?P<dollar>(?<![A-Za-z0-9_$])\$(?:[A-Za-z_\x80-\uffff][A-Za-z_0-9\x80-\uffff]*)?\$)
    | (?P<estring>[eE]'(?:[^'\\]|\\.|'')*')
    | (?P<string>'(?:[^']|'')*')
    | (?P<ident>"(?:[^"]|"")*")
    | (?P<semi>;)
    """,
    re.VERBOSE | re.DOTALL,
)


def statements(script: str) -> list[str]:
    """The script's statements, without their terminating `;`; comments between statements
    are kept with the statement they precede, empty pieces dropped."""
    pieces: list[str] = []
    start = pos = 0
    while (m := _TOKEN.search(script, pos)) is not None:
        pos = _after(script, m)
        if m.lastgroup == "semi":
            pieces.append(script[start:m.start()])
            start = pos
    pieces.append(script[start:])
    return [p.strip() for p in pieces if _has_code(p)]


def _after(script: str, m: re.Match[str]) -> int:
    """Where the scan resumes after token `m` (the end of a dollar quote or of a nested
    block comment, which the regular expression alone cannot find)."""
    if m.lastgroup == "dollar":
        end = script.find(m.group(), m.end())
        if end < 0:
            raise ValueError(f"unterminated dollar quote {m.group()}")
        return end + len(m.group())
    if m.lastgroup == "block":
        depth, pos = 1, m.end()
        while depth:
            nxt = re.compile(r"/\*|\*/").search(script, pos)
            if nxt is None:
                raise ValueError("unterminated /* comment")
            depth += 1 if nxt.group() == "/*" else -1
            pos = nxt.end()
        return pos
    return m.end()


def _has_code(piece: str) -> bool:
    """Whether a piece holds more than blanks and comments."""
    without = re.sub(r"--[^\n]*", "", piece)
    return bool(re.sub(r"/\*.*?\*/", "", without, flags=re.DOTALL).strip())


def execute_script(conn: psycopg.Connection, script: str) -> None:
    """Run each statement of `script` on its own (prepared: one statement per string).
    `prepare=True` makes psycopg send it through the extended protocol; no parameters are
    passed, so a `%` in a function body stays as it is."""
    for stmt in statements(script):
        conn.execute(stmt.encode(), prepare=True)
