"""Typed settings, read from the environment (AGGJOBS_*) once per process."""

from __future__ import annotations

import ipaddress
from functools import lru_cache
from pathlib import Path

from pydantic import Field, ValidationError, ValidationInfo, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from .errors import ConfigError

# Days kept per class of table (0: forever): raw source rows, hourly, daily and weekly
# rollups, job history (docs/contract.md#retention).
RETENTION_DAYS = {"raw": 90, "hourly": 90, "daily": 730, "weekly": 0, "job_runs": 90}
# Lag (seconds) behind the last complete bucket beyond which a grain's tables are stale: the
# hourly job runs at :05, the daily at 01:00, the weekly on Mondays at 02:00.
FRESHNESS_TARGET_S = {"hour": 2 * 3600, "day": 26 * 3600, "week": 7 * 86400 + 7200}


class Settings(BaseSettings):
    """Everything configurable about aggjobs; each field is also `AGGJOBS_<NAME>`."""

    model_config = SettingsConfigDict(env_prefix="AGGJOBS_", extra="ignore")

    database_url: str | None = Field(
        default=None,
        description="PostgreSQL URL; unset means the embedded PostgreSQL under data_dir.",
    )
    read_database_url: str | None = Field(
        default=None,
        description="PostgreSQL URL of a read replica for the API's reading routes "
        "(dashboard, /api/jobs, /api/rollups, runs, reports, /metrics); unset: database_url.",
    )
    data_dir: Path = Field(
        default=Path(".aggjobs"),
        description="Where the embedded PostgreSQL keeps its data.",
    )
    rollups: str | None = Field(
        default=None, pattern=r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*$",
        description="An importable module whose ROLLUPS declares the platform's own rollups, "
        "added to the built-in ones (docs/rollups.md, \"Changing a rollup\").",
    )
    rebuild_seconds_per_run: float = Field(
        default=1.0, ge=0,
        description="How long the hourly job may spend advancing the rebuild of a changed "
        "rollup, per rollup and run (an hour a transaction); the daily and weekly jobs and "
        "`aggjobs refresh` advance it until it has caught up, then check and swap it in.",
    )
    rebuild_check: str = Field(
        default="sample", pattern=r"^(sample|full)$",
        description="What a rebuilt version must pass before it is swapped in: `sample` "
        "verifies its latest and a few random buckets of each grain against the raw rows, "
        "`full` every bucket.",
    )
    retired_grace_days: float = Field(
        default=7, ge=0,
        description="Days a replaced version's tables are kept (schema aggjobs_retired) "
        "before the cleanup job drops them; `aggjobs migrate --prune` drops them at once.",
    )
    statement_timeout_ms: int = Field(default=300_000, ge=0)
    lock_timeout_ms: int = Field(default=5_000, ge=0)
    work_mem: str = Field(default="64MB", pattern=r"^\d+(kB|MB|GB)$")
    hours_per_transaction: int = Field(
        default=6, ge=1, description="Hourly buckets recomputed per transaction when catching up."
    )
    backfill_sessions: int = Field(
        default=1, ge=1, le=16,
        description="Database sessions a backfill recomputes hours in side by side (each a "
        "chunk of AGGJOBS_HOURS_PER_TRANSACTION hours, each with its own work_mem).",
    )
    max_buckets_per_refresh: int = Field(
        default=24 * 7, ge=1, description="New hourly buckets one refresh materializes at most."
    )
    dirty_groups_per_transaction: int = Field(default=20_000, ge=1)
    coalesce_fraction: float = Field(
        default=0.5,
        gt=0,
        le=1,
        description="Recompute a whole bucket once this fraction of its groups is dirty.",
    )
    scan_groups: int = Field(
        default=8, ge=1,
        description="Dirty groups of one bucket from which they are recomputed together, by "
        "one scan of their rows (fewer: looked up group by group).",
    )
    quarantine_after: int = Field(
        default=3, ge=1,
        description="Runs in which a bucket failed permanently before it is quarantined.",
    )
    trigger_lock_timeout_ms: int = Field(
        default=500,
        ge=1,
        description="How long moving the change-tracking threshold, or dropping an old "
        "partition of a source, may wait behind the platform's sessions.",
    )

    # Jobs (Celery) ------------------------------------------------------------------------
    broker_url: str | None = Field(
        default=None,
        description="Celery broker (redis://, amqp://); unset means kombu's SQLAlchemy "
        "transport on the aggjobs database itself, which needs no extra service.",
    )
    queue: str = Field(
        default="aggjobs", pattern=r"^[A-Za-z0-9_.:-]+$",
        description="The broker queue of the jobs: one per installation sharing a broker. "
        "The light jobs (hourly, views) always go here; the heavy ones too unless "
        "heavy_queue names another.",
    )
    heavy_queue: str | None = Field(
        default=None, pattern=r"^[A-Za-z0-9_.:-]+$",
        description="The broker queue of the heavy jobs (daily, weekly, cleanup); unset: the "
        "same as queue, so that one worker serves every job.",
    )
    schedule: dict[str, str] = Field(
        default_factory=dict,
        description='Cron overrides per job, e.g. {"hourly_rollup": "5 * * * *"}; '
        '"off" disables a job\'s schedule.',
    )
    idle_in_transaction_timeout_ms: int = Field(default=60_000, ge=0)
    job_time_limit_s: dict[str, int] = Field(
        default_factory=dict,
        description="Hard time limit per job, seconds (the soft limit is 90% of it).",
    )
    job_statement_timeout_ms: dict[str, int] = Field(
        default_factory=dict, description="statement_timeout per job, overriding the default."
    )
    heavy_jobs_concurrency: int = Field(
        default=1, ge=1, description="How many heavy jobs (daily, weekly, cleanup) run at once."
    )
    native: bool = Field(
        default=True,
        description="`aggjobs migrate` installs extension aggjobs_native where the server has "
        "it (docs/native.md); false drops it and the rollups run the portable SQL.",
    )
    step_concurrency: int = Field(
        default=3, ge=1,
        description="Steps of one run that may run at once (the rollups of a job, each on its "
        "own database session); 1 runs every step in turn.",
    )
    retry_attempts: int = Field(
        default=4, ge=1, description="Tries of a step on transient database errors."
    )
    retry_base_s: float = Field(default=1.0, ge=0, description="First backoff; doubles, jittered.")
    lock_wait_s: float = Field(
        default=300.0, ge=0, description="How long a job waits for a rollup busy elsewhere."
    )

    # Monitoring --------------------------------------------------------------------------------
    alert_failures: int = Field(
        default=2, ge=1, description="Runs of a job failing in a row that make it unhealthy."
    )
    alert_webhook_url: str | None = Field(
        default=None, description="Incidents (fired, resolved) are POSTed here as JSON."
    )
    freshness_target_s: dict[str, int] = Field(
        default_factory=dict,
        description='Overrides of FRESHNESS_TARGET_S, e.g. {"hour": 3600}.',
    )
    liveness_seconds: float = Field(
        default=120, ge=0, le=86400, allow_inf_nan=False,
        description="Seconds without a live worker, or without a live scheduler, after which "
        "it is a problem (at once when none was ever seen); workers and schedulers send a "
        "heartbeat every min(15 s, a quarter of it). 0 turns the check off (jobs run by "
        "another scheduler through `aggjobs run`).",
    )

    # Retention (days; 0 keeps forever) --------------------------------------------------------
    retention_days: dict[str, int] = Field(
        default_factory=dict,
        description='Overrides of RETENTION_DAYS, e.g. {"raw": 30}.',
    )
    cleanup_batch_rows: int = Field(default=10_000, ge=1)

    # HTTP API safety (docs/api.md, docs/security.md) ------------------------------------------
    max_rows_days: float = Field(
        default=31, ge=0,
        description="Longest range of buckets one read of a rollup's rows may span, in days "
        "(`aggjobs rows`, GET /api/rollups/{rollup}/{grain}/rows; 0: no cap): a live read "
        "computes what is not materialized, so its cost grows with the range.",
    )
    max_backfill_days: float = Field(
        default=31, ge=0,
        description="Longest range one backfill may span, in days (0: no cap). Over the API "
        "it is a hard limit; `aggjobs backfill --force` may exceed it (audited).",
    )
    api_rate_limit: str = Field(
        default="10/minute", max_length=200,
        description='Requests per token to the triggering routes (runs, backfills, cleanup, '
        'token changes), e.g. "10/minute" or "10/minute;100/hour"; "off" disables. Counted '
        "in each API process.",
    )
    trusted_proxies: str = Field(
        default="", max_length=2000,
        description="Comma-separated addresses or networks of reverse proxies whose "
        "X-Forwarded-For is believed; empty: the header is ignored and the peer's address "
        "is the client's.",
    )

    @field_validator("api_rate_limit")
    @classmethod
    def _rate_limit(cls, value: str) -> str:
        value = value.strip()
        if value.lower() in ("", "off"):
            return "off"
        from limits import parse_many

        try:
            parse_many(value)
        except ValueError:
            raise ValueError(f"AGGJOBS_API_RATE_LIMIT {value!r}: use e.g. \"10/minute\" or "
                             "\"10/minute;100/hour\", or \"off\"") from None
        return value

    @field_validator("trusted_proxies")
    @classmethod
    def _proxies(cls, value: str) -> str:
        items = [item.strip() for item in value.split(",") if item.strip()]
        for item in items:
            try:
                ipaddress.ip_network(item, strict=False)
            except ValueError:
                raise ValueError(f"AGGJOBS_TRUSTED_PROXIES: {item!r} is not an IP address or "
                                 "network (e.g. 10.0.0.5, 10.0.0.0/8)") from None
        return ",".join(items)

    # -- database URLs (issue 21): refused here, in one line, rather than by the driver -----
    @field_validator("database_url", "read_database_url")
    @classmethod
    def _database_url(cls, value: str | None, info: ValidationInfo) -> str | None:
        name = f"AGGJOBS_{(info.field_name or '').upper()}"
        if value is None:
            return None
        if not value.strip():
            if info.field_name == "read_database_url":
                return None  # empty: no replica, the primary serves the reads
            # unset means the embedded server; empty is more likely a variable that was
            # meant to be filled in, so it must not silently start one
            raise ValueError(f"{name} is empty: unset it to use the embedded PostgreSQL, or "
                             "set a postgresql:// URL")
        return check_postgres_url(name, value.strip())

    @field_validator("heavy_queue", mode="before")
    @classmethod
    def _heavy_queue(cls, value: object) -> object:
        return None if isinstance(value, str) and not value.strip() else value

    def queue_of(self, heavy: bool) -> str:
        """The queue of a heavy or light job: AGGJOBS_HEAVY_QUEUE or AGGJOBS_QUEUE."""
        return (self.heavy_queue or self.queue) if heavy else self.queue

    def queues(self) -> list[str]:
        """Every queue the jobs are sent to (one when both kinds share it)."""
        return list(dict.fromkeys([self.queue, self.queue_of(True)]))

    def retention(self, kind: str) -> int:
        return self.retention_days.get(kind, RETENTION_DAYS[kind])

    def freshness_target(self, grain: str) -> int:
        return self.freshness_target_s.get(grain, FRESHNESS_TARGET_S[grain])


