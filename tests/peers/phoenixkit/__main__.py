"""The stand-in's command line: serve its API, or act as its operator.

    python -m tests.peers.phoenixkit --database-url URL init --site-url http://127.0.0.1:P \
        --allow-internal-urls --enable --mode auto_accept
    python -m tests.peers.phoenixkit --database-url URL serve --port P
    python -m tests.peers.phoenixkit --database-url URL connections create --name N --url U
    python -m tests.peers.phoenixkit --database-url URL sync <uuid> orders customers

Every command but ``serve`` prints one JSON document. Client commands add
``calls``: each HTTP call the stand-in made, as [endpoint, status].
"""

from __future__ import annotations

import json
import logging
import sys
from typing import Any

import click

from tests.peers.phoenixkit.client import PhoenixKit, SyncCrashed
from tests.peers.phoenixkit.connections import InvalidConnection
from tests.peers.phoenixkit.db import CONFIG_DEFAULTS, INCOMING_MODES, Database
from tests.peers.phoenixkit.server import make_http_server

SETTING_KEYS = (
    "sync_enabled",
    "sync_incoming_mode",
    "sync_incoming_password",
    "site_url",
)


def emit(data: Any) -> None:
    click.echo(json.dumps(data, default=str, indent=1, sort_keys=True))


def public(conn: dict[str, Any]) -> dict[str, Any]:
    """A connection row as the operator sees it (the hash cut to 8 characters)."""
    row = dict(conn)
    if row.get("auth_token_hash"):
        row["auth_token_hash"] = row["auth_token_hash"][:8]
    return row


class Context:
    def __init__(self, url: str) -> None:
        self.url = url
        self._db: Database | None = None
        self._kit: PhoenixKit | None = None

    @property
    def db(self) -> Database:
        if self._db is None:
            self._db = Database(self.url)
        return self._db

    @property
    def kit(self) -> PhoenixKit:
        if self._kit is None:
            self._kit = PhoenixKit(self.db)
        return self._kit

    def close(self) -> None:
        if self._kit is not None:
            self._kit.close()
        if self._db is not None:
            self._db.close()


@click.group()
@click.option("--database-url", envvar="PHOENIXKIT_DATABASE_URL", required=True)
@click.pass_context
def main(ctx: click.Context, database_url: str) -> None:
    """A PhoenixKit Sync stand-in (see tests/peers/phoenixkit/__init__.py)."""
    ctx.obj = Context(database_url)
    ctx.call_on_close(ctx.obj.close)


@main.command()
@click.option("--site-url", help="this site's own URL (setting site_url)")
@click.option("--prefix", help="the URL prefix of its routes (default /phoenix_kit)")
@click.option("--remote-prefix", help="remote_url_prefix (default: mirror --prefix)")
@click.option("--allow-internal-urls/--no-allow-internal-urls", default=None)
@click.option("--enable/--disable", default=None, help="setting sync_enabled")
@click.option("--mode", type=click.Choice(INCOMING_MODES), help="sync_incoming_mode")
@click.option(
    "--password", help="sync_incoming_password (plaintext, as PhoenixKit keeps it)"
)
@click.pass_obj
def init(
    obj: Context,
    site_url: str | None,
    prefix: str | None,
    remote_prefix: str | None,
    allow_internal_urls: bool | None,
    enable: bool | None,
    mode: str | None,
    password: str | None,
) -> None:
    """Create the stand-in's tables and set what is given."""
    db = obj.db
    db.install()
    if site_url is not None:
        db.set_setting("site_url", site_url)
    if prefix is not None:
        db.set_config("url_prefix", prefix)
    if remote_prefix is not None:
        db.set_config("remote_url_prefix", remote_prefix)
    if allow_internal_urls is not None:
        db.set_config("allow_internal_urls", str(allow_internal_urls).lower())
    if enable is not None:
        db.set_setting("sync_enabled", str(enable).lower())
    if mode is not None:
        db.set_setting("sync_incoming_mode", mode)
    if password is not None:
        db.set_setting("sync_incoming_password", password)
    emit(settings_of(db))


