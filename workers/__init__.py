"""Celery workers: calls to peers, table pulls, and beat's healing jobs."""
