"""The C functions of extension aggjobs_native (native/, docs/native.md) against the portable
SQL they replace: the same values bit for bit, from the functions up to whole rollup tables.

They run where the server has the extension (`make native`); CI builds it for PostgreSQL 15
and sets AGGJOBS_TEST_EXPECT_NATIVE=1 there, so these tests cannot skip silently. The
embedded PostgreSQL run's shared server has no extension (the whole suite runs the portable SQL
there); tests/integration/test_embedded_native.py builds it for an embedded server of its own
and runs the row-for-row comparison below there.
"""

from __future__ import annotations

import math
import os
from datetime import UTC, date, datetime, time, timedelta

import psycopg
import pytest
from hypothesis import HealthCheck, example, given
from hypothesis import settings as hsettings
from hypothesis import strategies as st
from psycopg import sql

from aggjobs import health
from aggjobs.catalog import BUILTIN_ROLLUPS, DistinctCount, Grain, Quantile, Sum
from aggjobs.catalog.model import Rollup, Source
from aggjobs.db.migrate import migrate
from aggjobs.engine.recompute import native_installed, numeric_columns, recompute_range
from aggjobs.reports.build import fetch as report_query
from aggjobs.sql import NATIVE_VERSION
from aggjobs.sql.live import view_name
from aggjobs.sql.rollup import create_table, float_sum, reference, table_ident, value_columns
from tests import platform as p

SETTINGS = hsettings(max_examples=200, deadline=None, database=None,
                     suppress_health_check=[HealthCheck.function_scoped_fixture,
                                            HealthCheck.too_slow])


def require_native(conn: psycopg.Connection) -> None:
    if native_installed(conn):
        return
    if os.environ.get("AGGJOBS_TEST_EXPECT_NATIVE") == "1":
        pytest.fail("extension aggjobs_native is not installed (make native)")
    pytest.skip("extension aggjobs_native not built for this server")


@pytest.fixture(scope="module")
def db(module_conn: psycopg.Connection) -> psycopg.Connection:
    require_native(module_conn)
    return module_conn


# ------------------------------------------------------------------------------ digest

VALUE = st.one_of(
    st.floats(allow_nan=True, allow_infinity=True),
    st.floats(1e-3, 1e5),
    st.sampled_from([0.0, -0.0, -1.0, 1e-9, 1e-10, 1.015, math.inf, -math.inf, math.nan]),
)
VALUES = st.one_of(
    st.lists(VALUE, min_size=1, max_size=300),
    # few distinct values, repeated: runs of equal keys and ties in the order statistics
    st.lists(VALUE, min_size=1, max_size=4).flatmap(
        lambda pool: st.lists(st.sampled_from(pool), min_size=1, max_size=200)),
)
Q = st.one_of(st.sampled_from([0.0, 0.5, 0.95, 1.0]), st.floats(0, 1))

PORTABLE_DIGEST = """
WITH v AS (SELECT unnest(%(xs)s::float8[]) AS x)
SELECT (SELECT percentile_cont(%(q)s) WITHIN GROUP (ORDER BY x) FROM v),
       (SELECT array_agg(k ORDER BY k) FROM (SELECT DISTINCT aggjobs.sketch_key(x) AS k FROM v) k),
       (SELECT array_agg(c ORDER BY k) FROM (SELECT aggjobs.sketch_key(x) AS k, count(*) AS c
                                             FROM v GROUP BY 1) c)
"""
NATIVE_DIGEST = "SELECT quantile, keys, counts FROM aggjobs_native.digest(%(xs)s, %(q)s)"
# The aggregate the hourly step runs (1.3): the same, over a group's rows.
NATIVE_DIGEST_OF = """
SELECT (d).quantile, (d).keys, (d).counts
FROM (SELECT aggjobs_native.digest_of(x, %(q)s) AS d FROM unnest(%(xs)s::float8[]) AS x) AS s
"""


