"""Gunicorn settings for ``dbsync serve``: reset pooled DB connections in each
worker, and keep the garbage collector off the start-up heap."""

from __future__ import annotations

import gc


def post_fork(server, worker) -> None:
    from api import wsgi

    wsgi.db.dispose(close=False)


def post_worker_init(worker) -> None:
    # Modules and the app live as long as the worker: full collections need
    # not walk them again on every page of rows a request builds.
    gc.freeze()
