"""Gunicorn entry point: read the environment and build the app."""

from __future__ import annotations

from api.app import create_app
from api.enqueue import CeleryDispatcher
from api.resources import data
from api.serving import ReservedThreads
from shared.context import site_from_env
from shared.logging import configure_logging
from shared.settings import Settings

configure_logging()
settings = Settings.from_env()
settings.ensure_home()
# Pools as large as the threads that may use them at once: a control call
# never waits for a connection that data streams hold.
site = site_from_env(
    CeleryDispatcher, settings, pool_size=5, max_overflow=settings.web_threads
)
db = site.db  # gunicorn_conf resets its pools after fork
app = ReservedThreads(
    create_app(site),
    {f"{settings.api_prefix}/{name}" for name in data.routes(site)},
    settings.web_data_threads,
)
