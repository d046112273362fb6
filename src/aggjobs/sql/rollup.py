"""SQL generated from rollup definitions, composed with psycopg.sql only.

Every statement reads one *scoped relation* aliased `r`: the rows of the input (the raw
source for the first grain, the finer rollup table otherwise) restricted either to a time
range or to a set of (workspace, bucket) keys. The same measure definitions then produce:

- `insert`: the rows of the target grain for that scope (partial state included), and
- `reference`: the same outputs computed straight from the raw rows, for `verify`.

Each measure contributes aggregates computed in one GROUP BY (`g`), optional auxiliary
subqueries joined on the group (sketches and sets, which need a second level of grouping),
and the final expression of each target column.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from enum import Enum
from itertools import pairwise

from psycopg import sql

from ..catalog.grains import SUPPORTED_FROM, SUPPORTED_UNTIL, Grain
from ..catalog.model import (
    Avg,
    Count,
    Difference,
    DistinctCount,
    Filter,
    Measure,
    Quantile,
    Rollup,
    Source,
    Sum,
)

Composable = sql.Composable
I = sql.Identifier
L = sql.Literal
S = sql.SQL

STATE_KEYS, STATE_COUNTS, STATE_SUM, STATE_N, STATE_SET = (
    "__keys", "__counts", "__sum", "__n", "__set")


class Scope(Enum):
    """How the scoped relation is restricted. Parameters: RANGE `lo`/`hi`; KEYS the arrays
    `ws`/`bk` of (workspace, bucket) pairs; BUCKET `lo`/`hi` (one bucket) and a `ws` array."""

    RANGE = "range"
    KEYS = "keys"
    BUCKET = "bucket"


@dataclass(frozen=True)
class Column:
    name: str
    type: str
    not_null: bool = False


# ---------------------------------------------------------------------------- tables


def bucket_type(grain: Grain) -> str:
    return "timestamptz" if grain is Grain.HOUR else "date"


def output_columns(measure: Measure) -> list[Column]:
    match measure:
        case Count():
            return [Column(measure.name, "bigint", not_null=True)]
        case Sum() | Difference():
            return [Column(measure.name, "numeric")]
        case Avg() | Quantile():
            return [Column(measure.name, "double precision")]
        case DistinctCount():
            return [Column(measure.name, "bigint", not_null=True)]
    raise TypeError(measure)


def state_columns(measure: Measure) -> list[Column]:
    """Partial-aggregate state kept beside the outputs so that coarser grains can merge."""
    n = measure.name
    match measure:
        case Avg():
            return [Column(n + STATE_SUM, "double precision"), Column(n + STATE_N, "bigint")]
        case Quantile():
            return [Column(n + STATE_KEYS, "integer[]"), Column(n + STATE_COUNTS, "bigint[]")]
        case DistinctCount():
            return [Column(n + STATE_SET, "bigint[]")]
    return []


def measure_columns(measure: Measure) -> list[Column]:
    """Every column a measure has in a table: its outputs, then its state."""
    return output_columns(measure) + state_columns(measure)


def target_columns(rollup: Rollup, grain: Grain) -> list[Column]:
    # The key column is never NULL in the source; a further dimension may be (a run without
    # an agent), and its NULLs form one group like GROUP BY's.
    dims = [Column(rollup.source.key_column, "bigint", not_null=True)] + [
        Column(d, "bigint") for d in rollup.further_dimensions]
    bucket = [Column(grain.column, bucket_type(grain), not_null=True)]
    outputs = [c for m in rollup.measures for c in output_columns(m)]
    states = [c for m in rollup.measures for c in state_columns(m)]
    return dims + bucket + outputs + states + [Column("updated_at", "timestamptz", True)]


def table_ident(rollup: Rollup, grain: Grain) -> sql.Identifier:
    return I(rollup.schema, rollup.table(grain))


def create_table(rollup: Rollup, grain: Grain, *, nullable: frozenset[str] = frozenset()
                 ) -> sql.Composed:
    """`nullable`: columns made without NOT NULL (a rebuilt version's new measures, NULL in
    the buckets it keeps from the version before: docs/rollups.md)."""
    cols = [
        S("{} {}{}").format(I(c.name), S(c.type),
                            S(" NOT NULL" if c.not_null and c.name not in nullable else ""))
        for c in target_columns(rollup, grain)
    ]
    # (workspace, bucket) lead: the engine finds and replaces a workspace's bucket as a whole.
    further = rollup.further_dimensions
    keys = sql.SQL(", ").join(I(c) for c in (rollup.source.key_column, grain.column, *further))
    return S("CREATE TABLE IF NOT EXISTS {} ({}, UNIQUE{} ({}))").format(
        table_ident(rollup, grain), S(", ").join(cols),
        S(" NULLS NOT DISTINCT" if further else ""), keys
    )


def bucket_index_name(rollup: Rollup, grain: Grain) -> str:
    return f"{rollup.table(grain)}_{grain.column}_idx"


def create_bucket_index(rollup: Rollup, grain: Grain, include: Sequence[str] = ()
                        ) -> sql.Composed:
    """Range recomputes delete and verify by bucket alone. `include`: the columns it also
    holds, for index-only reads (views.sql makes the hourly ones so; a rebuilt version's
    index is made as the live one is: db/definitions.py, start_build)."""
    extra = S(" INCLUDE ({})").format(S(", ").join(map(I, include))) if include else S("")
    return S("CREATE INDEX IF NOT EXISTS {} ON {} ({}){}").format(
        I(bucket_index_name(rollup, grain)), table_ident(rollup, grain), I(grain.column), extra
    )


# ---------------------------------------------------------------------------- input side


@dataclass(frozen=True)
class Input:
    """The relation a grain reads: its table, time column and that column's type."""

    table: sql.Identifier
    time_column: str
    is_date: bool
    is_raw: bool