def same_float(ours: float, exact: float) -> bool:
    """Bit for bit, NaN as NaN. The sign of a zero is not compared: which of two equal zeros
    (-0 and 0) a sort puts first is not defined, in percentile_cont's sort as in ours."""
    if math.isnan(exact):
        return math.isnan(ours)
    return ours == exact and (exact == 0 or math.copysign(1, ours) == math.copysign(1, exact))


@given(xs=VALUES, q=Q)
@SETTINGS
def test_digest_is_percentile_cont_and_the_portable_sketch(db: psycopg.Connection,
                                                           xs: list[float], q: float) -> None:
    params = {"xs": xs, "q": q}
    exact, keys, counts = db.execute(PORTABLE_DIGEST, params).fetchone()
    for native in (NATIVE_DIGEST, NATIVE_DIGEST_OF):
        quantile, n_keys, n_counts = db.execute(native, params).fetchone()
        assert same_float(quantile, exact), (native, xs, q, quantile, exact)
        assert (n_keys, n_counts) == (keys, counts)


# The aggregate an hour runs where an average reads the quantile's column (1.5): digest_of's
# fields, then the average's state as the SQL path makes it (float_sum, count).
NATIVE_DIGEST_MEAN_OF = """
SELECT (d).quantile, (d).keys, (d).counts, (d).sum, (d).n
FROM (SELECT aggjobs_native.digest_mean_of(x, %(q)s) AS d FROM unnest(%(xs)s::float8[]) AS x) AS s
"""
PORTABLE_MEAN = sql.SQL("SELECT {}, count(x) FROM unnest(%(xs)s::float8[]) AS x").format(
    float_sum(sql.Identifier("x")))
HUGE = st.sampled_from([1e300, -1e300, 1.7976931348623157e308, 2.0 ** 960, -(2.0 ** 960),
                        math.inf, -math.inf, math.nan, 1e-300, -0.0])


@given(xs=st.one_of(VALUES, st.lists(st.one_of(HUGE, VALUE), min_size=1, max_size=40)), q=Q)
@example(xs=[-0.0], q=0.5)  # sum() starts from its first value: -0, not 0 + -0
@example(xs=[1.7976931348623157e308] * 3, q=0.5)  # past the float range: +Infinity
@example(xs=[1e300, -1e300, 1.0], q=0.5)
@SETTINGS
def test_digest_mean_of_is_the_digest_with_the_averages_state(
        db: psycopg.Connection, xs: list[float], q: float) -> None:
    """The same digest, and the values' sum and count as the SQL path's average keeps them:
    float_sum's bits (the sign of a zero included, compared as text), count(x)."""
    params = {"xs": xs, "q": q}
    quantile, keys, counts, total, n = db.execute(NATIVE_DIGEST_MEAN_OF, params).fetchone()
    digest = db.execute(NATIVE_DIGEST_OF, params).fetchone()
    assert same_float(quantile, digest[0]) and (keys, counts) == digest[1:]
    exact, count = db.execute(PORTABLE_MEAN, params).fetchone()
    assert n == count and repr(total) == repr(exact), (xs, total, exact)


def test_digest_of_no_values_is_null_and_bad_input_is_refused(db: psycopg.Connection) -> None:
    for xs in (None, []):
        row = db.execute(NATIVE_DIGEST, {"xs": xs, "q": 0.95}).fetchone()
        assert row == (None, None, None)
    with pytest.raises(psycopg.errors.NullValueNotAllowed, match="NULL element at position 2"):
        db.execute(NATIVE_DIGEST, {"xs": [1.0, None], "q": 0.95})
    with pytest.raises(psycopg.errors.NumericValueOutOfRange, match="not between 0 and 1"):
        db.execute(NATIVE_DIGEST, {"xs": [1.0], "q": 1.5})


