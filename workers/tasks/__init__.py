"""Thin Celery tasks; each takes IDs and calls a shared service."""

from workers.tasks import peer, pull, syncs  # noqa: F401  (registers the tasks)