def input_of(rollup: Rollup, grain: Grain, *, raw: bool = False) -> Input:
    finer = rollup.finer(grain)
    if raw or finer is None:
        src = rollup.source
        return Input(I(src.schema, src.table), src.time_column, is_date=False, is_raw=True)
    return Input(table_ident(rollup, finer), finer.column, finer is not Grain.HOUR, False)


def utc_date(ts: Composable) -> sql.Composed:
    return S("({} AT TIME ZONE 'UTC')::date").format(ts)


def bucket_expr(col: Composable, *, is_date: bool, grain: Grain) -> Composable:
    """The UTC bucket of `col` at `grain`, whatever the session's TimeZone."""
    if is_date:
        if grain is Grain.DAY:
            return col
        return S("date_trunc('week', {}::timestamp)::date").format(col)
    if grain is Grain.HOUR:
        # date_bin with a UTC origin is date_trunc('hour', col, 'UTC') without the per-row
        # time zone lookup: half the cost of grouping an hour's runs.
        return S("date_bin('1 hour', {}, '2000-01-01 00:00:00+00')").format(col)
    if grain is Grain.DAY:
        return utc_date(col)
    return S("date_trunc('week', {} AT TIME ZONE 'UTC')::date").format(col)


def as_utc_timestamptz(col: Composable, *, is_date: bool) -> Composable:
    """A bucket value (timestamptz or UTC date) as the timestamptz of its start."""
    if is_date:
        return S("({}::timestamp AT TIME ZONE 'UTC')").format(col)
    return col


STEP_HOURS = {Grain.HOUR: 1, Grain.DAY: 24, Grain.WEEK: 168}


def bound(ts: Composable, *, is_date: bool) -> Composable:
    """A timestamptz bound, converted for comparison with a date column."""
    return utc_date(ts) if is_date else ts


def in_range(col: Composable, *, is_date: bool) -> sql.Composed:
    """`col` in [lo, hi), the placeholders' timestamptz bounds (converted for a date column)."""
    return S("{0} >= {1} AND {0} < {2}").format(
        col,
        bound(S("{}::timestamptz").format(sql.Placeholder("lo")), is_date=is_date),
        bound(S("{}::timestamptz").format(sql.Placeholder("hi")), is_date=is_date),
    )


def listed_workspaces(scope: Scope, key: sql.Identifier) -> sql.SQL | sql.Composed:
    """BUCKET's restriction to the listed workspaces (`ws`); nothing for the other scopes."""
    if scope is not Scope.BUCKET:
        return S("")
    return S(" AND {} = ANY({}::bigint[])").format(key, sql.Placeholder("ws"))


def scoped(inp: Input, key_column: str, grain: Grain, scope: Scope) -> sql.Composed:
    """The input restricted to the scope, aliased `r`.

    Keys are (workspace, bucket start as timestamptz); a key covers [start, start + step),
    computed in hours so that no DST rule of the session's TimeZone can stretch a day.
    """
    t = I(inp.time_column)
    if scope in (Scope.RANGE, Scope.BUCKET):
        # BUCKET: the listed workspaces' rows of one bucket, found by one bitmap scan of the
        # (workspace, time) index that visits each page once, where KEYS looks every
        # workspace up on its own (and visits a page once per workspace on it).
        return S("(SELECT * FROM {} WHERE {}{}) AS r").format(
            inp.table, in_range(t, is_date=inp.is_date), listed_workspaces(scope, I(key_column))
        )
    start = S("k.b")
    end = S("(k.b + make_interval(hours => {}))").format(L(STEP_HOURS[grain]))
    return S(
        "(SELECT s.* FROM unnest({}::bigint[], {}::timestamptz[]) AS k(ws, b)"
        " JOIN {} AS s ON s.{} = k.ws AND s.{} >= {} AND s.{} < {}) AS r"
    ).format(
        sql.Placeholder("ws"),
        sql.Placeholder("bk"),
        inp.table,
        I(key_column),
        t,
        bound(start, is_date=inp.is_date),
        t,
        bound(end, is_date=inp.is_date),
    )


# ---------------------------------------------------------------------------- measures


@dataclass
class Parts:
    """What the measures contribute to one statement."""

    aggs: list[tuple[str, Composable]] = field(default_factory=list)
    auxes: list[tuple[str, Composable]] = field(default_factory=list)  # joined on the group
    laterals: list[tuple[str, Composable]] = field(default_factory=list)  # one row per group
    finals: dict[str, Composable] = field(default_factory=dict)


def rcol(name: str) -> sql.Identifier:
    return I("r", name)