def test_digest_of_skips_nulls_and_refuses_a_bad_quantile(db: psycopg.Connection) -> None:
    """The aggregates: NULL values skipped (the FILTER of the SQL path), a group without
    values NULL, and the quantile checked as digest's."""
    for xs in ([], [None, None]):
        assert db.execute(NATIVE_DIGEST_OF, {"xs": xs, "q": 0.95}).fetchone() == (None,) * 3
        assert db.execute(NATIVE_DIGEST_MEAN_OF, {"xs": xs, "q": 0.95}).fetchone() == (None,) * 5
    mean = db.execute(NATIVE_DIGEST_MEAN_OF, {"xs": [3.5, None, -1.0, 2.0], "q": 0.5}).fetchone()
    assert mean[3:] == (4.5, 3)
    with_nulls = db.execute(NATIVE_DIGEST_OF, {"xs": [3.5, None, -1.0, 2.0], "q": 0.5})
    assert with_nulls.fetchone() == db.execute(NATIVE_DIGEST, {"xs": [3.5, -1.0, 2.0],
                                                                "q": 0.5}).fetchone()
    with pytest.raises(psycopg.errors.NumericValueOutOfRange, match="not between 0 and 1"):
        db.execute(NATIVE_DIGEST_OF, {"xs": [1.0], "q": -0.1})
    with pytest.raises(psycopg.errors.NullValueNotAllowed, match="the quantile is NULL"):
        db.execute(NATIVE_DIGEST_OF, {"xs": [1.0], "q": None})


# ------------------------------------------------------------------------------ merge

SKETCH_OF = """
SELECT array_agg(k ORDER BY k), array_agg(c ORDER BY k)
FROM (SELECT aggjobs.sketch_key(x) AS k, count(*) AS c FROM unnest(%s::float8[]) AS x
      GROUP BY 1) AS s
"""
PORTABLE_MERGE = """
WITH s AS (SELECT * FROM unnest(%(keys)s::text[], %(counts)s::text[]) AS s(k, c)),
     pairs AS (SELECT u.k, sum(u.c)::bigint AS c
               FROM s, unnest(s.k::int[], s.c::bigint[]) AS u(k, c) GROUP BY u.k)
SELECT keys, counts, aggjobs.sketch_quantile(keys, counts, %(q)s)
FROM (SELECT array_agg(k ORDER BY k) AS keys, array_agg(c ORDER BY k) AS counts FROM pairs) m
"""
NATIVE_MERGE = """
WITH s AS (SELECT * FROM unnest(%(keys)s::text[], %(counts)s::text[]) AS s(k, c)),
     m AS (SELECT aggjobs_native.sketch_merge(s.k::int[], s.c::bigint[]) AS m FROM s)
SELECT (m).keys, (m).counts, aggjobs_native.sketch_quantile((m).keys, (m).counts, %(q)s) FROM m
"""


def array_text(items: list[int] | None) -> str | None:
    return None if items is None else "{" + ",".join(map(str, items)) + "}"


@given(parts=st.lists(st.one_of(st.none(), st.lists(VALUE, min_size=0, max_size=80)),
                      min_size=1, max_size=24), q=Q)
@SETTINGS
def test_merged_sketches_and_their_quantile_are_the_portable_ones(
        db: psycopg.Connection, parts: list[list[float] | None], q: float) -> None:
    """Sketches as the hourly rows hold them (NULL for an hour without values), merged into
    a day: the same keys and counts, and sketch_quantile's value bit for bit."""
    sketches = [db.execute(SKETCH_OF, (xs,)).fetchone() if xs is not None else (None, None)
                for xs in parts]
    params = {"keys": [array_text(k) for k, _ in sketches],
              "counts": [array_text(c) for _, c in sketches], "q": q}
    keys, counts, quantile = db.execute(PORTABLE_MERGE, params).fetchone()
    n_keys, n_counts, n_quantile = db.execute(NATIVE_MERGE, params).fetchone()
    assert (n_keys, n_counts) == (keys, counts)
    if quantile is None:
        assert n_quantile is None
    else:
        assert same_float(n_quantile, quantile), (sketches, q)


KEY_RANGES = st.sampled_from([(-200, 600), (-1400, 32766), (-40, 40), (-2 ** 31, 2 ** 31 - 1)])


