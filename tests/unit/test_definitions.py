"""Declarations: the rules, the module AGGJOBS_ROLLUPS names, a definition's description,
fingerprint and differences (docs/rollups.md, "Changing a rollup"). Pure: no database."""

from __future__ import annotations

import dataclasses
import sys

import pytest

from aggjobs.catalog import (
    AGENT_RUNS,
    BUILTIN_ROLLUPS,
    Count,
    Difference,
    Filter,
    Grain,
    Quantile,
    Rollup,
    Source,
    Sum,
)
from aggjobs.catalog.declared import load
from aggjobs.catalog.definition import describe, differences, fingerprint, rollup_from
from aggjobs.catalog.families import EXECUTION_METRICS
from aggjobs.catalog.rules import rollup_problems
from aggjobs.errors import DeclarationError

RUNS = Count(name="runs")
BASE = Rollup(name="agent_costs", source=AGENT_RUNS, dimensions=("workspace_id", "agent_id"),
              grains=(Grain.HOUR, Grain.DAY),
              measures=(RUNS, Sum(name="credits", column="credits_consumed"),
                        Quantile(name="p90", column="runtime_seconds", q=0.9)))


def test_the_built_in_rollups_follow_the_rules_and_come_back_from_their_description() -> None:
    for rollup in BUILTIN_ROLLUPS:
        assert rollup_problems(rollup) == [], rollup.name
        order = tuple(m.name for m in rollup.measures)
        assert rollup_from(describe(rollup), order=order) == rollup


@pytest.mark.parametrize(("change", "problem"), [
    ({"name": "Agent-Costs"}, "name: 'Agent-Costs' is not a lower-case SQL name"),
    ({"name": "a" * 41}, "name: '" + "a" * 41 + "' is longer than 40"),
    ({"schema": "public"}, "schema: 'public': rollups live in schema analytics"),
    ({"grains": (Grain.HOUR, Grain.WEEK)}, "grains: (hour, week) is unsupported"),
    ({"grains": (Grain.DAY,)}, "grains: (day) is unsupported"),
    ({"grains": (Grain.HOUR, "month")}, "grains: unsupported grain 'month'"),
    ({"dimensions": ("agent_id",)}, "dimensions: must start with the source's key column"),
    ({"dimensions": ("workspace_id", "agent_id", "agent_id")}, "dimensions: a dimension is "
     "listed twice"),
    ({"measures": ()}, "measures: at least one measure"),
    ({"measures": (RUNS, Count(name="runs"))}, "measures.runs: the name is used twice"),
    ({"measures": (Count(name="hour"),)}, "measures.hour: the name is a column"),
    ({"measures": (Count(name="a__b"),)}, "measures.a__b: a measure name may not contain"),
    ({"measures": (Quantile(name="p", column="runtime_seconds", q=1.0),)},
     "measures.p.q: 1.0 must be a number strictly between 0 and 1"),
    ({"measures": (Sum(name="s", column="Bad Column"),)}, "measures.s.column:"),
    ({"measures": (Count(name="n", where=Filter(column="status", value=3)),)},  # type: ignore[arg-type]
     "measures.n.where.value: must be a string"),
    ({"measures": (Difference(name="d", minuend="runs", subtrahend="x"), RUNS)},
     "measures.d.minuend: 'runs' must name a Count or Sum declared before it"),
    ({"source": "agent_runs"}, "source: must be a Source"),
    ({"source": Source(name="runs", table="agent runs", time_column="started_at")},
     "source.table: 'agent runs' is not a lower-case SQL name"),
])
def test_a_bad_declaration_names_its_field(change: dict, problem: str) -> None:
    rollup = dataclasses.replace(BASE, **change)
    assert any(p.startswith(problem) for p in rollup_problems(rollup)), rollup_problems(rollup)


def write_module(tmp_path, monkeypatch, name: str, text: str) -> str:
    (tmp_path / f"{name}.py").write_text(text)
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, name, raising=False)
    load.cache_clear()
    return name


HEADER = "from aggjobs.catalog import AGENT_RUNS, Count, Grain, Rollup, Source\n"