def filtered(agg: Composable, where: Filter | None) -> Composable:
    if where is None:
        return agg
    return S("{} FILTER (WHERE {} = {})").format(agg, rcol(where.column), L(where.value))


def zero_if(expr: Composable, flag: bool) -> Composable:
    return S("coalesce({}, 0)").format(expr) if flag else expr


@dataclass(frozen=True)
class Context:
    """One statement being generated: the input, the grain produced, the grouping."""

    rollup: Rollup
    grain: Grain
    inp: Input
    rel: Composable
    native: bool = False  # the C functions of extension aggjobs_native (native/) are installed
    # One group's input rows, correlated to the group `g` (function group_rows); None where
    # the input is a view or a computed relation (sql/live.py): merged range-wide there.
    group_rows: Composable | None = None
    # The source's numeric columns (with the C functions): their raw sums run as numeric_sum.
    numeric_columns: frozenset[str] = frozenset()

    @property
    def groups(self) -> list[tuple[str, Composable]]:
        dims = [(d, rcol(d)) for d in self.rollup.dimensions]
        b = bucket_expr(rcol(self.inp.time_column), is_date=self.inp.is_date, grain=self.grain)
        return dims + [(self.grain.column, b)]

    def group_select(self) -> sql.Composed:
        return S(", ").join(S("{} AS {}").format(e, I(a)) for a, e in self.groups)

    def group_by(self) -> sql.Composed:
        return S(", ").join(L(i + 1) for i in range(len(self.groups)))


def add_measure(parts: Parts, m: Measure, ctx: Context, *, with_state: bool) -> None:
    raw = ctx.inp.is_raw

    def g(alias: str) -> sql.Identifier:
        return I("g", alias)

    match m:
        case Count():
            agg = (filtered(S("count(*)"), m.where) if raw
                   else merged_count(rcol(m.name)))
            parts.aggs.append((m.name, agg))
            parts.finals[m.name] = g(m.name)
        case Sum():
            agg = (filtered(raw_sum(m.column, ctx), m.where) if raw
                   else merged_sum(rcol(m.name), native=ctx.native))
            parts.aggs.append((m.name, zero_if(agg, m.zero_if_empty)))
            parts.finals[m.name] = g(m.name)
        case Avg():
            add_avg(parts, m, ctx, with_state=with_state)
        case Quantile():
            add_quantile(parts, m, ctx, with_state=with_state)
        case DistinctCount():
            add_distinct(parts, m, ctx, with_state=with_state)
        case Difference():
            parts.finals[m.name] = S("coalesce({}, 0) - coalesce({}, 0)").format(
                parts.finals[m.minuend], parts.finals[m.subtrahend]
            )


def raw_sum(column: str, ctx: Context) -> sql.Composed:
    """sum(column); with the C functions, of a numeric column, numeric_sum: the same value
    and scale with its state in the group's entry, not in an allocation of its own that
    every row misses in the cache (50,000 workspaces: -146 ms of a 1.45 s hourly step,
    docs/benchmarks.md). Of another type sum() stays: over float8 it adds floats, over an
    integer it keeps its state in a bigint."""
    numeric = ctx.native and column in ctx.numeric_columns
    return S("aggjobs_native.numeric_sum({})" if numeric else "sum({})").format(rcol(column))


def merged_sum(x: Composable, *, native: bool) -> sql.Composed:
    """The finer grain's numeric sums summed; with the C functions by numeric_sum, which
    gives sum()'s value and scale from a state of one allocation (docs/native.md)."""
    return S("aggjobs_native.numeric_sum({})" if native else "sum({})").format(x)


def merged_count(x: Composable) -> sql.Composed:
    """The finer grain's counts summed: as sum(x)::bigint, its state kept in the group's
    hash entry (migration 0021)."""
    return S("aggjobs.int8_sum({})").format(x)


def add_avg(parts: Parts, m: Avg, ctx: Context, *, with_state: bool) -> None:
    s, n = m.name + STATE_SUM, m.name + STATE_N
    raw = ctx.inp.is_raw
    if raw and not with_state:  # the reference: from the raw rows, with the same definition
        add_reference_avg(parts, m, ctx)
        return
    if raw and (digest := mean_digest(ctx, m.column)) is not None:
        # the C digest of a quantile over the same column sums and counts its values
        state: tuple[Composable, Composable] = (
            I(digest, "sum"), S("coalesce({}, 0)").format(I(digest, "n")))
        parts.finals[m.name] = S("{} / nullif({}, 0)::float8").format(*state)
        if with_state:
            parts.finals[s], parts.finals[n] = state
        return
    if raw:
        # avg(x) is sum(x) / count(x), summed in the same order (float8_accum's Sx): the
        # state columns give it without a third aggregate over every row.
        parts.aggs += [(s, float_sum(rcol(m.column))), (n, S("count({})").format(rcol(m.column)))]
    else:
        parts.aggs += [
            (s, float_sum(rcol(s))),
            (n, merged_count(rcol(n))),
        ]
    parts.finals[m.name] = S("{} / nullif({}, 0)::float8").format(I("g", s), I("g", n))
    if with_state:
        parts.finals[s], parts.finals[n] = I("g", s), I("g", n)