@st.composite
def sketch_lists(draw: st.DrawFn) -> list[tuple[list[int], list[int]] | None]:
    """Sketches as keys and counts (not from values): keys close together, as a day's are,
    or spread past the span the merge counts in an array (4,096 keys), or past the reserved
    keys, so that it switches to sorted arrays part-way; the two reserved keys; counts of 0
    (a key is kept all the same), negative ones, and counts adding up past 2^31 (the
    array's counts are 32-bit)."""
    out: list[tuple[list[int], list[int]] | None] = []
    for lo, hi in draw(st.lists(KEY_RANGES, min_size=1, max_size=24)):
        if draw(st.booleans()) and draw(st.booleans()):
            out.append(None)
            continue
        keys = draw(st.lists(st.one_of(st.integers(lo, hi), st.sampled_from([-32768, 32767])),
                             max_size=60, unique=True))
        counts = draw(st.lists(st.one_of(st.integers(0, 3), st.integers(-2, 2 ** 40),
                                         st.integers(2 ** 28, 2 ** 31)),
                               min_size=len(keys), max_size=len(keys)))
        pairs = sorted(zip(keys, counts, strict=True))
        out.append(([k for k, _ in pairs], [c for _, c in pairs]))
    return out


@given(sketches=sketch_lists())
@example(sketches=[([5, 9], [2 ** 31 - 1, 1]), ([5], [2]), ([9], [3])])  # past 2^31
@example(sketches=[([-40000, 5], [1, 1]), ([5, 40000], [2, 3])])  # past the reserved keys
@SETTINGS
def test_merge_in_an_array_or_sorted_is_the_portable_merge(
        db: psycopg.Connection, sketches: list[tuple[list[int], list[int]] | None]) -> None:
    params = {"keys": [array_text(s[0]) if s else None for s in sketches],
              "counts": [array_text(s[1]) if s else None for s in sketches], "q": 0.95}
    if any(k < -32768 or k > 32767 for s in sketches if s for k in s[0]):
        # keys no sketch_key gives: merged alike, but no quantile (its representative
        # overflows in the portable walk)
        merged = "SELECT keys, counts FROM ({}) AS m"
        assert (db.execute(merged.format(NATIVE_MERGE), params).fetchone()
                == db.execute(merged.format(PORTABLE_MERGE), params).fetchone())
        return
    keys, counts, quantile = db.execute(PORTABLE_MERGE, params).fetchone()
    n_keys, n_counts, n_quantile = db.execute(NATIVE_MERGE, params).fetchone()
    assert (n_keys, n_counts) == (keys, counts)
    assert (n_quantile is None) == (quantile is None)
    if quantile is not None:  # NaN where every count is 0, as the SQL walk gives
        assert same_float(n_quantile, quantile)


USER_ID = st.one_of(st.integers(-3, 40), st.integers(-2 ** 63, 2 ** 63 - 1))


@given(sets=st.lists(st.one_of(st.none(), st.lists(USER_ID, max_size=40)), min_size=1,
                     max_size=30),
       sorted_sets=st.booleans())
@SETTINGS
def test_set_union_and_set_of_are_the_distinct_sorted_arrays(
        db: psycopg.Connection, sets: list[list[int] | None], sorted_sets: bool) -> None:
    """set_union over hourly sets (as stored: ascending and distinct, or not), set_of over
    the values themselves: what array_agg(DISTINCT v ORDER BY v) gives, NULL for none; with
    enough members (30 sets of 40) to compact the buffer part-way."""
    if sorted_sets:
        sets = [sorted(set(s)) if s is not None else None for s in sets]
    texts = [array_text(s) for s in sets]
    union = db.execute(
        "WITH s AS (SELECT x::bigint[] AS s FROM unnest(%(s)s::text[]) AS x)"
        " SELECT (SELECT aggjobs_native.set_union(s) FROM s),"
        " (SELECT array_agg(DISTINCT v ORDER BY v) FROM s, unnest(s) AS v)",
        {"s": texts}).fetchone()
    assert union[0] == union[1]
    values = [v for s in sets for v in (s if s is not None else [None])]
    of = db.execute(
        "SELECT aggjobs_native.set_of(v), array_agg(DISTINCT v ORDER BY v)"
        " FILTER (WHERE v IS NOT NULL) FROM unnest(%s::bigint[]) AS v", (values,)).fetchone()
    assert of[0] == of[1]


