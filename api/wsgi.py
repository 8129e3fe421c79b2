"""Gunicorn entry point: read the environment and build the app."""

from __future__ import annotations

from api.app import create_app
from api.enqueue import CeleryDispatcher
from shared.context import Site
from shared.db import Database
from shared.logging import configure_logging
from shared.settings import Settings

settings = Settings.from_env()
settings.ensure_home()
configure_logging()
db = Database(settings.database_url, settings.data_database_url)
app = create_app(Site(settings, db, CeleryDispatcher(settings)))