def add_reference_avg(parts: Parts, m: Avg, ctx: Context) -> None:
    """The avg from the raw rows as the engine defines it: the float sum of each hour, then
    of each finer bucket's sums (a sum past the float range stays +-Infinity above it),
    over the count. Not avg(): float8_accum also sums squares, which overflow from values
    near 1e154."""
    x = rcol(m.column)
    if ctx.rollup.finer(ctx.grain) is None:  # the hour: one level, in the main GROUP BY
        parts.aggs.append((m.name, S("{} / nullif(count({}), 0)::float8").format(
            float_sum(x), x)))
        parts.finals[m.name] = I("g", m.name)
        return
    dims = [I(d) for d in ctx.rollup.dimensions]
    positions = S(", ").join(L(i + 1) for i in range(len(dims) + 1))
    level = S("SELECT {}, {} AS b, {} AS s, count({}) AS n FROM {} GROUP BY {}").format(
        S(", ").join(rcol(d) for d in ctx.rollup.dimensions),
        bucket_expr(rcol(ctx.inp.time_column), is_date=False, grain=Grain.HOUR),
        float_sum(x), x, ctx.rel, positions)
    chain = ctx.rollup.grains[: ctx.rollup.grains.index(ctx.grain) + 1]
    for finer, grain in pairwise(chain):
        level = S("SELECT {}, {} AS b, {} AS s, sum(n)::bigint AS n FROM ({}) AS l"
                  " GROUP BY {}").format(
            S(", ").join(dims), bucket_expr(I("b"), is_date=finer is not Grain.HOUR, grain=grain),
            float_sum(I("s")), level, positions)
    alias = f"a_{m.name}"
    parts.auxes.append((alias, S("SELECT {}, b AS {}, s, n FROM ({}) AS l").format(
        S(", ").join(dims), I(ctx.grain.column), level)))
    parts.finals[m.name] = S("{} / nullif({}, 0)::float8").format(I(alias, "s"), I(alias, "n"))


BIG = "'9.7453140114e+288'::float8"  # 2^960: fewer than 2^64 values below it cannot overflow
SCALE = "'5.421010862427522e-20'::float8"  # 2^-64: scaling by it is exact


def float_sum(x: Composable) -> sql.Composed:
    """sum(x) of float8, defined where PostgreSQL's raises "value out of range: overflow":
    +-Infinity past the float range, as IEEE arithmetic gives (aggjobs.float_sum, migration
    0012; docs/rollups.md). For ordinary data it is sum(x) bit for bit, in the same order."""
    return S("aggjobs.float_sum(sum({0}) FILTER (WHERE abs({0}) < {1}),"
             " sum({0} * {2}) FILTER (WHERE NOT abs({0}) < {1}))").format(x, S(BIG), S(SCALE))


def aux_query(ctx: Context, inner_select: Composable, inner_from: Composable,
              inner_where: Composable, outer_select: Composable) -> sql.Composed:
    """Two levels of grouping: per (group, item) inside, per group outside."""
    names = S(", ").join(I(a) for a, _ in ctx.groups)
    return S(
        "SELECT {names}, {outer} FROM (SELECT {groups}, {inner} FROM {frm} WHERE {where}"
        " GROUP BY {positions}) AS x GROUP BY {names}"
    ).format(
        names=names,
        outer=outer_select,
        groups=ctx.group_select(),
        inner=inner_select,
        frm=inner_from,
        where=inner_where,
        positions=S(", ").join(L(i) for i in range(1, len(ctx.groups) + 2)),
    )


def add_quantile(parts: Parts, m: Quantile, ctx: Context, *, with_state: bool) -> None:
    keys, counts = m.name + STATE_KEYS, m.name + STATE_COUNTS
    alias = quantile_alias(m)
    if ctx.inp.is_raw and not with_state:
        # The reference: the seed's own aggregate (docs/contract.md#the-seed); for merged
        # grains over the values as the sketch holds them.
        value: Composable = rcol(m.column)
        if ctx.rollup.finer(ctx.grain) is not None:
            value = sketch_domain(value)
        parts.aggs.append(
            (m.name, S("percentile_cont({}) WITHIN GROUP (ORDER BY {})").format(L(m.q), value))
        )
        parts.finals[m.name] = I("g", m.name)
        return
    if ctx.inp.is_raw and ctx.native:
        add_native_digest(parts, m, ctx, alias)
    elif ctx.inp.is_raw:
        add_raw_quantile(parts, m, alias)
    elif ctx.native:
        add_native_merge(parts, m, alias)
    else:
        add_portable_merge(parts, m, ctx, alias)
    if with_state:
        parts.finals[keys], parts.finals[counts] = I(alias, "keys"), I(alias, "counts")


def sketch_domain(x: Composable) -> sql.Composed:
    """`x` as the sketch (aggjobs.sketch_key) holds it: values up to 1e-9 (and negative
    ones) as 0, +Infinity and NaN as +Infinity, finite values past its top bucket
    (1.015^32766, about 1e211) as that bound; the merged p95 is within 1% of the exact
    p95 of these (docs/rollups.md, "Overflow, Infinity and NaN")."""
    return S(
        "CASE WHEN {0} <= 1e-9 THEN 0::float8"
        " WHEN {0} = 'Infinity'::float8 OR {0} = 'NaN'::float8 THEN 'Infinity'::float8"
        " WHEN {0} > power(1.015::float8, 32766) THEN power(1.015::float8, 32766)"
        " ELSE {0} END").format(x)


