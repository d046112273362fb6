"""aggjobs: scheduled, incremental, self-healing analytics rollups over PostgreSQL."""

__version__ = "0.1.0"
