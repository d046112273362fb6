"""Typed settings, read from the environment (AGGJOBS_*) once per process."""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict


class Settings(BaseSettings):
    """Everything configurable about aggjobs; each field is also `AGGJOBS_<NAME>`."""

    model_config = SettingsConfigDict(env_prefix="AGGJOBS_", extra="ignore")

    database_url: str | None = Field(
        default=None,
        description="PostgreSQL URL; unset means the embedded PostgreSQL under data_dir.",
    )
    data_dir: Path = Field(
        default=Path(".aggjobs"),
        description="Where the embedded PostgreSQL keeps its data.",
    )
    statement_timeout_ms: int = Field(default=300_000, ge=0)
    lock_timeout_ms: int = Field(default=5_000, ge=0)
    work_mem: str = Field(default="64MB", pattern=r"^\d+(kB|MB|GB)$")
    hours_per_transaction: int = Field(
        default=6, ge=1, description="Hourly buckets recomputed per transaction when catching up."
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
    trigger_lock_timeout_ms: int = Field(
        default=500,
        ge=1,
        description="How long moving the change-tracking threshold may wait behind writers.",
    )


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    return Settings()
