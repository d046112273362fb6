"""The p95 sketch's error bound, in the database: aggjobs.sketch_key / sketch_value /
sketch_quantile against PostgreSQL's exact percentile_cont.

The sketch is built as the engine stores it: keys = sketch_key(x) grouped with their counts,
keys ascending; merging sums counts per key. Every representative is within
(gamma - 1) / (gamma + 1) = 0.745% of its values, so the quantile read off any (merged) sketch
is within 0.745% of the exact one (0.0075 allows for float rounding).
"""

from __future__ import annotations

import math

import psycopg
import pytest
from hypothesis import HealthCheck, given
from hypothesis import settings as hsettings
from hypothesis import strategies as st

GAMMA = 1.015
BOUND = 0.0075  # the documented 0.745%, plus float rounding
LO, HI = 1e-3, 1e6

SETTINGS = hsettings(max_examples=300, deadline=None, database=None,
                     suppress_health_check=[HealthCheck.function_scoped_fixture,
                                            HealthCheck.too_slow])


@pytest.fixture(scope="module")
def db(module_conn: psycopg.Connection) -> psycopg.Connection:
    return module_conn


# ------------------------------------------------------------------------------ strategies

UNIFORM = st.floats(LO, HI, allow_nan=False, allow_infinity=False)
# log-normal-like: uniform in log space over the whole range, or a normal-ish log spread
LOG_UNIFORM = st.floats(math.log(LO), math.log(HI)).map(math.exp).map(lambda x: min(max(x, LO), HI))
LOG_NORMAL = st.builds(
    lambda mu, z: min(max(math.exp(mu + 1.5 * z), LO), HI),
    st.floats(math.log(0.1), math.log(1e4)),
    st.floats(-3, 3),
)
# bucket boundaries gamma^i, where a representative is furthest from its values
BOUNDARY = st.integers(math.ceil(math.log(LO) / math.log(GAMMA)),
                       math.floor(math.log(HI) / math.log(GAMMA))).map(lambda i: GAMMA ** i)
VALUE = st.one_of(UNIFORM, LOG_UNIFORM, LOG_NORMAL, BOUNDARY,
                  st.sampled_from([LO, 0.5, 1.0, 10.0, 60.0, 3600.0, HI]))
# many duplicates: few distinct values repeated
DUPLICATED = st.lists(VALUE, min_size=1, max_size=4).flatmap(
    lambda pool: st.lists(st.sampled_from(pool), min_size=1, max_size=60))
VALUES = st.one_of(
    st.lists(VALUE, min_size=1, max_size=3),  # tiny
    st.lists(VALUE, min_size=1, max_size=200),
    st.lists(LOG_NORMAL, min_size=20, max_size=300),
    DUPLICATED,
)
PARTS = st.lists(st.one_of(st.lists(VALUE, min_size=1, max_size=40), DUPLICATED),
                 min_size=2, max_size=8)

# ------------------------------------------------------------------------------ queries

SKETCH = """
WITH v AS (SELECT unnest(%(xs)s::float8[]) AS x),
s AS (SELECT aggjobs.sketch_key(x) AS k, count(*) AS c FROM v GROUP BY 1)
SELECT aggjobs.sketch_quantile((SELECT array_agg(k ORDER BY k) FROM s),
                               (SELECT array_agg(c ORDER BY k) FROM s), %(q)s),
       (SELECT percentile_cont(%(q)s) WITHIN GROUP (ORDER BY x) FROM v),
       (SELECT count(*) FROM v)
"""