def add_raw_quantile(parts: Parts, m: Quantile, alias: str) -> None:
    """Exact quantile and its sketch from the group's values: collected unordered (so that
    the group can be hashed), then per group sorted once, the quantile read off by position,
    and counted into the sketch's keys; the input rows are scanned once."""
    values, ordered = m.name + "__values", f"s_{m.name}"
    parts.aggs.append(
        (values, S("array_agg({0}) FILTER (WHERE {0} IS NOT NULL)").format(rcol(m.column)))
    )
    parts.laterals.append((ordered, S(
        "SELECT array_agg(x ORDER BY x) AS v FROM unnest({}) AS x").format(I("g", values))))
    parts.finals[m.name] = S("aggjobs.sorted_quantile({}, {})").format(I(ordered, "v"),
                                                                        L(m.q))
    parts.laterals.append((alias, S(
        "SELECT array_agg(k ORDER BY k) AS keys, array_agg(c ORDER BY k) AS counts"
        " FROM (SELECT aggjobs.sketch_key(x) AS k, count(*) AS c FROM unnest({}) AS x"
        " GROUP BY 1) AS u"
    ).format(I("g", values))))


def add_native_digest(parts: Parts, m: Quantile, ctx: Context, alias: str) -> None:
    """The same outputs from the C aggregate aggjobs_native.digest_of, in the main GROUP BY:
    each group's values collected unordered (so the group can be hashed) in one array, then
    sorted once, quantile and sketch read off them; its result's fields exposed as
    add_native_merge's are. The digest an average over the column reads (mean_digest) is
    digest_mean_of's, which also gives the values' sum and count."""
    digest = m.name + "__digest"
    mean = mean_digest(ctx, m.column) == alias and any(
        isinstance(a, Avg) and a.column == m.column for a in ctx.rollup.measures)
    parts.aggs.append((digest, S("aggjobs_native.{}({}, {})").format(
        S("digest_mean_of" if mean else "digest_of"), rcol(m.column), L(m.q))))
    fields = ["quantile", "keys", "counts"] + (["sum", "n"] if mean else [])
    parts.laterals.append((alias, S("SELECT {}").format(S(", ").join(
        S("({}).{} AS {}").format(I("g", digest), I(f), I(f)) for f in fields))))
    parts.finals[m.name] = I(alias, "quantile")


def mean_digest(ctx: Context, column: str) -> str | None:
    """With the C functions, on raw rows: the lateral alias of the first quantile over
    `column`, whose digest (digest_mean_of) gives an average over the same column its sum
    and count, the values summed in their order as float_sum sums them: two filtered sums
    and a count less over every row (50,000 workspaces: -60 ms of the hourly step,
    docs/native.md). None elsewhere."""
    if not (ctx.native and ctx.inp.is_raw):
        return None
    first = next((m for m in ctx.rollup.measures
                  if isinstance(m, Quantile) and m.column == column), None)
    return None if first is None else quantile_alias(first)


def quantile_alias(m: Quantile) -> str:
    """The subquery (lateral or joined) that gives a quantile's result and sketch."""
    return f"q_{m.name}"


def add_native_merge(parts: Parts, m: Quantile, alias: str) -> None:
    """Sketches merged by the C aggregate aggjobs_native.sketch_merge, in the main GROUP BY."""
    keys, counts, sketch = m.name + STATE_KEYS, m.name + STATE_COUNTS, m.name + "__merged"
    parts.aggs.append((sketch, S("aggjobs_native.sketch_merge({}, {})").format(
        rcol(keys), rcol(counts))))
    parts.laterals.append((alias, S("SELECT ({0}).keys AS keys, ({0}).counts AS counts").format(
        I("g", sketch))))
    parts.finals[m.name] = S("aggjobs_native.sketch_quantile({}, {}, {})").format(
        I(alias, "keys"), I(alias, "counts"), L(m.q))


def add_portable_merge(parts: Parts, m: Quantile, ctx: Context, alias: str) -> None:
    """The finer grain's sketches merged in SQL. Where each group's rows can be found again
    (ctx.group_rows), one group at a time: its rows found by the (workspace, bucket) index,
    their pairs unnested in the select list and added in a hash table the size of one
    group's keys, which stays in the processor's cache; one hash aggregate of every
    (group, key) of the range, as over a view (sql/live.py), was 3 to 4 times slower
    (docs/native.md).

    unnest is in a select list there, where its rows are streamed: in FROM, each call's
    rows are stored in a tuplestore first, which took twice the time (12.6M pairs: 2.1 s
    against 0.6-0.9 s)."""
    keys, counts = m.name + STATE_KEYS, m.name + STATE_COUNTS
    ordered = S("array_agg(k ORDER BY k) AS keys, array_agg(c ORDER BY k) AS counts")
    if ctx.group_rows is not None:
        parts.laterals.append((alias, S(
            "SELECT {} FROM (SELECT k, sum(c)::bigint AS c FROM (SELECT unnest({}) AS k,"
            " unnest({}) AS c FROM {}) AS p GROUP BY k) AS u").format(
            ordered, rcol(keys), rcol(counts), ctx.group_rows)))
    else:
        inner = S("u.k AS k, sum(u.c)::bigint AS c")
        frm = S("{}, unnest({}, {}) AS u(k, c)").format(ctx.rel, rcol(keys), rcol(counts))
        parts.auxes.append((alias, aux_query(ctx, inner, frm, S("true"), ordered)))
    parts.finals[m.name] = S("aggjobs.sketch_quantile({}, {}, {})").format(
        I(alias, "keys"), I(alias, "counts"), L(m.q))


