"""aggjobs.int8_sum, the coarser grains' sum of counts (migration 0021): over counts (never
negative) the same value as sum(x)::bigint, the aggregate it replaced, NULL over no values,
and the same error past the bigint range. (With negative values a partial sum could pass
the range where the total does not: counts have none.)"""

from __future__ import annotations

import psycopg
import pytest
from hypothesis import HealthCheck, given
from hypothesis import settings as hsettings
from hypothesis import strategies as st

SETTINGS = hsettings(max_examples=200, deadline=None, database=None,
                     suppress_health_check=[HealthCheck.function_scoped_fixture])
COUNT = st.integers(0, 2**63 - 1)


@pytest.fixture(scope="module")
def db(module_conn: psycopg.Connection) -> psycopg.Connection:
    return module_conn


def both(db: psycopg.Connection, values: list[int | None]) -> tuple:
    """(int8_sum, sum()::bigint) of the values, or the SQLSTATE each raised."""
    out = []
    for agg in ("aggjobs.int8_sum(x)", "sum(x)::bigint"):
        try:
            with db.transaction():
                row = db.execute(f"SELECT {agg} FROM unnest(%s::bigint[]) AS u(x)",
                                 (values,)).fetchone()
                out.append(row[0] if row else None)
        except psycopg.Error as exc:
            out.append(exc.sqlstate)
    return tuple(out)


@SETTINGS
@given(st.lists(st.one_of(st.integers(0, 10**6), st.none(), COUNT), max_size=30))
def test_the_same_as_the_sum_it_replaced(db: psycopg.Connection,
                                         values: list[int | None]) -> None:
    ours, theirs = both(db, values)
    assert ours == theirs
    present = [v for v in values if v is not None]
    if not present:
        assert ours is None
    elif sum(present) < 2**63:
        assert ours == sum(present)
    else:
        assert ours == "22003"  # bigint out of range


def test_null_over_no_values_and_the_same_error_past_the_range(db: psycopg.Connection) -> None:
    assert both(db, []) == (None, None)
    assert both(db, [None, None]) == (None, None)
    assert both(db, [2**63 - 1, 1]) == ("22003", "22003")  # bigint out of range, both
    assert both(db, [2**63 - 1, 0]) == (2**63 - 1, 2**63 - 1)
