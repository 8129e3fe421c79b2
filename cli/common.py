"""Give every command its site, its output helpers and one-line errors.

The site is built once per invocation from the environment; its dispatcher
reaches the broker only if a command enqueues work, so reading the database
builds no Celery app.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from functools import cache, wraps
from typing import Any

import click
from rich.console import Console
from sqlalchemy.exc import OperationalError, ProgrammingError

from api.enqueue import BrokerClient
from shared.context import Site, site_from_env
from shared.control.peer import PeerClient
from shared.control.signing import KeyRing
from shared.dispatch import QueueDispatcher
from shared.errors import SyncError
from shared.settings import Settings, SettingsError

console = Console()


@cache
def settings() -> Settings:
    loaded = Settings.from_env()
    loaded.ensure_home()
    return loaded


@cache
def site() -> Site:
    return site_from_env(lambda s: QueueDispatcher(s, BrokerClient(s).send), settings())


@cache
def peer() -> PeerClient:
    return PeerClient(settings(), signing_keys=KeyRing(site().db.engine))


def friendly(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Turn expected failures into one clear line and a non-zero exit."""

    @wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except SyncError as ex:
            raise click.ClickException(ex.message) from None
        except SettingsError as ex:
            raise click.ClickException(f"configuration: {ex}") from None
        except (OperationalError, ProgrammingError) as ex:
            first = str(ex.orig).strip().splitlines()[0] if ex.orig else str(ex)
            if "does not exist" in first or "no such table" in first:
                first += " (run `dbsync db upgrade` first)"
            raise click.ClickException(f"database: {first}") from None

    return wrapper


def emit(data: Any, as_json: bool, render: Callable[[Any], None]) -> None:
    if as_json:
        click.echo(json.dumps(data, indent=2, default=str))
    else:
        render(data)


def csv_list(value: str | None) -> list[str]:
    return [v.strip() for v in (value or "").split(",") if v.strip()]