# numeric values as text: every display scale up to 20, magnitudes up to 40 digits (past the
# state's 36-digit integer), NaN and the infinities, NULLs; runs of a few repeated values.
NUMERIC = st.one_of(
    st.none(),
    st.builds(lambda units, scale: f"{units}e-{scale}", st.integers(-10**12, 10**12),
              st.integers(0, 20)),
    st.decimals(allow_nan=False, allow_infinity=False, places=4,
                min_value=-10**10, max_value=10**10).map(str),
    st.builds(lambda d, e: f"{d}e{e}", st.integers(-9, 9), st.integers(20, 40)),
    st.sampled_from(["0", "0.000", "-0.0001", "NaN", "Infinity", "-Infinity",
                     "99999999999999999999999999999999999.9", "1e-20"]),
)


@given(values=st.one_of(
    st.lists(NUMERIC, max_size=60),
    st.lists(NUMERIC, min_size=1, max_size=3).flatmap(
        lambda pool: st.lists(st.sampled_from(pool), max_size=60))))
@example(values=["99999999999999999999999999999999999", "1"])  # the integer's bound
@example(values=["1.5", "-1.50"])  # zero keeps the display scale
@example(values=[None, None])
@example(values=["1e-40", "2"])  # a display scale past the integer's
@SETTINGS
def test_numeric_sum_is_sum(db: psycopg.Connection, values: list[str | None]) -> None:
    """The same value and display scale (compared as text), NaN and infinities as sum gives
    them, NULL over no values."""
    ours, theirs = db.execute(
        "SELECT aggjobs_native.numeric_sum(x)::text, sum(x)::text"
        " FROM unnest(%s::numeric[]) AS x", (values,)).fetchone()
    assert ours == theirs


SUMMED = Rollup(name="summed", source=Source(name="summed", table="summed_src",
                                              time_column="at"),
                grains=(Grain.HOUR,), measures=tuple(
                    Sum(name=f"sum_{c}", column=c) for c in ("n", "s", "d", "f", "i")))


def test_raw_sums_of_every_number_type_are_sum(db: psycopg.Connection) -> None:
    """A raw column's sum with the C functions: numeric_sum for a numeric column (a domain
    over one too), sum() for the others (a float8 sum adds floats), each equal as text to
    sum()'s over the raw rows, scale included."""
    db.execute("DROP TABLE IF EXISTS public.summed_src")
    db.execute("DROP DOMAIN IF EXISTS public.credits")
    db.execute("CREATE DOMAIN public.credits AS numeric(14, 4)")
    db.execute("CREATE TABLE public.summed_src (workspace_id bigint NOT NULL, at timestamptz"
               " NOT NULL, n numeric, s numeric(10, 2), d public.credits, f float8, i int4)")
    db.execute("INSERT INTO public.summed_src SELECT k %% 7, %s::timestamptz + k * interval"
               " '1 minute', (k * 1.25) / 3, k * 0.5, k * 0.0001, k * 0.1, k"
               " FROM generate_series(1, 500) AS k", (T0,))
    db.execute(sql.SQL("DROP TABLE IF EXISTS {}").format(table_ident(SUMMED, Grain.HOUR)))
    db.execute(create_table(SUMMED, Grain.HOUR))
    assert numeric_columns(db, SUMMED, Grain.HOUR) == {"n", "s", "d"}
    lo, hi = T0, T0 + timedelta(hours=10)
    with db.transaction():
        recompute_range(db, SUMMED, Grain.HOUR, lo, hi)
    # as the numeric columns hold them: a float8 sum stored is its numeric
    names = sql.SQL(", ").join(sql.SQL("{}::numeric::text").format(sql.Identifier(c))
                               for c in value_columns(SUMMED, Grain.HOUR))
    stored, expected = (db.execute(sql.SQL(
        "SELECT workspace_id, hour, {} FROM {} AS x ORDER BY 1, 2").format(names, rel),
        {"lo": lo, "hi": hi}).fetchall()
        for rel in (table_ident(SUMMED, Grain.HOUR),
                    sql.SQL("({})").format(reference(SUMMED, Grain.HOUR))))
    assert len(stored) > 50 and stored == expected
    db.execute(sql.SQL("DROP TABLE {}").format(table_ident(SUMMED, Grain.HOUR)))
    db.execute("DROP TABLE public.summed_src")
    db.execute("DROP DOMAIN public.credits")


