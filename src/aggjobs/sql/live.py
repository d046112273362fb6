"""The live views (docs/rollups.md, "Live reads"): `analytics.<rollup>_<grain>_live`, with
exactly the columns of `analytics.<rollup>_<grain>`, equal at the instant of the query to what
a refresh at that instant would store, plus the open bucket computed from the rows so far.

Each view is the union of two parts, both read in the statement's one snapshot (a writer's
row and its change log entry commit together, a fan-out and a refresh each move their
changes in one transaction, so the parts never disagree):

- the materialized rows of the buckets before the grain's watermark whose group has no
  change waiting (in `aggjobs.invalidation_log`, not fanned out yet, or in
  `aggjobs.pending_groups`, at this grain or a finer one);
- the other groups, computed at query time by the engine's own SQL (sql/rollup.py): the
  hour from the raw rows, the day from the hourly live view, the week from the daily one.
  That is the buckets from the watermark up to the open one, grouped together, and the
  changed groups behind it, each computed on its own by a LATERAL subquery reading its rows
  through the (workspace, time) index, with the changed group's workspace as the output
  column, so that a reader's `workspace_id = ...` reaches the changes.

The change log, the watermarks and the changed groups are read once per query, in the
view's CTEs `live_log`, `live_bounds` and `live_dirty`.

A group behind retention's horizon keeps its row (the refresh would too: its raw rows are
gone). A TRUNCATE of the source not yet seen by a refresh, or a reset it requested, makes
every bucket computed. Where extension aggjobs_native is installed the views compute with its
C functions, as the engine does (a million-run open hour in well under the seed's time), and
`AGGJOBS_NATIVE=false aggjobs migrate` makes them portable again before it drops the
extension. They read as their owner (the role that ran `aggjobs migrate`): a reader needs
only SELECT on them, not on the raw tables.
"""

from __future__ import annotations

from psycopg import sql

from ..catalog.grains import SUPPORTED_FROM, SUPPORTED_UNTIL, Grain
from ..catalog.model import Avg, DistinctCount, Quantile, Rollup, Sum
from . import rollup as r

I, L, S = sql.Identifier, sql.Literal, sql.SQL
SUFFIX = "_live"


def view_name(rollup: Rollup, grain: Grain) -> str:
    return rollup.table(grain) + SUFFIX


def view_name_of(rollup: str, grain: Grain) -> str:
    """A live rollup's view, by the rollup's name (its tables are named after it)."""
    return f"{rollup}_{grain.table_suffix}{SUFFIX}"


def view_ident(rollup: Rollup, grain: Grain) -> sql.Identifier:
    return I(rollup.schema, view_name(rollup, grain))


def watermark_of(rollup: Rollup, column: str, grain: Grain) -> sql.Composable:
    return S("(SELECT {} FROM aggjobs.watermarks WHERE rollup = {} AND grain = {})").format(
        I(column), L(rollup.name), L(grain.value))


def bounds(rollup: Rollup, grain: Grain) -> sql.Composable:
    """The view's CTE `live_bounds`, one row: `start`, where the computed buckets start
    (timestamptz: the grain's watermark; the first supported instant when none is
    materialized, or when the next refresh starts over), and `horizon`, retention's. Read
    once per query, where each use used to read the watermarks and scan the change log
    again (about half of a one-workspace read's time, docs/benchmarks.md)."""
    return S(
        "SELECT CASE WHEN EXISTS (SELECT FROM aggjobs.watermarks WHERE rollup = {r}"
        " AND grain = 'hour' AND reset_requested) OR EXISTS (SELECT FROM live_log"
        " WHERE truncated OR workspace_id IS NULL)"
        " THEN {lo} ELSE coalesce({wm}, {lo}) END AS start, {horizon} AS horizon"
    ).format(r=L(rollup.name), lo=L(SUPPORTED_FROM),
             wm=watermark_of(rollup, "watermark", grain),
             horizon=watermark_of(rollup, "horizon", grain))


START = S("(SELECT start FROM live_bounds)")


def open_end() -> sql.Composable:
    """The end of the open hour: later rows are in no bucket yet."""
    return S("least(date_bin('1 hour', now(), '2000-01-01 00:00:00+00') + interval '1 hour',"
             " {})").format(L(SUPPORTED_UNTIL))