# Parts are sketched separately (as hours are), merged per group (as days merge hours), and
# the groups merged again (as weeks merge days): counts summed per key each time.
MERGED = """
WITH v AS (SELECT * FROM unnest(%(xs)s::float8[], %(parts)s::int[]) AS v(x, part)),
hours AS (
    SELECT part, array_agg(k ORDER BY k) AS keys, array_agg(c ORDER BY k) AS counts
    FROM (SELECT part, aggjobs.sketch_key(x) AS k, count(*) AS c FROM v GROUP BY 1, 2) AS s
    GROUP BY part
),
days AS (
    SELECT day, array_agg(k ORDER BY k) AS keys, array_agg(c ORDER BY k) AS counts
    FROM (SELECT h.part / 3 AS day, u.k, sum(u.c)::bigint AS c
          FROM hours AS h, unnest(h.keys, h.counts) AS u(k, c) GROUP BY 1, 2) AS s
    GROUP BY day
),
week AS (
    SELECT array_agg(k ORDER BY k) AS keys, array_agg(c ORDER BY k) AS counts
    FROM (SELECT u.k, sum(u.c)::bigint AS c
          FROM days AS d, unnest(d.keys, d.counts) AS u(k, c) GROUP BY 1) AS s
)
SELECT aggjobs.sketch_quantile(week.keys, week.counts, 0.95),
       (SELECT percentile_cont(0.95) WITHIN GROUP (ORDER BY x) FROM v),
       (SELECT sum(c) FROM unnest(week.counts) AS c)
FROM week
"""


def rel_err(approx: float, exact: float) -> float:
    return abs(approx - exact) / exact


# ------------------------------------------------------------------------------ properties


@given(xs=VALUES)
@SETTINGS
def test_p95_of_a_sketch_is_within_the_bound(db: psycopg.Connection, xs: list[float]) -> None:
    approx, exact, n = db.execute(SKETCH, {"xs": xs, "q": 0.95}).fetchone()
    assert n == len(xs)
    assert exact > 0 and approx is not None
    assert rel_err(approx, exact) <= BOUND, (approx, exact, sorted(xs))


@given(xs=VALUES, q=st.sampled_from([0.0, 0.5, 0.9, 0.99, 1.0]))
@SETTINGS
def test_other_quantiles_of_a_sketch_are_within_the_bound(db: psycopg.Connection,
                                                          xs: list[float], q: float) -> None:
    approx, exact, _ = db.execute(SKETCH, {"xs": xs, "q": q}).fetchone()
    assert rel_err(approx, exact) <= BOUND, (q, approx, exact, sorted(xs))


@given(parts=PARTS)
@SETTINGS
def test_merged_sketches_keep_the_bound_against_the_union(db: psycopg.Connection,
                                                          parts: list[list[float]]) -> None:
    xs = [x for part in parts for x in part]
    ids = [i for i, part in enumerate(parts) for _ in part]
    approx, exact, n = db.execute(MERGED, {"xs": xs, "parts": ids}).fetchone()
    assert n == len(xs)  # merging loses no count
    assert rel_err(approx, exact) <= BOUND, (approx, exact, parts)
    # the merged sketch is exactly the sketch of the union: the same answer
    direct = db.execute(SKETCH, {"xs": xs, "q": 0.95}).fetchone()[0]
    assert approx == pytest.approx(direct, rel=1e-12)


@given(x=VALUE)
@SETTINGS
def test_a_representative_is_within_the_bound_of_its_value(db: psycopg.Connection,
                                                           x: float) -> None:
    key, value = db.execute(
        "SELECT aggjobs.sketch_key(%(x)s::float8), aggjobs.sketch_value(aggjobs.sketch_key(%(x)s))",
        {"x": x},
    ).fetchone()
    assert -32768 < key < 32767
    assert rel_err(value, x) <= BOUND, (x, key, value)
    # the key is the bucket (gamma^(k-1), gamma^k] holding x, up to float rounding
    assert GAMMA ** (key - 1) * (1 - 1e-12) <= x <= GAMMA ** key * (1 + 1e-12), (x, key)


@given(x=VALUE, y=VALUE)
@SETTINGS
def test_keys_are_monotonic(db: psycopg.Connection, x: float, y: float) -> None:
    """sketch_quantile's interpolation relies on keys ordering values as the values do."""
    lo, hi = sorted((x, y))
    k_lo, k_hi = db.execute("SELECT aggjobs.sketch_key(%s::float8), aggjobs.sketch_key(%s::float8)",
                            (lo, hi)).fetchone()
    assert k_lo <= k_hi


ANY_FLOAT = st.one_of(VALUE, st.floats(allow_nan=True, allow_infinity=True),  # 1.7e308 too
                     st.sampled_from([0.0, -0.0, -1.0, math.inf, -math.inf, math.nan]))
