"""Typed settings, read from the environment (AGGJOBS_*) once per process."""

from __future__ import annotations

import ipaddress
import json
import os
from functools import lru_cache
from pathlib import Path
from typing import Annotated

from pydantic import Field, ValidationError, ValidationInfo, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict, SettingsError

from .errors import ConfigError

# Days kept per class of table (0: forever): raw source rows, hourly, daily and weekly
# rollups, job history (docs/contract.md#retention).
RETENTION_DAYS = {"raw": 90, "hourly": 90, "daily": 730, "weekly": 0, "job_runs": 90}
# Lag (seconds) behind the last complete bucket beyond which a grain's tables are stale: the
# hourly job runs at :05, the daily at 01:00, the weekly on Mondays at 02:00.
FRESHNESS_TARGET_S = {"hour": 2 * 3600, "day": 26 * 3600, "week": 7 * 86400 + 7200}

# A JSON object read from one variable: decoded by the field's own validator (NoDecode), so
# that malformed JSON is a one-line error naming the variable rather than a traceback.
CronsByJob = Annotated[dict[str, str], NoDecode]
NumbersByKey = Annotated[dict[str, int], NoDecode]


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
        description="Where the embedded PostgreSQL and broker keep their data, and "
        "`aggjobs up` its children's logs.",
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
        description="Celery broker (redis://, amqp://); unset: the embedded broker (Valkey, "
        "under data_dir) beside the embedded PostgreSQL, or, when database_url is set, "
        "kombu's SQLAlchemy transport on that database (docs/jobs.md#the-broker).",
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
    schedule: CronsByJob = Field(
        default_factory=dict,
        description='Cron overrides per job, e.g. {"hourly_rollup": "5 * * * *"}; '
        '"off" disables a job\'s schedule.',
    )
    idle_in_transaction_timeout_ms: int = Field(default=60_000, ge=0)
    job_time_limit_s: NumbersByKey = Field(
        default_factory=dict,
        description="Hard time limit per job, seconds (the soft limit is 90% of it).",
    )
    job_statement_timeout_ms: NumbersByKey = Field(
        default_factory=dict, description="statement_timeout per job, overriding the default."
    )
    heavy_jobs_concurrency: int = Field(
        default=1, ge=1, description="How many heavy jobs (daily, weekly, cleanup) run at once."
    )
    native: bool = Field(
        default=True,
        description="`aggjobs migrate` installs extension aggjobs_native where the server has "
        "it, and `aggjobs up` builds it for the embedded server (docs/native.md); false "
        "drops it, builds nothing, and the rollups run the portable SQL.",
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
    freshness_target_s: NumbersByKey = Field(
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
    retention_days: NumbersByKey = Field(
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

    @field_validator("schedule", "job_time_limit_s", "job_statement_timeout_ms",
                     "freshness_target_s", "retention_days", mode="before")
    @classmethod
    def _json_object(cls, value: object) -> object:
        """A variable's JSON text as the object it must be (empty: none)."""
        if not isinstance(value, str):
            return value
        if not value.strip():
            return {}
        try:
            return json.loads(value)
        except ValueError:
            raise ValueError("not JSON") from None

    @field_validator("job_time_limit_s", "freshness_target_s")
    @classmethod
    def _positive_values(cls, value: dict[str, int]) -> dict[str, int]:
        if any(v < 1 for v in value.values()):
            raise ValueError("a value below 1")
        return value

    @field_validator("job_statement_timeout_ms", "retention_days")
    @classmethod
    def _non_negative_values(cls, value: dict[str, int]) -> dict[str, int]:
        if any(v < 0 for v in value.values()):
            raise ValueError("a negative value")
        return value

    @field_validator("retention_days", "freshness_target_s")
    @classmethod
    def _known_keys(cls, value: dict[str, int], info: ValidationInfo) -> dict[str, int]:
        known = RETENTION_DAYS if info.field_name == "retention_days" else FRESHNESS_TARGET_S
        unknown = sorted(set(value) - set(known))
        if unknown:
            raise ValueError(f"unknown key {unknown[0]!r}")
        return value

    @field_validator("data_dir", mode="before")
    @classmethod
    def _data_dir(cls, value: object) -> object:
        if isinstance(value, str) and not value.strip():
            raise ValueError("empty")
        return value

    @field_validator("broker_url", mode="before")
    @classmethod
    def _broker_url(cls, value: object) -> object:
        """Empty is unset; else a URL of a transport kombu has (redis://, amqp://, ...)."""
        if not isinstance(value, str) or not value.strip():
            return None
        from kombu.transport import TRANSPORT_ALIASES

        scheme, sep, _ = value.strip().partition("://")
        if not sep or scheme.split("+")[0].lower() not in TRANSPORT_ALIASES:
            raise ValueError("not a broker URL")
        return value.strip()

    @field_validator("alert_webhook_url", mode="before")
    @classmethod
    def _webhook_url(cls, value: object) -> object:
        if not isinstance(value, str) or not value.strip():
            return None
        if not value.strip().lower().startswith(("http://", "https://")):
            raise ValueError("not an http(s) URL")
        return value.strip()

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
    """The settings of this process; invalid ones raise ConfigError, one line naming each
    invalid variable, its value and the form expected (the CLI prints it and exits 2)."""
    try:
        return Settings()
    except ValidationError as exc:
        reasons: dict[str, str] = {}  # the first problem of each variable
        for error in exc.errors():
            name = str(error["loc"][0]) if error["loc"] else ""
            own = str(error["msg"]).removeprefix("Value error, ")
            reasons.setdefault(name, own if error["type"] == "value_error" else "")
        raise ConfigError("; ".join(invalid(name, reason) for name, reason in
                                    reasons.items())) from None
    except SettingsError as exc:  # a value pydantic-settings itself could not decode
        name = str(exc).partition('field "')[2].partition('"')[0]
        raise ConfigError(invalid(name)) from None


# What the variables not described by their type and bounds alone must look like.
EXPECTED = {
    "database_url": "a PostgreSQL URL such as postgresql://user@host:5432/dbname, or unset "
                    "for the embedded PostgreSQL",
    "read_database_url": "a PostgreSQL URL such as postgresql://user@replica:5432/dbname",
    "data_dir": "a directory path, e.g. .aggjobs",
    "rollups": "an importable module name such as mycompany.rollups",
    "rebuild_check": "sample or full",
    "work_mem": "a PostgreSQL memory size such as 64MB (kB, MB or GB)",
    "broker_url": "a broker URL such as redis://127.0.0.1:6379/0 or amqp://user@host//, or "
                  "unset for the default broker",
    "queue": "a queue name of letters, digits and _ . : -",
    "heavy_queue": "a queue name of letters, digits and _ . : -",
    "schedule": 'a JSON object of job name to 5-field cron or "off", e.g. '
                '{"hourly_rollup": "5 * * * *"}',
    "job_time_limit_s": 'a JSON object of job name to seconds >= 1, e.g. '
                        '{"daily_rollup": 3600}',
    "job_statement_timeout_ms": 'a JSON object of job name to milliseconds >= 0, e.g. '
                                '{"hourly_rollup": 600000}',
    "native": "true or false",
    "alert_webhook_url": "an http:// or https:// URL",
    "freshness_target_s": "a JSON object of grain (" + ", ".join(FRESHNESS_TARGET_S)
                          + ') to seconds >= 1, e.g. {"hour": 3600}',
    "retention_days": "a JSON object of class (" + ", ".join(RETENTION_DAYS)
                      + ') to days >= 0 (0 keeps forever), e.g. {"raw": 30}',
    "api_rate_limit": 'a rate such as "10/minute" or "10/minute;100/hour", or "off"',
    "trusted_proxies": "comma-separated IP addresses or networks, e.g. 10.0.0.5,10.0.0.0/8",
}
SECRET_FIELDS = ("database_url", "read_database_url", "broker_url", "alert_webhook_url")


def variable(name: str) -> str:
    return f"AGGJOBS_{name.upper()}"


def invalid(name: str, reason: str = "") -> str:
    """`AGGJOBS_WORK_MEM='lots': expected a PostgreSQL memory size such as 64MB`, the
    validator's reason before the form unless it says it all (it names the variable). A
    URL's value is not repeated (it may hold a password)."""
    if reason.startswith(variable(name)) or name not in Settings.model_fields:
        return reason or f"{variable(name)}: invalid"
    value = os.environ.get(variable(name))
    shown = "" if value is None or name in SECRET_FIELDS else f"={value[:80]!r}"
    because = f" ({reason})" if reason else ""
    return f"{variable(name)}{shown}{because}: expected {expected_form(name)}"


def expected_form(name: str) -> str:
    """What a valid value of setting `name` looks like: said explicitly (EXPECTED), or
    derived from its type and bounds."""
    if name in EXPECTED:
        return EXPECTED[name]
    field = Settings.model_fields[name]
    kind = "a whole number" if field.annotation is int else "a number"
    bounds = [f"{op} {getattr(m, attr)}" for m in field.metadata
              for attr, op in (("ge", ">="), ("gt", ">"), ("le", "<="), ("lt", "<"))
              if hasattr(m, attr)]
    return " ".join([kind + unit(name), " and ".join(bounds)])


UNITS = {"_ms": "milliseconds", "_s": "seconds", "_days": "days"}


def unit(name: str) -> str:
    """` of seconds` for `lock_wait_s`: the unit its name ends with."""
    return next((f" of {word}" for suffix, word in UNITS.items() if name.endswith(suffix)), "")
