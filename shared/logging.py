"""Configure logging for every process of a site: plain key=value, or JSON lines.

``SYNC_LOG_FORMAT=json`` renders each record as one JSON object per line with
structlog, whoever logged it (ours, Celery, gunicorn, SQLAlchemy), and adds the
context bound for the request or task that is running: ``request_id`` (the
web's middleware binds it) and ``task_id``/``task`` (a worker's task signals).
Nothing else of a record is added: a message says only what its author wrote,
so the redaction that holds for the plain format holds for JSON too.
"""

from __future__ import annotations

import logging
import os

import structlog

FORMATS = ("plain", "json")
PLAIN = "%(asctime)s %(levelname)s %(name)s %(message)s"


def log_format() -> str:
    """The format ``SYNC_LOG_FORMAT`` asks for; plain unless it says json."""
    value = os.environ.get("SYNC_LOG_FORMAT", "plain").strip().lower() or "plain"
    if value not in FORMATS:
        raise ValueError(f"SYNC_LOG_FORMAT must be plain or json, got {value!r}")
    return value


def json_formatter() -> logging.Formatter:
    """A stdlib formatter that renders any record as one JSON object."""
    return structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=[
            structlog.contextvars.merge_contextvars,
            structlog.stdlib.add_log_level,
            structlog.stdlib.add_logger_name,
            structlog.processors.TimeStamper(fmt="iso", utc=True, key="ts"),
            structlog.processors.format_exc_info,
        ],
        processors=[
            structlog.stdlib.ProcessorFormatter.remove_processors_meta,
            structlog.processors.JSONRenderer(sort_keys=False),
        ],
    )


def formatter(fmt: str | None = None) -> logging.Formatter:
    return (
        json_formatter()
        if (fmt or log_format()) == "json"
        else logging.Formatter(PLAIN)
    )


def configure_logging(level: str | None = None) -> None:
    """One handler on the root logger, on stderr, in the configured format.

    Like ``logging.basicConfig``, it leaves a root logger that has handlers alone.
    """
    handler = logging.StreamHandler()
    handler.setFormatter(formatter())
    # Python's warnings reach stderr through logging, so they are JSON lines too.
    logging.captureWarnings(log_format() == "json")
    logging.basicConfig(
        level=(level or os.environ.get("SYNC_LOG_LEVEL", "INFO")).upper(),
        handlers=[handler],
    )


def bind(**values: object) -> None:
    """Start a new logging context (one request or task) with these values."""
    structlog.contextvars.clear_contextvars()
    structlog.contextvars.bind_contextvars(**values)


def unbind() -> None:
    structlog.contextvars.clear_contextvars()


def trace_headers() -> dict[str, str]:
    """``X-Request-ID`` for a call to a peer: the request's id, or the task's.

    The peer logs its side of the call under the same id, so one search finds
    both sites' lines of one pull page or one notice.
    """
    context = structlog.contextvars.get_contextvars()
    trace = context.get("request_id") or context.get("task_id")
    return {"X-Request-ID": str(trace)} if trace else {}
