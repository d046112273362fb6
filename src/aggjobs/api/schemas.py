"""What the API's routes take: request bodies and path parameters (their `Field`
descriptions and examples are the OpenAPI schema's), and the parsing of their times."""

from datetime import datetime
from typing import Annotated, Literal

from fastapi import Path
from pydantic import BaseModel, ConfigDict, Field

from ..catalog.grains import past_range


class RunBody(BaseModel):
    model_config = ConfigDict(extra="forbid")
    as_of: str | None = Field(default=None, max_length=64, examples=["2026-01-01T05:00Z"],
                              description="Reference time, ISO 8601 (default now).")


class BackfillBody(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)
    rollups: list[Annotated[str, Field(max_length=64)]] | None = Field(
        default=None, max_length=16, examples=[["user_activity"]],
        description="Rollups to backfill (default: all).")
    from_: str = Field(alias="from", max_length=64, examples=["2026-01-01"],
                       description="Range start, ISO 8601.")
    to: str = Field(max_length=64, examples=["2026-01-02T06:00Z"],
                    description="Range end (exclusive), ISO 8601.")


class TokenBody(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str = Field(max_length=100, examples=["grafana"],
                      description="Unique name: who or what uses it (1-100 letters, digits "
                      "or _ . @ : -).")
    role: Literal["viewer", "operator", "admin"]
    expires_days: float | None = Field(default=None, gt=0, le=36500, allow_inf_nan=False,
                                       description="Expire after this many days (default: "
                                       "never).")


# A job's name in a path; the examples (in the OpenAPI schema) are what `/docs` and schema
# based test generators try first.
JobName = Annotated[str, Path(max_length=64, examples=["hourly_rollup",
                                                        "refresh_materialized_views"])]
TokenName = Annotated[str, Path(max_length=100)]


def time_range(lo_text: str, hi_text: str) -> tuple[datetime, datetime]:
    """[from, to) of a request: both past, from before to."""
    return past_range(lo_text, hi_text, "from", "to")
