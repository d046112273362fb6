"""db.connect.scalar and one_row: the value, or the row, of a query that returns one row;
NoRow, naming the query, when it returns none."""

from __future__ import annotations

from collections.abc import Iterator

import psycopg
import pytest
from psycopg import sql
from psycopg.rows import dict_row

from aggjobs.db.connect import NoRow, one_row, scalar


@pytest.fixture
def conn(server_url: str) -> Iterator[psycopg.Connection]:
    with psycopg.connect(server_url, autocommit=True, application_name="aggjobs:tests") as c:
        yield c


def test_scalar_is_the_first_value_of_the_row(conn: psycopg.Connection) -> None:
    assert scalar(conn, "SELECT 1 + %s, 'b'", (1,)) == 2
    assert scalar(conn, "SELECT NULL::int") is None  # a NULL is a value, not a missing row


def test_one_row_is_a_tuple_whatever_the_row_factory(server_url: str) -> None:
    with psycopg.connect(server_url, autocommit=True, row_factory=dict_row) as conn:
        assert one_row(conn, "SELECT 1 AS a, 'b' AS b") == (1, "b")
        assert scalar(conn, sql.SQL("SELECT {}").format(sql.Literal(7))) == 7


def test_no_row_raises_naming_the_query(conn: psycopg.Connection) -> None:
    query = sql.SQL("SELECT {} WHERE false").format(sql.Literal("x"))
    with pytest.raises(NoRow, match=r"no row returned by: SELECT 'x' WHERE false"):
        scalar(conn, query)
    with pytest.raises(NoRow, match=r"\.\.\.$"):  # a long query's text is cut
        one_row(conn, "SELECT 1 WHERE false" + " AND true" * 50)