def add_distinct(parts: Parts, m: DistinctCount, ctx: Context, *, with_state: bool) -> None:
    state = m.name + STATE_SET
    if ctx.inp.is_raw and not with_state:  # the reference: the plain aggregate
        parts.aggs.append((m.name, S("count(DISTINCT {})").format(rcol(m.column))))
        parts.finals[m.name] = I("g", m.name)
        return
    if ctx.inp.is_raw or ctx.native:  # one aggregate: the set, and by its size the count
        parts.aggs.append((state, set_aggregate(m, ctx)))
        parts.finals[m.name] = S("coalesce(cardinality({}), 0)").format(I("g", state))
        if with_state:
            parts.finals[state] = I("g", state)
        return
    alias = f"d_{m.name}"
    if ctx.group_rows is not None:  # one group at a time, as add_portable_merge
        parts.laterals.append((alias, S(
            "SELECT array_agg(DISTINCT v ORDER BY v) AS members"
            " FROM (SELECT unnest({}) AS v FROM {}) AS p").format(rcol(state), ctx.group_rows)))
    else:
        names = S(", ").join(I(a) for a, _ in ctx.groups)
        parts.auxes.append((alias, S(
            "SELECT {groups}, array_agg(DISTINCT u.v ORDER BY u.v) AS members"
            " FROM {rel}, unnest({col}) AS u(v) GROUP BY {names}"
        ).format(groups=ctx.group_select(), rel=ctx.rel, col=rcol(state), names=names)))
    parts.finals[m.name] = S("coalesce(cardinality({}), 0)").format(I(alias, "members"))
    if with_state:
        parts.finals[state] = I(alias, "members")


def set_aggregate(m: DistinctCount, ctx: Context) -> Composable:
    """The group's set of distinct values, ascending: a distinct sort of the raw values, or
    with the C functions (hashable: docs/native.md) set_of over the raw values and set_union
    over the finer grain's sets."""
    if ctx.native and ctx.inp.is_raw:
        return S("aggjobs_native.set_of({})").format(rcol(m.column))
    if ctx.native:
        return S("aggjobs_native.set_union({})").format(rcol(m.name + STATE_SET))
    return S("array_agg(DISTINCT {0} ORDER BY {0}) FILTER (WHERE {0} IS NOT NULL)").format(
        rcol(m.column))


def collect(ctx: Context, *, with_state: bool) -> Parts:
    parts = Parts()
    for m in ctx.rollup.measures:
        add_measure(parts, m, ctx, with_state=with_state)
    return parts


def select_groups(ctx: Context, parts: Parts, columns: list[str]) -> sql.Composed:
    """SELECT <group columns>, <columns> for the scope, joining the auxiliary subqueries."""
    names = [a for a, _ in ctx.groups]
    g = S("SELECT {}, {} FROM {} GROUP BY {}").format(
        ctx.group_select(),
        S(", ").join(S("{} AS {}").format(e, I(a)) for a, e in parts.aggs),
        ctx.rel,
        ctx.group_by(),
    )
    joins = [
        S("LEFT JOIN ({}) AS {} {}").format(q, I(alias), join_on(ctx, alias))
        for alias, q in parts.auxes
    ] + [S("CROSS JOIN LATERAL ({}) AS {}").format(q, I(alias)) for alias, q in parts.laterals]
    return S("SELECT {}, {} FROM ({}) AS g {}").format(
        S(", ").join(I("g", n) for n in names),
        S(", ").join(S("{} AS {}").format(parts.finals[c], I(c)) for c in columns),
        g,
        S(" ").join(joins),
    )


def join_on(ctx: Context, alias: str) -> sql.Composed:
    """How an auxiliary subquery joins its group. A further dimension may be NULL, and USING
    (=) would drop such a group's values: it matches NULL to NULL, on a coalesce for a hash
    join (dimensions are integers) and IS NOT DISTINCT FROM for exactness."""
    names = [a for a, _ in ctx.groups]
    nullable = set(ctx.rollup.further_dimensions)
    if not nullable:
        return S("USING ({})").format(S(", ").join(map(I, names)))
    return S("ON ") + S(" AND ").join(
        S("coalesce({0}, 0) = coalesce({1}, 0) AND {0} IS NOT DISTINCT FROM {1}").format(
            I("g", n), I(alias, n)) if n in nullable
        else S("{} = {}").format(I("g", n), I(alias, n)) for n in names)


