"""Scheduled jobs: what each does (registry), how a run behaves (runner), Celery (app)."""
