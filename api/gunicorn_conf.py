"""Gunicorn settings for ``dbsync serve``: reset pooled DB connections in each
worker, keep the garbage collector off the start-up heap, and let a streamed
page tell the arbiter the worker is alive."""

from __future__ import annotations

import gc


def post_fork(server, worker) -> None:
    from api import wsgi

    wsgi.db.dispose(close=False)


def post_worker_init(worker) -> None:
    from api.resources import data

    # Each chunk of a pull-data page handed over counts as the worker's
    # heartbeat, so a page that streams to a slow receiver for longer than
    # the timeout is not taken for a hung worker (see data.Streamed).
    data.server_heartbeat = worker.notify
    # Modules and the app live as long as the worker: full collections need
    # not walk them again on every page of rows a request builds.
    gc.freeze()
