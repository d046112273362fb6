"""The engine: incremental refresh, backfill and verify (plain functions, no Celery)."""
