"""Logging: human lines on a terminal, one JSON object per line elsewhere (log shippers),
each carrying the context a run adds (job, run id, step, rows, seconds, status)."""

from __future__ import annotations

import json
import logging
import sys
from datetime import UTC, datetime

CONTEXT = ("job", "run_id", "step", "status", "rows", "seconds", "attempt", "error")


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        doc = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        doc.update({k: getattr(record, k) for k in CONTEXT if hasattr(record, k)})
        if record.exc_info:
            doc["exception"] = self.formatException(record.exc_info)
        return json.dumps(doc, default=str)


class TextFormatter(logging.Formatter):
    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s: %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        line = super().format(record)
        context = " ".join(f"{k}={getattr(record, k)}" for k in CONTEXT if hasattr(record, k))
        return f"{line} [{context}]" if context else line


def formatter(stream=None) -> logging.Formatter:
    isatty = getattr(stream or sys.stderr, "isatty", None)
    return TextFormatter() if isatty and isatty() else JsonFormatter()


def setup(level: int = logging.INFO) -> None:
    """Root handler on stderr, JSON unless stderr is a terminal."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(formatter(sys.stderr))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
