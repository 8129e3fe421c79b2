"""Gunicorn settings for ``dbsync serve``: reset pooled DB connections in each worker."""

from __future__ import annotations


def post_fork(server, worker) -> None:  # type: ignore[no-untyped-def]
    from api import wsgi

    wsgi.db.dispose(close=False)
