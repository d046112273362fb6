"""A platform's own Celery app, as a team that already runs Celery has one: its own name,
serializer settings, beat entry and task; then aggjobs' five jobs added with
aggjobs.celery.register (docs/jobs.md, "Adding the jobs to an existing Celery app").

Used by tests/celery/test_platform_app.py as `celery -A tests.celery.platform_app`. Its
broker and queue come from PLATFORM_BROKER_URL and PLATFORM_QUEUE; its task appends a line
to PLATFORM_TICKS; aggjobs' settings from the AGGJOBS_* environment as usual.
"""

from __future__ import annotations

import os
from pathlib import Path

from celery import Celery

import aggjobs.celery

app = Celery("platform_app", broker=os.environ.get("PLATFORM_BROKER_URL", "memory://"))
app.conf.update(
    task_default_queue=os.environ.get("PLATFORM_QUEUE", "platform"),
    task_serializer="json",
    accept_content=["json"],
    timezone="UTC",
    beat_schedule={"platform-tick": {"task": "platform.tick", "schedule": 2.0}},
)


@app.task(name="platform.tick")
def tick() -> str:
    with open(Path(os.environ.get("PLATFORM_TICKS", os.devnull)), "a") as out:
        out.write("tick\n")
    return "tick"


aggjobs.celery.register(app)
