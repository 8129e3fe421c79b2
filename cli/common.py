"""Give every command its site, its output helpers and one-line errors.

The site is built once per invocation from the environment; its dispatcher
reaches the broker only if a command enqueues work, so reading the database
builds no Celery app.
"""

from __future__ import annotations

import json
import re
import sys
from collections.abc import Callable
from functools import cache, wraps
from typing import Any

import click
from rich.console import Console
from rich.text import Text
from sqlalchemy.exc import OperationalError, ProgrammingError

from api.enqueue import BrokerClient
from shared.context import Site, site_from_env
from shared.control.peer import PeerClient
from shared.control.signing import KeyRing
from shared.dispatch import QueueDispatcher
from shared.errors import SyncError
from shared.settings import Settings, SettingsError

console = Console()

# What a peer's string may not bring to the operator's terminal: C0 and C1
# controls (ESC starts screen clearing, cursor moves and OSC 52 clipboard
# writes; 0x9b is a one-byte CSI), DEL, bidirectional overrides and line
# separators that make text read otherwise than it is, and lone surrogates
# that cannot be written out at all.
_UNSAFE = re.compile(
    "[\x00-\x1f\x7f-\x9f\u061c\u200e\u200f\u2028\u2029"
    "\u202a-\u202e\u2066-\u2069\ud800-\udfff]"
)
_NAMED = {"\t": "\\t", "\n": "\\n", "\r": "\\r"}


def _escape(match: re.Match[str]) -> str:
    char = match.group()
    code = ord(char)
    return _NAMED.get(char) or (f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}")


def clean(value: object) -> str:
    """``value`` as text that cannot drive the terminal: controls shown escaped.

    Every string a peer chose (table and column names, values, reasons, error
    messages) goes through here before it is printed; ``\\x1b`` is shown for an
    ESC, ``\\n`` for a newline, so nothing is hidden either.
    """
    return _UNSAFE.sub(_escape, value if isinstance(value, str) else str(value))


def cell(value: object) -> Text:
    """A table cell that shows ``value`` as it is: no markup, no emoji codes."""
    return Text(clean("" if value is None else value))


def say(message: object, err: bool = False) -> None:
    """Print one line that may hold a peer's strings."""
    click.echo(clean(message), err=err)


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
        except click.ClickException as ex:
            if clean(ex.message) == ex.message:
                raise
            raise click.ClickException(clean(ex.message)) from None
        except SyncError as ex:
            raise click.ClickException(clean(ex.message)) from None
        except SettingsError as ex:
            raise click.ClickException(clean(f"configuration: {ex}")) from None
        except (OperationalError, ProgrammingError) as ex:
            first = str(ex.orig).strip().splitlines()[0] if ex.orig else str(ex)
            if "does not exist" in first or "no such table" in first:
                first += " (run `dbsync db upgrade` first)"
            raise click.ClickException(clean(f"database: {first}")) from None

    return wrapper


# A password option given with no value: ask on the terminal. No argument can
# hold a NUL, so no typed value is mistaken for it.
ASK = "\0ask"


def read_password(
    value: str | None,
    *,
    stdin: bool,
    name: str,
    stdin_form: str,
    confirm: bool = False,
) -> str | None:
    """The password an operator gave for ``name``, the safe ways first.

    A password in the arguments shows in ``ps`` (to every local user) and in
    the shell's history: ``-`` (or ``stdin``, a ``--...-stdin`` flag) reads one
    line from stdin, for scripts; no value asks on the terminal without echo. A literal
    value still works, for old scripts, with a warning.
    """
    if stdin and value is not None:
        raise click.UsageError(f"give {name} or {stdin_form}, not both")
    if stdin or value == "-":
        return sys.stdin.readline().rstrip("\r\n")
    if value == ASK:
        if not sys.stdin.isatty():
            raise click.ClickException(
                f"{name} with no value asks on a terminal and there is none:"
                f" pipe the password to {stdin_form}"
            )
        return str(
            click.prompt("Password", hide_input=True, confirmation_prompt=confirm)
        )
    if value:
        click.echo(
            f"Warning: a password in the arguments shows in `ps` and in the shell's"
            f" history; use {name} with no value (asked for, hidden) or"
            f" {stdin_form}",
            err=True,
        )
    return value


def emit(data: Any, as_json: bool, render: Callable[[Any], None]) -> None:
    if as_json:
        click.echo(json.dumps(data, indent=2, default=str))
    else:
        render(data)


def csv_list(value: str | None) -> list[str]:
    return [v.strip() for v in (value or "").split(",") if v.strip()]