def settings_of(db: Database) -> dict[str, Any]:
    return {
        "settings": {
            k: db.setting(k) for k in SETTING_KEYS if k != "sync_incoming_password"
        }
        | {"sync_incoming_password_set": bool(db.setting("sync_incoming_password"))},
        "config": {k: db.config(k) for k in CONFIG_DEFAULTS},
    }


@main.command()
@click.option("--host", default="127.0.0.1")
@click.option("--port", type=int, required=True)
@click.pass_obj
def serve(obj: Context, host: str, port: int) -> None:
    """Answer the Sync API on HOST:PORT until stopped."""
    logging.basicConfig(
        level=logging.INFO, stream=sys.stderr, format="%(asctime)s %(name)s %(message)s"
    )
    obj.db.install()
    server = make_http_server(obj.db, host, port)
    logging.getLogger("phoenixkit.standin").info(
        "serving %s/sync/api on %s:%s", obj.db.url_prefix(), host, port
    )
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()


@main.group()
def settings() -> None:
    """phoenix_kit_settings and the stand-in's own config."""


@settings.command("show")
@click.pass_obj
def settings_show(obj: Context) -> None:
    emit(settings_of(obj.db))


@settings.command("set")
@click.argument("key")
@click.argument("value")
@click.pass_obj
def settings_set(obj: Context, key: str, value: str) -> None:
    """KEY is a setting (sync_enabled, sync_incoming_mode, sync_incoming_password,
    site_url) or a stand-in config key (url_prefix, remote_url_prefix,
    allow_internal_urls, drop_every)."""
    if key in SETTING_KEYS:
        obj.db.set_setting(key, value)
    elif key in CONFIG_DEFAULTS:
        obj.db.set_config(key, value)
    else:
        raise click.ClickException(f"unknown key {key}")
    emit(settings_of(obj.db))


@main.group()
def connections() -> None:
    """The admin's Connections page."""


@connections.command("list")
@click.pass_obj
def connections_list(obj: Context) -> None:
    emit([public(c) for c in obj.kit.conns.list()])


@connections.command("show")
@click.argument("uuid")
@click.pass_obj
def connections_show(obj: Context, uuid: str) -> None:
    conn = obj.kit.conns.get(uuid)
    if conn is None:
        raise click.ClickException("no such connection")
    emit(public(conn))


@connections.command("create")
@click.option("--name", required=True)
@click.option("--url", required=True)
@click.option(
    "--password", help="sent with register-connection (programmatic API only)"
)
@click.pass_obj
def connections_create(obj: Context, name: str, url: str, password: str | None) -> None:
    """A sender connection, registered on the remote at once (§3.1)."""
    try:
        conn, token, result = obj.kit.create_connection(name, url, password)
    except InvalidConnection as ex:
        raise click.ClickException(str(ex)) from None
    emit(
        {
            "connection": public(conn),
            "token": token,
            "notification": result,
            "calls": obj.kit.calls,
        }
    )


def _status_command(name: str, action: str) -> None:
    @connections.command(name)
    @click.argument("uuid")
    @click.option("--reason", default=None)
    @click.pass_obj
    def command(obj: Context, uuid: str, reason: str | None) -> None:
        kit = obj.kit
        fn = getattr(kit, action)
        if action in ("suspend", "revoke") and reason is not None:
            conn, outcome = fn(uuid, reason)
        else:
            conn, outcome = fn(uuid)
        emit({"connection": public(conn), "remote": outcome, "calls": kit.calls})

    command.__doc__ = f"{name.capitalize()} a connection and tell the remote (§3.5)."


for _name in ("approve", "suspend", "reactivate", "revoke"):
    _status_command(_name, _name)


@connections.command("delete")
@click.argument("uuid")
@click.pass_obj
def connections_delete(obj: Context, uuid: str) -> None:
    """Tell the remote, then delete (§3.6)."""
    emit({"remote": obj.kit.delete(uuid), "calls": obj.kit.calls})


@connections.command("regenerate-token")
@click.argument("uuid")
@click.pass_obj
def connections_regenerate(obj: Context, uuid: str) -> None:
    emit({"token": obj.kit.regenerate_token(uuid)})