SORTED = """
WITH v AS (SELECT unnest(%(xs)s::float8[]) AS x)
SELECT aggjobs.sorted_quantile((SELECT array_agg(x ORDER BY x) FROM v), %(q)s),
       (SELECT percentile_cont(%(q)s) WITHIN GROUP (ORDER BY x) FROM v)
"""


@given(xs=st.one_of(st.lists(ANY_FLOAT, min_size=1, max_size=300), DUPLICATED),
       q=st.one_of(st.sampled_from([0.0, 0.5, 0.95, 0.99, 1.0]), st.floats(0, 1)))
@SETTINGS
def test_the_exact_quantile_of_sorted_values_is_percentile_cont_bit_for_bit(
        db: psycopg.Connection, xs: list[float], q: float) -> None:
    """The hourly p95 is read off the hour's sorted values (the same array feeds the
    sketch); it must be percentile_cont's result, not merely close to it."""
    ours, exact = db.execute(SORTED, {"xs": xs, "q": q}).fetchone()
    if math.isnan(exact):
        assert math.isnan(ours)
    else:
        assert ours == exact and math.copysign(1, ours) == math.copysign(1, exact), (xs, q)


def test_the_exact_quantile_at_the_edges_of_float_arithmetic(conn: psycopg.Connection) -> None:
    assert conn.execute("SELECT aggjobs.sorted_quantile(NULL, 0.95),"
                        " aggjobs.sorted_quantile('{}', 0.95)").fetchone() == (None, None)
    # SQL arithmetic would refuse these (overflow, underflow) where percentile_cont's C does not
    for xs, q in [([-1.7e308, 1.7e308], 0.5), ([0.0, 5e-324], 0.5), ([1.0, 2.0], 1e-300),
                  ([1.0, math.inf], 0.5), ([-math.inf, math.inf], 0.5), ([2.0, 2.0, 2.0], 0.95)]:
        ours, exact = conn.execute(SORTED, {"xs": xs, "q": q}).fetchone()
        assert ours == exact or (math.isnan(ours) and math.isnan(exact)), (xs, q, ours, exact)


# ------------------------------------------------------------------------------ fixed cases


def test_the_bound_is_the_documented_one_and_is_reached(conn: psycopg.Connection) -> None:
    """Over every bucket boundary in 1e-3..1e6 the worst error is (gamma-1)/(gamma+1)."""
    worst = conn.execute(
        "SELECT max(abs(aggjobs.sketch_value(aggjobs.sketch_key(x)) - x) / x)"
        " FROM (SELECT power(1.015::float8, i) AS x FROM generate_series(-463, 927) AS i) AS b"
    ).fetchone()[0]
    documented = (GAMMA - 1) / (GAMMA + 1)
    assert documented == pytest.approx(0.00744, abs=1e-5)
    assert documented * 0.999 <= worst <= documented * (1 + 1e-9)


def test_edge_sketches(conn: psycopg.Connection) -> None:
    one = lambda q, *args: conn.execute(q, args).fetchone()[0]  # noqa: E731
    # no values (an all-NULL group): NULL, as percentile_cont
    assert one("SELECT aggjobs.sketch_quantile(NULL, NULL, 0.95)") is None
    assert one("SELECT aggjobs.sketch_quantile('{}'::int[], '{}'::bigint[], 0.95)") is None
    # values at or below 1e-9 share the bucket represented by 0
    assert one("SELECT aggjobs.sketch_key(0::float8)") == -32768
    assert one("SELECT aggjobs.sketch_value(aggjobs.sketch_key(1e-10::float8))") == 0
    # one value: every quantile is its representative
    k = one("SELECT aggjobs.sketch_key(42::float8)")
    for q in (0.0, 0.95, 1.0):
        got = one("SELECT aggjobs.sketch_quantile(ARRAY[%s]::int[], ARRAY[7]::bigint[], %s)", k, q)
        assert got == pytest.approx(42, rel=BOUND)
    # two buckets, 19 and 1: p95 interpolates between rank 18 (low) and rank 19 (high)
    lo, hi = one("SELECT aggjobs.sketch_value(100)"), one("SELECT aggjobs.sketch_value(200)")
    got = one("SELECT aggjobs.sketch_quantile(ARRAY[100, 200], ARRAY[19, 1]::bigint[], 0.95)")
    assert got == pytest.approx(lo + 0.05 * (hi - lo), rel=1e-12)
