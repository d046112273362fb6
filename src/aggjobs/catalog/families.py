"""The rollups of the product contract (docs/contract.md#rollup-tables), declared."""

from __future__ import annotations

from .grains import Grain
from .model import Avg, Count, Difference, DistinctCount, Filter, Quantile, Rollup, Source, Sum

AGENT_RUNS = Source(name="agent_runs", table="agent_runs", time_column="started_at")
USER_EVENTS = Source(name="user_events", table="user_events", time_column="occurred_at")
CREDIT_TRANSACTIONS = Source(
    name="credit_transactions", table="credit_transactions", time_column="created_at"
)

EXECUTION_METRICS = Rollup(
    name="execution_metrics",
    source=AGENT_RUNS,
    description="Runs by start time: counts by outcome, runtime average and p95, credits.",
    measures=(
        Count(name="total_executions"),
        Count(name="successful_executions", where=Filter(column="status", value="completed")),
        Count(name="failed_executions", where=Filter(column="status", value="failed")),
        Avg(name="avg_runtime", column="runtime_seconds"),
        Quantile(name="p95_runtime", column="runtime_seconds", q=0.95),
        Sum(name="total_credits", column="credits_consumed"),
    ),
)

USER_ACTIVITY = Rollup(
    name="user_activity",
    source=USER_EVENTS,
    description="Distinct active users and event counts.",
    measures=(
        DistinctCount(name="active_users", column="user_id"),
        Count(name="total_events"),
    ),
)

CREDIT_CONSUMPTION = Rollup(
    name="credit_consumption",
    source=CREDIT_TRANSACTIONS,
    description="The credit ledger by kind; net = used - refunded.",
    measures=(
        Sum(name="credits_used", column="amount", where=Filter(column="kind", value="usage"),
            zero_if_empty=True),
        Sum(name="credits_refunded", column="amount", where=Filter(column="kind", value="refund"),
            zero_if_empty=True),
        Sum(name="credits_granted", column="amount", where=Filter(column="kind", value="grant"),
            zero_if_empty=True),
        Difference(name="net_credits", minuend="credits_used", subtrahend="credits_refunded"),
        Count(name="transactions"),
    ),
)

# Not in the original contract (docs/contract.md#agent_executions): what the daily reports'
# failure hot spots need per agent, so that they read a day's 35,000 agent rows instead of
# grouping its 24M runs. No weekly grain: nothing reads one.
AGENT_EXECUTIONS = Rollup(
    name="agent_executions",
    source=AGENT_RUNS,
    description="Runs per agent by start time: all of them and the failed ones.",
    dimensions=("workspace_id", "agent_id"),
    grains=(Grain.HOUR, Grain.DAY),
    measures=(
        Count(name="total_executions"),
        Count(name="failed_executions", where=Filter(column="status", value="failed")),
    ),
)

# Always in force; AGGJOBS_ROLLUPS adds the platform's own after them (catalog.declared).
BUILTIN_ROLLUPS: tuple[Rollup, ...] = (
    EXECUTION_METRICS, USER_ACTIVITY, CREDIT_CONSUMPTION, AGENT_EXECUTIONS,
)
BUILTIN_SOURCES: tuple[Source, ...] = (AGENT_RUNS, USER_EVENTS, CREDIT_TRANSACTIONS)