@pytest.mark.parametrize(("text", "message"), [
    (HEADER + "ROLLUPS = [Rollup(name='mine', source=AGENT_RUNS, measures=(Count(name='n'),))]",
     None),
    ("", "the module must define ROLLUPS, a list or tuple of aggjobs.catalog.Rollup"),
    ("ROLLUPS = ['execution_metrics']", "the module must define ROLLUPS"),
    ("import no_such_module_here", "cannot import the module: ModuleNotFoundError"),
    (HEADER + "ROLLUPS = [Rollup(name='execution_metrics', source=AGENT_RUNS,"
     " measures=(Count(name='n'),))]",
     "rollup 'execution_metrics': name: already used by a built-in rollup"),
    (HEADER + "R = Rollup(name='mine', source=AGENT_RUNS, measures=(Count(name='n'),))\n"
     "ROLLUPS = [R, R]", "rollup 'mine': name: already used by another declared rollup"),
    (HEADER + "S = Source(name='runs2', table='agent_runs', time_column='started_at')\n"
     "ROLLUPS = [Rollup(name='mine', source=S, measures=(Count(name='n'),))]",
     "rollup 'mine': source: 'runs2' on public.agent_runs clashes with source 'agent_runs'"),
    (HEADER + "ROLLUPS = [Rollup(name='mine', source=AGENT_RUNS, grains=(Grain.DAY,),"
     " measures=(Count(name='n'),))]", "rollup 'mine': grains: (day) is unsupported"),
])
def test_the_module_aggjobs_rollups_names(tmp_path, monkeypatch, text: str,
                                         message: str | None) -> None:
    name = write_module(tmp_path, monkeypatch, "user_rollups_under_test", text)
    try:
        if message is None:
            assert [r.name for r in load(name)] == [*(r.name for r in BUILTIN_ROLLUPS), "mine"]
            return
        with pytest.raises(DeclarationError) as raised:
            load(name)
        assert str(raised.value).startswith(f"AGGJOBS_ROLLUPS={name}: ")
        assert message in str(raised.value) and "\n" not in str(raised.value)
    finally:
        load.cache_clear()


def test_order_and_description_are_no_change_everything_else_is() -> None:
    same = dataclasses.replace(BASE, measures=tuple(reversed(BASE.measures)),
                               description="another text")
    assert fingerprint(describe(same)) == fingerprint(describe(BASE))
    assert differences(describe(BASE), describe(same)) == []


P99 = Quantile(name="p99_runtime", column="runtime_seconds", q=0.99)


@pytest.mark.parametrize(("change", "expected"), [
    ({"measures": (*BASE.measures, P99)},
     [("measure added", "measures added: p99_runtime")]),
    ({"measures": BASE.measures[:2]}, [("measure removed", "measures removed: p90")]),
    ({"measures": (RUNS, Sum(name="credits", column="credits_consumed"),
                   Quantile(name="p90", column="runtime_seconds", q=0.95))},
     [("measure changed", "measure p90 changed: q 0.9 -> 0.95")]),
    ({"measures": (Count(name="runs", where=Filter(column="status", value="failed")),
                   *BASE.measures[1:])},
     [("filter changed", "filter of runs changed: no filter -> status = 'failed'")]),
    ({"measures": (Sum(name="runs", column="credits_consumed"), *BASE.measures[1:])},
     [("measure changed", "measure runs changed: count -> sum")]),
    ({"grains": (Grain.HOUR, Grain.DAY, Grain.WEEK)}, [("grain added", "grains added: week")]),
    ({"grains": (Grain.HOUR,)}, [("grain removed", "grains removed: day")]),
    ({"dimensions": ("workspace_id",)},
     [("dimensions", "dimensions: workspace_id, agent_id -> workspace_id")]),
    ({"measures": (Count(name="executions"), *BASE.measures[1:])},  # a rename
     [("measure added", "measures added: executions"),
      ("measure removed", "measures removed: runs")]),
])
def test_differences_say_what_changed_and_what_it_costs(change: dict, expected: list) -> None:
    new = dataclasses.replace(BASE, **change)
    found = differences(describe(BASE), describe(new))
    assert [(c.kind, c.text) for c in found] == expected
    assert fingerprint(describe(new)) != fingerprint(describe(BASE))
    cheap = {"measure removed", "grain added", "grain removed"}
    assert [c.rebuilds for c in found] == [c.kind not in cheap for c in found]


def test_the_issue_scenario_is_a_rebuild() -> None:
    new = dataclasses.replace(EXECUTION_METRICS, measures=(*EXECUTION_METRICS.measures, P99))
    [change] = differences(describe(EXECUTION_METRICS), describe(new))
    assert change.text == "measures added: p99_runtime" and change.rebuilds