POSTGRES_SCHEMES = ("postgresql", "postgres")


def check_postgres_url(name: str, url: str) -> str:
    """A postgresql:// URL (postgresql+driver:// too) or a libpq `key=value` string."""
    from psycopg import ProgrammingError
    from psycopg.conninfo import conninfo_to_dict

    scheme, sep, _ = url.partition("://")
    if sep and scheme.split("+")[0].lower() not in POSTGRES_SCHEMES:
        raise ValueError(f"{name}: {scheme}:// is not PostgreSQL: use "
                         "postgresql://user@host:port/dbname")
    try:
        conninfo_to_dict(url if not sep else "postgresql://" + url.partition("://")[2])
    except ProgrammingError:  # not quoted: its message may hold a password
        raise ValueError(f"{name} is not a PostgreSQL URL: use "
                         "postgresql://user@host:port/dbname") from None
    return url


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """The settings of this process; invalid ones raise ConfigError with one line per
    problem joined by "; " (the CLI prints it and exits 2)."""
    try:
        return Settings()
    except ValidationError as exc:
        raise ConfigError("invalid configuration: " + "; ".join(
            str(e["msg"]).removeprefix("Value error, ") if e["type"] == "value_error"
            else f"AGGJOBS_{'_'.join(map(str, e['loc'])).upper()}: {e['msg']}"
            for e in exc.errors())) from None
