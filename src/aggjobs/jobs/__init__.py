"""Scheduled jobs: their steps (registry, steps, cleanup), how a run behaves (run, runner),
Celery (app, schedule). Their metadata is aggjobs.catalog.jobs."""
