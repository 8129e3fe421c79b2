"""Gunicorn settings for ``dbsync serve``: reset pooled DB connections in each
worker, keep the garbage collector off the start-up heap, clean up a dead
worker's metrics and log in the site's format."""

from __future__ import annotations

import gc
import os

from gunicorn.glogging import Logger

from shared.logging import json_formatter, log_format


def post_fork(server, worker) -> None:
    from api import wsgi

    wsgi.db.dispose(close=False)


def post_worker_init(worker) -> None:
    # Modules and the app live as long as the worker: full collections need
    # not walk them again on every page of rows a request builds.
    gc.freeze()


def child_exit(server, worker) -> None:
    # A dead worker's live gauges leave the sum (its counters stay counted).
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        from prometheus_client import multiprocess

        multiprocess.mark_process_dead(worker.pid)


class JsonLogger(Logger):
    """Gunicorn's own lines (start, worker boots, errors) as JSON too."""

    def setup(self, cfg) -> None:
        super().setup(cfg)
        for logger in (self.error_log, self.access_log):
            for handler in logger.handlers:
                handler.setFormatter(json_formatter())


if log_format() == "json":
    logger_class = JsonLogger
