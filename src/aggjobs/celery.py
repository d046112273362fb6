"""The aggregation jobs on a platform's own Celery app (docs/jobs.md, "Adding the jobs to an
existing Celery app"):

    from celery import Celery
    import aggjobs.celery

    app = Celery("platform", broker="redis://...")
    aggjobs.celery.register(app)  # the five tasks, and their beat entries

Importing this module builds no app and starts nothing: aggjobs' own app
(aggjobs.jobs.app) is another module, used only by `aggjobs worker` and `aggjobs beat`.
"""

from __future__ import annotations

from .jobs.tasks import BeatEntryExists, TaskExists, register

__all__ = ["BeatEntryExists", "TaskExists", "register"]