@connections.command("set")
@click.argument("uuid")
@click.argument("assignments", nargs=-1, required=True)
@click.pass_obj
def connections_set(obj: Context, uuid: str, assignments: tuple[str, ...]) -> None:
    """Programmatic settings, KEY=JSON (e.g. max_records_per_request=500,
    allowed_tables='["a","b"]', status='"active"')."""
    changes: dict[str, Any] = {}
    for item in assignments:
        key, _, raw = item.partition("=")
        try:
            changes[key] = json.loads(raw)
        except ValueError:
            changes[key] = raw
    emit(public(obj.kit.update_settings(uuid, **changes)))


@main.command("page-load")
@click.pass_obj
def page_load(obj: Context) -> None:
    """Open the Connections page: its status queries and verifications (§3.7)."""
    result = obj.kit.load_connections_page()
    emit({**result, "calls": obj.kit.calls})


@main.command()
@click.argument("uuid")
@click.pass_obj
def tables(obj: Context, uuid: str) -> None:
    """The Sync view's table picker, with the "differs" marker (§3.3.1)."""
    emit({"tables": obj.kit.sync_view(uuid), "calls": obj.kit.calls})


@main.command()
@click.argument("uuid")
@click.argument("names", nargs=-1, required=True)
@click.option("--strategy", type=click.Choice(["skip", "overwrite", "merge", "append"]))
@click.option("--no-deps", is_flag=True, help="do not add the FK dependencies")
@click.pass_obj
def sync(
    obj: Context, uuid: str, names: tuple[str, ...], strategy: str | None, no_deps: bool
) -> None:
    """The bulk "Sync data" of these tables (§3.3, import path §3.4 B)."""
    try:
        result = obj.kit.sync(
            uuid, list(names), strategy, with_dependencies=not no_deps
        )
    except SyncCrashed as ex:
        result = {
            "status": "crashed",
            "table": ex.table,
            "error": ex.reason,
            "tables": ex.results,
        }
    emit({**result, "calls": obj.kit.calls})


@main.command()
@click.argument("uuid")
@click.argument("table")
@click.option("--strategy", type=click.Choice(["skip", "overwrite", "merge", "append"]))
@click.pass_obj
def pull(obj: Context, uuid: str, table: str, strategy: str | None) -> None:
    """The "precise transfer" pull of one table (§3.3.6, import path §3.4 A)."""
    emit({**obj.kit.pull_table_data(uuid, table, strategy), "calls": obj.kit.calls})


@main.command()
@click.argument("uuid")
@click.argument("table")
@click.pass_obj
def schema(obj: Context, uuid: str, table: str) -> None:
    emit({"schema": obj.kit.fetch_table_schema(uuid, table), "calls": obj.kit.calls})


@main.command()
@click.argument("uuid")
@click.argument("table")
@click.option("--limit", type=int, default=10)
@click.option("--offset", type=int, default=0)
@click.option("--ids", help="comma-separated integer ids (the UI parses integers only)")
@click.option("--range", "id_range", help="START:END, integers")
@click.pass_obj
def preview(
    obj: Context,
    uuid: str,
    table: str,
    limit: int,
    offset: int,
    ids: str | None,
    id_range: str | None,
) -> None:
    """table-records, as the precise tab's preview asks it (§1.12)."""
    id_list = [int(i) for i in ids.split(",")] if ids else None
    bounds = None
    if id_range:
        start, end = id_range.split(":")
        bounds = (int(start), int(end))
    records = obj.kit.fetch_table_records(uuid, table, limit, offset, id_list, bounds)
    emit({"records": records, "calls": obj.kit.calls})


@main.command("create-table")
@click.argument("uuid")
@click.argument("table")
@click.pass_obj
def create_table(obj: Context, uuid: str, table: str) -> None:
    """The precise tab's "create missing local table" (§1.11: cannot work)."""
    error = obj.kit.create_missing_table(uuid, table)
    emit({"created": error is None, "error": error, "calls": obj.kit.calls})


@main.command()
@click.pass_obj
def transfers(obj: Context) -> None:
    emit(obj.kit.transfers())


@main.command("remote-status")
@click.argument("site_url")
@click.pass_obj
def remote_status(obj: Context, site_url: str) -> None:
    """GET status on a remote (check_remote_status/1)."""
    emit({"status": obj.kit.check_remote_status(site_url), "calls": obj.kit.calls})


if __name__ == "__main__":
    main()
