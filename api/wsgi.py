"""Gunicorn entry point: read the environment and build the app."""

from __future__ import annotations

from api.app import create_app
from api.enqueue import CeleryDispatcher
from shared.context import site_from_env
from shared.logging import configure_logging

configure_logging()
site = site_from_env(CeleryDispatcher)
db = site.db  # gunicorn_conf resets its pools after fork
app = create_app(site)