def test_a_set_with_a_null_member_is_refused(db: psycopg.Connection) -> None:
    with pytest.raises(psycopg.errors.NullValueNotAllowed, match="NULL member"):
        db.execute("SELECT aggjobs_native.set_union(s) FROM (VALUES ('{1,NULL}'::bigint[]))"
                   " AS v(s)")


def test_malformed_sketches_are_refused(db: psycopg.Connection) -> None:
    merge = "SELECT aggjobs_native.sketch_merge(k, c) FROM (VALUES (%s::int[], %s::bigint[])) v(k, c)"
    with pytest.raises(psycopg.errors.InvalidParameterValue, match="keys must ascend"):
        db.execute(merge, ([3, 2], [1, 1]))
    with pytest.raises(psycopg.errors.ArraySubscriptError, match="2 keys and 1 counts"):
        db.execute(merge, ([1, 2], [1]))
    with pytest.raises(psycopg.errors.NullValueNotAllowed, match="NULL key or count"):
        db.execute("SELECT aggjobs_native.sketch_quantile('{1,NULL}', '{1,1}', 0.5)")


# ------------------------------------------------------------------------------ rollups

T0 = datetime(2026, 11, 2, tzinfo=UTC)  # a Monday
SPAN = (T0, T0 + timedelta(days=14))


def snapshot(conn: psycopg.Connection) -> dict:
    tables = {}
    for rollup in BUILTIN_ROLLUPS:
        for grain in rollup.grains:
            rows = conn.execute(
                psycopg.sql.SQL("SELECT {}, {}, {} FROM {} ORDER BY 1, 2").format(
                    psycopg.sql.Identifier(rollup.source.key_column),
                    psycopg.sql.Identifier(grain.column),
                    psycopg.sql.SQL(", ").join(map(psycopg.sql.Identifier,
                                                   value_columns(rollup, grain))),
                    table_ident(rollup, grain))).fetchall()
            tables[(rollup.name, grain.value)] = rows
    return tables


def recompute_everything(conn: psycopg.Connection) -> dict:
    with conn.transaction():
        for rollup in BUILTIN_ROLLUPS:
            for grain in (Grain.HOUR, Grain.DAY, Grain.WEEK):
                if grain in rollup.grains:
                    recompute_range(conn, rollup, grain, *SPAN)
    return snapshot(conn)


def report_p95s(conn: psycopg.Connection, day: date) -> tuple[list[dict], list[dict]]:
    """The daily reports' platform figures: p95s of merged daily and hourly sketches, the
    distinct users of merged sets."""
    lo = datetime.combine(day, time(), UTC)
    return (report_query(conn, "daily_platform", days=[day, day - timedelta(days=1)]),
            report_query(conn, "hourly_platform", lo=lo, hi=lo + timedelta(days=1)))


def live_views(conn: psycopg.Connection, *, expect_native: bool = True) -> dict:
    """Every live view's rows but their `updated_at` (the instant of the read), each view
    checked to use the C functions (those with a p95 or a distinct count) or not. No
    watermark is set: every row is computed."""
    out = {}
    for rollup in BUILTIN_ROLLUPS:
        for grain in rollup.grains:
            merged = rollup.finer(grain) is not None
            in_c = any(isinstance(m, Quantile | DistinctCount) or (merged and isinstance(m, Sum))
                       for m in rollup.measures)
            name = view_name(rollup, grain)
            text = conn.execute("SELECT pg_get_viewdef(%s::regclass)",
                                (f"analytics.{name}",)).fetchone()[0]
            assert ("aggjobs_native." in text) is (expect_native and in_c), name
            cur = conn.execute(f"SELECT * FROM analytics.{name}")
            keep = [i for i, c in enumerate(cur.description) if c.name != "updated_at"]
            out[name] = sorted((tuple(row[i] for i in keep) for row in cur), key=repr)
    assert sum(map(len, out.values())) > 1000
    return out


