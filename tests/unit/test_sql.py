"""The SQL each rollup definition produces, pinned as text; and the catalog's rules.

After an intended change to the generator, regenerate the snapshots with
`AGGJOBS_UPDATE_SNAPSHOTS=1 pytest tests/unit/test_sql.py` and review the diff.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from aggjobs.catalog import BUILTIN_ROLLUPS, get_rollup, select_rollups
from aggjobs.catalog.model import Count, Rollup, Source, Sum
from aggjobs.catalog.rules import rollup_problems
from aggjobs.errors import UnknownRollup
from aggjobs.sql import queries, tracking
from aggjobs.sql import rollup as r

SNAPSHOTS = Path(__file__).parent / "snapshots"


# The contract's source columns of type numeric (docs/contract.md): the credits.
CONTRACT_NUMERIC = frozenset({"credits_consumed", "amount"})


def generated(rollup: Rollup) -> str:
    parts = []
    for grain in rollup.grains:
        stmts = {
            "create_table": r.create_table(rollup, grain),
            "insert_range": r.insert_target(rollup, grain, r.Scope.RANGE),
            "insert_keys": r.insert_target(rollup, grain, r.Scope.KEYS),
            "insert_range_native": r.insert_target(rollup, grain, r.Scope.RANGE, native=True,
                                                   numeric_columns=CONTRACT_NUMERIC),
            "insert_bucket": r.insert_target(rollup, grain, r.Scope.BUCKET),
            "delete_bucket": r.delete_target(rollup, grain, r.Scope.BUCKET),
            "delete_range": r.delete_target(rollup, grain, r.Scope.RANGE),
            "delete_keys": r.delete_target(rollup, grain, r.Scope.KEYS),
            "reference": r.reference(rollup, grain),
        }
        parts += [f"-- {grain.value} {name}\n{s.as_string(None)};\n" for name, s in stmts.items()]
    return "\n".join(parts)


@pytest.mark.parametrize("rollup", BUILTIN_ROLLUPS, ids=lambda x: x.name)
def test_generated_sql_is_pinned(rollup: Rollup) -> None:
    path = SNAPSHOTS / f"{rollup.name}.sql"
    text = generated(rollup)
    if os.environ.get("AGGJOBS_UPDATE_SNAPSHOTS"):
        path.write_text(text)
    assert text == path.read_text()


def test_hourly_p95_is_exact_and_merged_p95_reads_the_sketch() -> None:
    em = get_rollup("execution_metrics")
    hourly = r.insert_target(em, r.Grain.HOUR, r.Scope.RANGE).as_string(None)
    daily = r.insert_target(em, r.Grain.DAY, r.Scope.RANGE).as_string(None)
    reference = r.reference(em, r.Grain.HOUR).as_string(None)
    # The hour's p95 is read off its sorted values, which also feed the sketch: one scan.
    assert "aggjobs.sorted_quantile(" in hourly and "percentile_cont" not in hourly
    assert hourly.count('"public"."agent_runs"') == 1
    assert "percentile_cont(0.95) WITHIN GROUP" in reference  # verify trusts the seed's SQL (docs/contract.md#the-seed)
    assert "percentile_cont" not in daily and "sketch_quantile" in daily
    assert '"public"."agent_runs"' not in daily  # merged grains never re-read raw rows


def test_the_c_functions_replace_the_per_value_sql() -> None:
    """With aggjobs_native the hour's values are collected unordered (the groups can be
    hashed) and digested in C; merged grains use the C aggregates; the reference is
    unchanged."""
    em = get_rollup("execution_metrics")
    hourly = r.insert_target(em, r.Grain.HOUR, r.Scope.RANGE, native=True).as_string(None)
    daily = r.insert_target(em, r.Grain.DAY, r.Scope.RANGE, native=True).as_string(None)
    assert "aggjobs_native.digest_mean_of(" in hourly and "ORDER BY" not in hourly
    # the average over the p95's column: its sum and count from that digest
    assert "float_sum" not in hourly and 'count("r"."runtime_seconds")' not in hourly
    assert '"q_p95_runtime"."sum" AS "avg_runtime__sum"' in hourly
    assert "unnest" not in daily and "aggjobs_native.sketch_merge(" in daily
    assert "aggjobs_native.sketch_quantile(" in daily
    # distinct sets: hashed set_of over the hour's values, set_union over finer sets
    ua = get_rollup("user_activity")
    ua_hourly = r.insert_target(ua, r.Grain.HOUR, r.Scope.RANGE, native=True).as_string(None)
    ua_daily = r.insert_target(ua, r.Grain.DAY, r.Scope.RANGE, native=True).as_string(None)
    assert "aggjobs_native.set_of(" in ua_hourly and "array_agg(DISTINCT" not in ua_hourly
    assert "aggjobs_native.set_union(" in ua_daily and "unnest" not in ua_daily
    # numeric sums: numeric_sum over finer sums, and over a raw column known to be numeric;
    # over a raw column of another type (float8: float additions) sum() stays
    cc = get_rollup("credit_consumption")
    cc_hourly = r.insert_target(cc, r.Grain.HOUR, r.Scope.RANGE, native=True).as_string(None)
    cc_daily = r.insert_target(cc, r.Grain.DAY, r.Scope.RANGE, native=True).as_string(None)
    assert cc_hourly == r.insert_target(cc, r.Grain.HOUR, r.Scope.RANGE).as_string(None)
    cc_numeric = r.insert_target(cc, r.Grain.HOUR, r.Scope.RANGE, native=True,
                                 numeric_columns=CONTRACT_NUMERIC).as_string(None)
    assert 'aggjobs_native.numeric_sum("r"."amount")' in cc_numeric
    assert cc_numeric.replace("aggjobs_native.numeric_sum(", "sum(") == cc_hourly
    assert r.insert_target(cc, r.Grain.HOUR, r.Scope.RANGE, numeric_columns=CONTRACT_NUMERIC
                           ).as_string(None) == cc_hourly  # portable: sum() whatever the type
    assert 'coalesce(aggjobs_native.numeric_sum("r"."credits_used"), 0)' in cc_daily
    assert (cc_daily.replace("aggjobs_native.numeric_sum(", "sum(")
            == r.insert_target(cc, r.Grain.DAY, r.Scope.RANGE).as_string(None))


def test_tracking_triggers_compare_with_a_constant() -> None:
    from datetime import UTC, datetime

    source = get_rollup("execution_metrics").source
    text = " ".join(s.as_string(None) for s in tracking.create_triggers(
        source, datetime(2026, 11, 28, 13, tzinfo=UTC)))
    assert "WHEN (NEW.\"started_at\" < '2026-11-28 13:00:00+00:00'::timestamptz)" in text
    assert '::timestamptz::' not in text
    none = tracking.create_triggers(source, None)[0].as_string(None)
    assert "< NULL::timestamptz" in none


def test_named_queries_load() -> None:
    names = queries()
    assert {"fan_out", "take_pending", "try_rollup_lock", "find_open_backfill"} <= names.keys()
    assert all(body for body in names.values())


def test_named_queries_use_one_placeholder_style() -> None:
    """A block holds its own header comment only: a file's opening comment (which may show a
    `%(x)s`) never ends the last block of the file before, where psycopg would mix it with
    that block's `%s`."""
    import re

    for name, body in queries().items():
        text = body.replace("%%", "")
        assert not (re.search(r"%[sbt]", text) and re.search(r"%\(\w+\)[sbt]", text)), name


def test_unknown_rollup_names_the_known_ones() -> None:
    with pytest.raises(UnknownRollup, match="execution_metrics, user_activity, credit_consumption"):
        select_rollups(["executions"])
    assert [x.name for x in select_rollups(["user_activity", "user_activity"])] == ["user_activity"]


def test_a_rollup_must_group_by_its_source_key() -> None:
    src = Source(name="s", table="s", time_column="t")
    cases = [
        (dict(dimensions=("agent_id",)), "dimensions: must start with the source's key column"),
        (dict(dimensions=("agent_id", "workspace_id")), "dimensions: must start with"),
        (dict(measures=(Count(name="n"), Sum(name="n", column="a"))),
         "measures.n: the name is used twice"),
    ]
    for changed, problem in cases:
        rollup = Rollup(**{"name": "x", "source": src, "measures": (Count(name="n"),), **changed})
        assert any(p.startswith(problem) for p in rollup_problems(rollup)), (changed, problem)