def context(rollup: Rollup, grain: Grain, scope: Scope, *, raw: bool = False,
            native: bool = False, numeric_columns: frozenset[str] = frozenset()) -> Context:
    inp = input_of(rollup, grain, raw=raw)
    rel = scoped(inp, rollup.source.key_column, grain, scope)
    rows = None if inp.is_raw else group_rows(rollup, grain, inp, scope)
    return Context(rollup, grain, inp, rel, native, rows, numeric_columns)


def group_rows(rollup: Rollup, grain: Grain, inp: Input, scope: Scope) -> sql.Composed:
    """The input rows of the group `g` (its dimensions, its bucket), aliased `r`, within
    the scope's range: what `scoped` holds of that group. A further dimension may be NULL
    and is matched NULL to NULL."""
    key, *further = rollup.dimensions
    t = rcol(inp.time_column)
    start = as_utc_timestamptz(I("g", grain.column), is_date=True)
    end = S("({} + make_interval(hours => {}))").format(start, L(STEP_HOURS[grain]))
    conds = [S("{} = {}").format(rcol(key), I("g", key))]
    conds += [S("{} IS NOT DISTINCT FROM {}").format(rcol(d), I("g", d)) for d in further]
    conds += [S("{} >= {}").format(t, bound(start, is_date=inp.is_date)),
              S("{} < {}").format(t, bound(end, is_date=inp.is_date))]
    if scope is not Scope.KEYS:  # KEYS: each key is one whole bucket
        conds.append(in_range(t, is_date=inp.is_date))
    return S("{} AS r WHERE {}").format(inp.table, S(" AND ").join(conds))


# ---------------------------------------------------------------------------- statements


def value_columns(rollup: Rollup, grain: Grain) -> list[str]:
    fixed = {*rollup.dimensions, grain.column, "updated_at"}
    return [c.name for c in target_columns(rollup, grain) if c.name not in fixed]


def output_names(rollup: Rollup) -> list[str]:
    return [c.name for m in rollup.measures for c in output_columns(m)]


def coarser_marking(rollup: Rollup, grain: Grain, changed: str, *,
                    marks: bool = True) -> sql.SQL | sql.Composed:
    """INSERT the coarser grain's groups holding the rows in CTE `changed` into
    pending_groups, for buckets that grain has already materialized. Nothing when there is
    no coarser grain, or with `marks=False` (the caller marks them: mark_coarser_range)."""
    coarser = rollup.coarser(grain)
    if coarser is None or not marks:
        return S("SELECT 1 WHERE false")
    is_date = grain is not Grain.HOUR
    start = as_utc_timestamptz(
        bucket_expr(I(changed, grain.column), is_date=is_date, grain=coarser), is_date=True
    )
    return S(
        "INSERT INTO aggjobs.pending_groups (rollup, grain, bucket, workspace_id)"
        " SELECT DISTINCT {r}, {cg}, {start}, {ws} FROM {changed}"
        " WHERE {start} < (SELECT watermark FROM aggjobs.watermarks"
        " WHERE rollup = {r} AND grain = {cg})"
        " ON CONFLICT DO NOTHING RETURNING 1"
    ).format(
        r=L(rollup.name),
        cg=L(coarser.value),
        start=start,
        ws=I(changed, rollup.source.key_column),
        changed=I(changed),
    )


def counted(cte_name: str, cte: Composable, marking: Composable) -> sql.Composed:
    return S(
        "WITH {c} AS ({cte}), marked AS ({mark})"
        " SELECT (SELECT count(*) FROM {c}), (SELECT count(*) FROM marked)"
    ).format(c=I(cte_name), cte=cte, mark=marking)


def mark_coarser_range(rollup: Rollup, grain: Grain) -> sql.Composed:
    """Mark the coarser groups holding the target's rows in [lo, hi); returns (rows, groups
    marked). For recomputes that leave marking to their caller (`marks=False`)."""
    col, key = I(grain.column), I(rollup.source.key_column)
    rows = S("SELECT {}, {} FROM {} WHERE {}").format(
        key, col, table_ident(rollup, grain), in_range(col, is_date=grain is not Grain.HOUR))
    return counted("held", rows, coarser_marking(rollup, grain, "held"))


def delete_target(rollup: Rollup, grain: Grain, scope: Scope, *,
                  marks: bool = True) -> sql.Composed:
    """Delete the target rows in scope; returns (rows deleted, coarser groups marked)."""
    table, col = table_ident(rollup, grain), I(grain.column)
    is_date = grain is not Grain.HOUR
    key = I(rollup.source.key_column)
    ret = S("RETURNING {}, {}").format(key, col)
    if scope in (Scope.RANGE, Scope.BUCKET):
        stmt = S("DELETE FROM {} WHERE {}{} {}").format(
            table, in_range(col, is_date=is_date), listed_workspaces(scope, key), ret)
    else:
        stmt = S(
            "DELETE FROM {t} AS t USING unnest({ws}::bigint[], {bk}::timestamptz[]) AS k(ws, b)"
            " WHERE t.{key} = k.ws AND t.{col} = {b} RETURNING t.{key}, t.{col}"
        ).format(
            t=table,
            ws=sql.Placeholder("ws"),
            bk=sql.Placeholder("bk"),
            key=I(rollup.source.key_column),
            col=col,
            b=bound(S("k.b"), is_date=is_date),
        )
    return counted("gone", stmt, coarser_marking(rollup, grain, "gone", marks=marks))