def changes(rollup: Rollup, grain: Grain) -> sql.Composable:
    """(workspace_id, bucket) of every group of the grain with a change not yet refreshed:
    waiting at this grain, or holding one waiting at a finer grain or in the change log."""
    pending = S("SELECT workspace_id, bucket FROM aggjobs.pending_groups"
                " WHERE rollup = {} AND grain = {}").format(L(rollup.name), L(grain.value))
    finer = rollup.finer(grain)
    if finer is None:
        logged = S("SELECT workspace_id, bucket FROM live_log WHERE NOT truncated"
                   " AND workspace_id IS NOT NULL AND bucket >= {} AND bucket < {}").format(
            L(SUPPORTED_FROM), L(SUPPORTED_UNTIL))
        return S("{} UNION {}").format(pending, logged)
    trunc = "day" if grain is Grain.DAY else "week"
    return S("{} UNION SELECT workspace_id, date_trunc({}, bucket AT TIME ZONE 'UTC')"
             " AT TIME ZONE 'UTC' FROM ({}) AS f").format(pending, L(trunc),
                                                          changes(rollup, finer))


def dirty(rollup: Rollup, grain: Grain) -> sql.Composable:
    """The view's CTE `live_dirty`: the changed groups behind the watermark that a refresh
    would recompute (not those behind retention's horizon, whose inputs are gone). Computed
    once per query, for every workspace: a reader's `workspace_id = ...` filters it (so only
    that workspace's groups are read again), but cannot narrow the scans themselves, which
    the log's lack of an index makes sequential anyway."""
    return S("SELECT workspace_id, bucket FROM ({}) AS c, live_bounds AS w WHERE c.bucket"
             " < w.start AND c.bucket >= coalesce(w.horizon, '-infinity')").format(
        changes(rollup, grain))


def raw_columns(rollup: Rollup) -> list[str]:
    """The source columns the hour's SQL reads (so that the platform may drop any other)."""
    return list(dict.fromkeys([*rollup.dimensions, rollup.source.time_column,
                               *measure_columns(rollup)]))


def measure_columns(rollup: Rollup) -> list[str]:
    """The source columns the measures read: their values and their filters'."""
    cols = []
    for m in rollup.measures:
        if isinstance(m, Sum | Avg | Quantile | DistinctCount):
            cols.append(m.column)
        where = getattr(m, "where", None)
        if where is not None:
            cols.append(where.column)
    return cols


def input_columns(rollup: Rollup, grain: Grain, inp: r.Input) -> list[str]:
    """The columns of the input rows that the grain's SQL reads."""
    return raw_columns(rollup) if inp.is_raw else [
        c.name for c in r.target_columns(rollup, rollup.finer(grain) or grain)]


def changed_rows(rollup: Rollup, grain: Grain, inp: r.Input) -> sql.Composable:
    """The input rows of the changed group `d` (the row of `live_dirty` that the lateral
    subquery computing it is joined to), aliased `r`, read through the (workspace, time)
    index. The group's workspace and bucket come from `d`, so that they are constants of
    the subquery: its grouping needs no sort (a large workspace's hour is tens of thousands
    of rows, which a sort took 40 ms over, spilled past a default work_mem)."""
    key, t = rollup.source.key_column, I(inp.time_column)
    step = S("make_interval(hours => {})").format(L(r.STEP_HOURS[grain]))
    lo = r.bound(S("d.bucket"), is_date=inp.is_date)
    hi = r.bound(S("(d.bucket + {})").format(step), is_date=inp.is_date)
    return S("(SELECT {keyed} FROM {input} AS s WHERE s.{key} = d.workspace_id AND {within})"
             " AS r").format(
        input=inp.table, key=I(key),
        keyed=S(", ").join(S("d.workspace_id AS {}").format(I(c)) if c == key
                           else bucketed(rollup, inp, c, S("d.bucket"))
                           for c in input_columns(rollup, grain, inp)),
        within=by_bitmap(I("s", inp.time_column), lo, hi) if inp.is_raw
        else S("s.{0} >= {1} AND s.{0} < {2}").format(t, lo, hi))


def by_bitmap(t: sql.Composable, lo: sql.Composable, hi: sql.Composable) -> sql.Composable:
    """`t` in [lo, hi), written OR'ed with an empty range: a condition only a bitmap scan
    can serve. Raw rows lie in arrival order, not in the time index's, so a plain index scan
    (which the planner picks for the index's high correlation with time; the engine's
    recompute turns it off, engine/recompute.py, but a view cannot change planner settings)
    fetches a page per row: 4x the bitmap scan's time for a million-run hour, and as much for
    a large workspace's hour (docs/benchmarks.md)."""
    return S("(({t} >= {lo} AND {t} < {hi}) OR ({t} >= {hi} AND {t} < {lo}))").format(
        t=t, lo=lo, hi=hi)


def bucketed(rollup: Rollup, inp: r.Input, column: str, at: sql.Composable
             ) -> sql.Composable:
    """Input column `column` of row `s`, but a raw row's time as `at`, the start of the
    hour (or changed group) it was read for, when nothing else reads the time: grouping by
    it then gives the same buckets, and a reader's condition on the view's bucket column
    reaches the hours (`h.b`) and changed groups (`d.bucket`) themselves, rather than being
    a condition on every raw row's time that no index serves (the planner then read the
    whole table for one hour)."""
    time = inp.time_column
    if column != time or not inp.is_raw or time in measure_columns(rollup):
        return I("s", column)
    return S("{} AS {}").format(at, I(time))