def test_every_rollup_table_is_the_same_with_and_without_the_c_functions(db_url: str) -> None:
    with psycopg.connect(db_url, autocommit=True) as conn:
        require_native(conn)
        assert_same_with_and_without(conn)


def assert_same_with_and_without(conn: psycopg.Connection) -> None:
    """On a migrated database with the C functions installed: 14 days of data rolled up at
    every grain, with them and then without, give the same rows in every table, live view,
    health input and report figure; the extension is installed again at the end. Also the
    embedded server's test (tests/integration/test_embedded_native.py)."""
    p.seed_sources(conn, T0 + timedelta(minutes=7), rows=6000, every=timedelta(minutes=3))
    # values at the sketch's edges, an hour without runtimes, ties
    for i, runtime in enumerate([None, 0.0, 1e-12, 1e300, 7.5, 7.5, 7.5, math.inf]):
        p.run(conn, ws=9, at=T0 + timedelta(hours=30, minutes=i), runtime=runtime)
    p.run(conn, ws=9, at=T0 + timedelta(hours=40), runtime=None)
    native = recompute_everything(conn)
    native_live = live_views(conn)
    day = (T0 + timedelta(days=10)).date()  # health: the 7 days before merged
    native_health, native_reports = health.inputs(conn, day), report_p95s(conn, day)
    migrate(conn, native=False)  # remakes the live views portable, then drops the extension
    assert not native_installed(conn)
    portable = recompute_everything(conn)
    assert sum(map(len, native.values())) > 1000
    assert native == portable
    assert live_views(conn, expect_native=False) == native_live
    assert sum(r["prior_p95"] is not None for r in native_health) >= 3
    assert native_health == health.inputs(conn, day)
    assert native_reports == report_p95s(conn, day)
    assert all(r["p95_runtime"] is not None for r in native_reports[1])
    assert all(r["active_users"] > 0 for r in native_reports[0])
    migrate(conn, native=True)
    assert native_installed(conn)


@pytest.mark.parametrize("older", ["1.0", "1.1", "1.2", "1.3", "1.4"])
def test_migrate_updates_an_older_extension_and_the_views_follow(db_url: str, older: str
                                                                 ) -> None:
    """An install made with aggjobs_native 1.0 (before aggregate `collect`), 1.1 (before
    the set aggregates), 1.2 (before `digest_of`), 1.3 (before `numeric_sum`) or 1.4
    (before `digest_mean_of`): the SQL runs portable until `migrate` updates the extension,
    then the live views use the C path."""
    with psycopg.connect(db_url, autocommit=True) as conn:
        require_native(conn)
        migrate(conn, native=False)
        conn.execute("CREATE SCHEMA aggjobs_native")
        conn.execute(sql.SQL("CREATE EXTENSION aggjobs_native SCHEMA aggjobs_native"
                             " VERSION {}").format(sql.Literal(older)))
        assert not native_installed(conn)  # it lacks what this version's SQL calls
        migrate(conn, native=True)
        assert conn.execute("SELECT extversion FROM pg_extension"
                            " WHERE extname = 'aggjobs_native'").fetchone()[0] == NATIVE_VERSION
        assert native_installed(conn)
        hourly = conn.execute("SELECT pg_get_viewdef('analytics.execution_metrics_hourly_live')"
                              ).fetchone()[0]
        assert "aggjobs_native.digest_mean_of(" in hourly
        users = conn.execute("SELECT pg_get_viewdef('analytics.user_activity_hourly_live')"
                             ).fetchone()[0]
        assert "aggjobs_native.set_of(" in users