def insert_target(rollup: Rollup, grain: Grain, scope: Scope, *, native: bool = False,
                  marks: bool = True, numeric_columns: frozenset[str] = frozenset()
                  ) -> sql.Composed:
    """Recompute the groups in scope into the target; returns (rows written, groups marked).
    `native`: with the C functions of aggjobs_native (same results, less time), and
    `numeric_columns` the source's columns of type numeric (Context); `marks`: mark the
    coarser groups of the rows written (delete_target: of the rows deleted)."""
    ctx = context(rollup, grain, scope, native=native, numeric_columns=numeric_columns)
    values = value_columns(rollup, grain)
    parts = collect(ctx, with_state=True)
    names = [*rollup.dimensions, grain.column, *values, "updated_at"]
    select = select_groups(ctx, parts, values)
    # The target aliased, and named in RETURNING: Citus pushes the statement down to each
    # shard with now() evaluated first, and the shards' RETURNING of an unaliased target
    # named no table there ("missing FROM-clause entry", issue 18).
    stmt = S("INSERT INTO {} AS target ({}) SELECT *, now() FROM ({}) AS computed"
             " RETURNING target.{}, target.{}").format(
        table_ident(rollup, grain),
        S(", ").join(map(I, names)),
        select,
        I(rollup.source.key_column),
        I(grain.column),
    )
    return counted("made", stmt, coarser_marking(rollup, grain, "made", marks=marks))


def reference(rollup: Rollup, grain: Grain) -> sql.Composed:
    """The outputs for [lo, hi) computed from the raw rows alone (what `verify` trusts)."""
    ctx = context(rollup, grain, Scope.RANGE, raw=True)
    parts = collect(ctx, with_state=False)
    return select_groups(ctx, parts, output_names(rollup))


def stored(rollup: Rollup, grain: Grain) -> sql.Composed:
    """The stored outputs for buckets in [lo, hi)."""
    names = [*rollup.dimensions, grain.column, *output_names(rollup)]
    return S("SELECT {} FROM {} WHERE {}").format(
        S(", ").join(map(I, names)),
        table_ident(rollup, grain),
        in_range(I(grain.column), is_date=grain is not Grain.HOUR),
    )


def min_input_time(rollup: Rollup, grain: Grain) -> sql.Composed:
    """The earliest input bucket start (timestamptz), to start a first refresh from: raw
    rows outside the supported times are in no bucket, so they start nothing."""
    inp = input_of(rollup, grain)
    where = supported_times(I(inp.time_column)) if inp.is_raw else S("true")
    return S("SELECT {} FROM {} WHERE {}").format(
        as_utc_timestamptz(S("min({})").format(I(inp.time_column)), is_date=inp.is_date),
        inp.table, where,
    )


def supported_times(col: Composable) -> sql.Composed:
    """`col` within the supported times (docs/rollups.md): a range of the time index."""
    return S("{0} >= {1} AND {0} < {2}").format(col, L(SUPPORTED_FROM), L(SUPPORTED_UNTIL))


def unsupported_rows(source: Source) -> sql.Composed:
    """The source's rows outside the supported times: two range scans of the time index
    (the time column is NOT NULL by contract: docs/contract.md#source-tables)."""
    t = I(source.time_column)
    return S("SELECT * FROM {} WHERE {} < {} OR {} >= {}").format(
        I(source.schema, source.table), t, L(SUPPORTED_FROM), t, L(SUPPORTED_UNTIL))


def count_unsupported_rows(source: Source) -> sql.Composed:
    return S("SELECT count(*) FROM ({}) AS u").format(unsupported_rows(source))


def input_rows_estimate(rollup: Rollup, grain: Grain) -> sql.Composed:
    """The plan, with the planner's estimate of the input rows in [lo, hi): nothing is read."""
    inp = input_of(rollup, grain)
    return S("EXPLAIN (FORMAT JSON) SELECT 1 FROM {}").format(
        scoped(inp, rollup.source.key_column, grain, Scope.RANGE))


def input_rows_count(rollup: Rollup, grain: Grain) -> sql.Composed:
    """The input rows in [lo, hi), counted (where the planner's estimate is no measure)."""
    inp = input_of(rollup, grain)
    return S("SELECT count(*) FROM {}").format(
        scoped(inp, rollup.source.key_column, grain, Scope.RANGE))


def groups_per_bucket(rollup: Rollup, grain: Grain) -> sql.Composed:
    """How many groups each listed bucket holds now (to decide when to coalesce)."""
    is_date = grain is not Grain.HOUR
    col = I(grain.column)
    return S(
        "SELECT {b}, count(*) FROM {t} WHERE {col} IN"
        " (SELECT {conv} FROM unnest({bk}::timestamptz[]) AS x(b)) GROUP BY 1"
    ).format(
        b=as_utc_timestamptz(col, is_date=is_date),
        t=table_ident(rollup, grain),
        col=col,
        conv=bound(S("x.b"), is_date=is_date),
        bk=sql.Placeholder("bk"),
    )