def ahead(rollup: Rollup, grain: Grain, inp: r.Input) -> sql.Composable:
    """The input rows of the buckets from the watermark on. The raw rows hour by hour, from
    the first one's hour to the open one: each hour is then a range of the time index (or,
    for one workspace, of the (workspace, time) index) that the planner sizes as one hour,
    where a single range from the watermark, a value it cannot know, was sized as a third
    of the table (and read by parallel workers even when empty); each by a bitmap scan."""
    t, begin = I(inp.time_column), START
    cols = input_columns(rollup, grain, inp)
    if not inp.is_raw:
        return S("(SELECT {} FROM {} AS s WHERE s.{} >= {}) AS r").format(
            S(", ").join(I("s", c) for c in cols), inp.table, t,
            r.bound(begin, is_date=inp.is_date))
    first = S("(SELECT date_bin('1 hour', min(f.{t}), '2000-01-01 00:00:00+00') FROM {input}"
              " AS f WHERE f.{t} >= {begin})").format(t=t, input=inp.table, begin=begin)
    return S(
        "(SELECT {cols} FROM aggjobs.live_hours({first}, {end}) AS h(b) JOIN {input} AS s"
        " ON {within}) AS r"
    ).format(cols=S(", ").join(bucketed(rollup, inp, c, S("h.b")) for c in cols), first=first,
             end=open_end(), input=inp.table,
             within=by_bitmap(I("s", inp.time_column), S("h.b"), S("h.b + interval '1 hour'")))


def computed(rollup: Rollup, grain: Grain, *, native: bool) -> sql.Composable:
    """The computed groups, with the table's columns and types: those of the buckets from
    the watermark on, grouped together, then each changed group behind it on its own;
    `native`: with the C functions of extension aggjobs_native."""
    finer = rollup.finer(grain)
    if finer is None:
        inp = r.input_of(rollup, grain)
    else:
        inp = r.Input(view_ident(rollup, finer), finer.column, finer is not Grain.HOUR, False)

    def groups(rel: sql.Composable) -> sql.Composable:
        ctx = r.Context(rollup, grain, inp, rel, native=native)
        return r.select_groups(ctx, r.collect(ctx, with_state=True),
                               r.value_columns(rollup, grain))

    key = rollup.source.key_column
    return S("{} UNION ALL {} FROM live_dirty AS d CROSS JOIN LATERAL ({}) AS c").format(
        S("{} FROM ({}) AS c").format(typed(rollup, grain, I("c", key)),
                                      groups(ahead(rollup, grain, inp))),
        typed(rollup, grain, S("d.workspace_id")), groups(changed_rows(rollup, grain, inp)))


def typed(rollup: Rollup, grain: Grain, key: sql.Composable) -> sql.Composable:
    """SELECT the table's columns, with its types, from computed groups `c`; the workspace
    as `key` (for a changed group, its row of `live_dirty`, where a reader's condition on
    the workspace then applies)."""
    return S("SELECT {}").format(S(", ").join(
        S("now() AS updated_at") if c.name == "updated_at"
        else S("CAST({} AS {}) AS {}").format(
            key if c.name == rollup.source.key_column else I("c", c.name), S(c.type),
            I(c.name))
        for c in r.target_columns(rollup, grain)))


def materialized(rollup: Rollup, grain: Grain) -> sql.Composable:
    """The table's rows of the buckets before the watermark with no change waiting."""
    b, is_date = I("t", grain.column), grain is not Grain.HOUR
    return S(
        "SELECT {cols} FROM {table} AS t WHERE {b} < {wm} AND NOT EXISTS (SELECT FROM live_dirty"
        " AS d WHERE d.workspace_id = t.{key} AND d.bucket = {start})"
    ).format(
        cols=S(", ").join(I("t", c.name) for c in r.target_columns(rollup, grain)),
        table=r.table_ident(rollup, grain), b=b,
        wm=r.bound(START, is_date=is_date),
        key=I(rollup.source.key_column), start=r.as_utc_timestamptz(b, is_date=is_date))


def body(rollup: Rollup, grain: Grain, *, native: bool) -> sql.Composable:
    """The view's query: the materialized rows, then the computed ones, over the source's
    change log, the bounds and the changed groups, each read once (CTEs)."""
    log = S("SELECT workspace_id, bucket, truncated FROM aggjobs.invalidation_log"
            " WHERE source = {}").format(L(rollup.source.name))
    return S("WITH live_log AS ({}), live_bounds AS ({}), live_dirty AS ({}) {} UNION ALL {}"
             ).format(log, bounds(rollup, grain), dirty(rollup, grain),
                      materialized(rollup, grain), computed(rollup, grain, native=native))
