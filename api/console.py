"""The operators' console under ``{prefix}/admin``: server-rendered pages, plain forms.

Off (404) until ``dbsync admin set-password``. Every page needs a session
cookie (HttpOnly, SameSite=Strict, Secure under https); every form carries a
CSRF token bound to the session. The pages call the same services as the CLI
(shared.control.*, shared.data.receiver.*); nothing here decides business
rules. Peers' strings are escaped by Jinja2's autoescaping, and the Content
Security Policy allows no inline script.
"""

from __future__ import annotations

import datetime as dt
import hmac
import logging
from pathlib import Path
from typing import Any

import falcon
import falcon.uri
import jinja2
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from api.errors import STATUS_BY_KIND
from api.middleware import read_body, remote_ip
from shared.context import Site
from shared.control import admin, health, module
from shared.control import connections as conns
from shared.control.peer import PeerClient, PeerRefused, PeerUnavailable
from shared.data.receiver import pulls, transfers
from shared.data.receiver import syncs as sync_svc
from shared.errors import ErrorKind, SyncError
from shared.state.models import (
    STRATEGIES,
    AuditEvent,
    Connection,
    PeerNotice,
    Transfer,
)

log = logging.getLogger("dbsync.console")

HERE = Path(__file__).parent / "console_ui"
COOKIE = "dbsync_admin"
FORM_LIMIT = 64 * 1024
STATUSES = ("pending", "active", "suspended", "revoked", "expired")
ACTIONS = {
    "approve": False,
    "suspend": True,
    "reactivate": False,
    "revoke": True,
    "delete": False,
}
DONE = {  # fixed messages a redirect may name; never text from the query
    "approve": "Connection approved.",
    "suspend": "Connection suspended; the peer is told.",
    "reactivate": "Connection reactivated; the peer is told.",
    "revoke": "Connection revoked; the peer is told.",
    "delete": "Connection deleted; the peer is told.",
    "limits": "Limits saved.",
    "settings": "Settings saved.",
    "sync-create": "Sync created; beat starts its first run at its next tick.",
    "sync-pause": "Sync paused; a run in progress finishes.",
    "sync-resume": "Sync resumed.",
    "sync-run": "Sync due now; beat starts it at its next tick.",
    "sync-delete": "Sync deleted; its transfers stay.",
}
SYNC_ACTIONS = ("pause", "resume", "run", "delete")
# Cursor syncs are checked against the sender's schemas, calls a web request
# does not make: the CLI creates them.
SYNC_MODES = ("delta", "full")
SECURITY_HEADERS = {
    "Cache-Control": "no-store",
    "X-Frame-Options": "DENY",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "same-origin",
    "Content-Security-Policy": "default-src 'none'; style-src 'self'; "
    "script-src 'self'; img-src 'self'; form-action 'self'; "
    "frame-ancestors 'none'; base-uri 'none'",
}


class Kit:
    """What every page needs: the site, templates, the base path, a peer client."""

    def __init__(self, site: Site) -> None:
        self.site = site
        self.base = f"{site.settings.url_prefix}/admin"
        self.env = jinja2.Environment(
            loader=jinja2.FileSystemLoader(HERE / "templates"),
            autoescape=True,
            undefined=jinja2.StrictUndefined,
        )
        self.env.filters["every"] = _every_text
        self.env.filters["when"] = _when
        self.env.filters["keyrange"] = _key_text
        self._peer: PeerClient | None = None

    def peer(self) -> PeerClient:
        if self._peer is None:
            from shared.control.signing import KeyRing

            self._peer = PeerClient(
                self.site.settings, signing_keys=KeyRing(self.site.db.engine)
            )
        return self._peer

    def guard(self, req: falcon.Request) -> admin.AdminSession:
        session: Session = req.context.session
        if not admin.enabled(session):
            raise falcon.HTTPNotFound(title="Not found")
        current = admin.check(session, req.cookies.get(COOKIE))
        if current is None:
            raise falcon.HTTPSeeOther(f"{self.base}/login")
        req.context.admin = current
        return current

    def form(self, req: falcon.Request) -> dict[str, Any]:
        raw = read_body(req, FORM_LIMIT)
        try:
            text = raw.decode()
        except UnicodeDecodeError:
            raise falcon.HTTPBadRequest(title="Form is not UTF-8") from None
        return falcon.uri.parse_query_string(text, keep_blank=True)

    def posted(self, req: falcon.Request) -> dict[str, Any]:
        """The form of a POST by a logged-in operator whose CSRF token matches."""
        current = self.guard(req)
        form = self.form(req)
        given = form.get("csrf")
        if not isinstance(given, str) or not hmac.compare_digest(
            given.encode(), current.csrf.encode()
        ):
            raise falcon.HTTPForbidden(
                title="Forbidden", description="CSRF token missing or wrong"
            )
        return form

    def render(
        self, req: falcon.Request, resp: falcon.Response, template: str, **ctx: Any
    ) -> None:
        current = req.context.get("admin")
        resp.content_type = falcon.MEDIA_HTML
        for name, value in SECURITY_HEADERS.items():
            resp.set_header(name, value)
        resp.text = self.env.get_template(template).render(
            base=self.base,
            csrf=current.csrf if current else "",
            logged_in=current is not None,
            page=template.removesuffix(".html"),
            done=DONE.get(req.get_param("done") or ""),
            **ctx,
        )

    def fail(
        self, req: falcon.Request, resp: falcon.Response, ex: SyncError, back: str
    ) -> None:
        resp.status = STATUS_BY_KIND[ex.kind]
        self.render(req, resp, "error.html", message=str(ex), back=back)


def _one(value: Any) -> str:
    """One form field's text (a repeated field counts as its last value)."""
    if isinstance(value, list):
        value = value[-1] if value else ""
    return value.strip() if isinstance(value, str) else ""


def _many(value: Any) -> list[str]:
    values = value if isinstance(value, list) else [value]
    return [v for v in values if isinstance(v, str) and v]


def _int(form: dict[str, Any], name: str, default: int | None) -> int | None:
    text = _one(form.get(name))
    if not text:
        return default
    try:
        return int(text)
    except ValueError:
        raise SyncError(
            ErrorKind.BAD_REQUEST, f"{name} must be a whole number"
        ) from None


def _csv(text: str) -> list[str]:
    return [t.strip() for t in text.split(",") if t.strip()]


def _options(form: dict[str, Any]) -> conns.SenderOptions:
    hours = _one(form.get("allowed_hours"))
    start = end = None
    if hours:
        try:
            start, end = (int(h) for h in hours.split("-", 1))
        except ValueError:
            raise SyncError(
                ErrorKind.BAD_REQUEST, "allowed hours: use START-END, e.g. 8-18"
            ) from None
    expires = _one(form.get("expires_at"))
    expires_at = None
    if expires:
        try:
            expires_at = dt.datetime.fromisoformat(expires)
        except ValueError:
            raise SyncError(
                ErrorKind.BAD_REQUEST, "expires_at: not an ISO 8601 time"
            ) from None
        if expires_at.tzinfo is None:
            expires_at = expires_at.replace(tzinfo=dt.UTC)
    return conns.SenderOptions(
        allowed_tables=_csv(_one(form.get("allowed_tables"))),
        excluded_tables=_csv(_one(form.get("excluded_tables"))),
        expires_at=expires_at,
        max_downloads=_int(form, "max_downloads", None),
        max_records_total=_int(form, "max_records_total", None),
        max_records_per_request=_int(form, "max_records_per_request", 100_000)
        or 100_000,
        rate_limit_requests_per_minute=_int(form, "rate_limit", 60) or 60,
        ip_allowlist=_csv(_one(form.get("ip_allowlist"))),
        allowed_hours_start=start,
        allowed_hours_end=end,
    )


def _every_text(seconds: int) -> str:
    """An interval as an operator writes it for ``--every`` (90s, 15m, 2h, 1d)."""
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds and seconds % size == 0:
            return f"{seconds // size}{unit}"
    return f"{seconds}s"


def _when(iso: str | None) -> str:
    """An ISO time as ``YYYY-MM-DD HH:MM:SS`` UTC, or a dash."""
    if not iso:
        return "—"
    try:
        moment = dt.datetime.fromisoformat(iso)
    except ValueError:
        return iso
    if moment.tzinfo is not None:
        moment = moment.astimezone(dt.UTC)
    return moment.strftime("%Y-%m-%d %H:%M:%S")


def _key_text(key: Any, missing: str) -> str:
    """A range bound (a key's values) as text; ``missing`` for an open end."""
    if key is None:
        return missing
    values = key if isinstance(key, list) else [key]
    return "(" + ", ".join(str(v) for v in values) + ")"


def checked(t: dict[str, Any]) -> dict[str, Any]:
    """What a transfer's verification and delta figures say, for its pages.

    ``outcome`` is ``verified`` (every table compared equal), ``differs``
    (the first table that differs and its first differing range),
    ``unverified`` (some table could not be compared) or None (no check
    recorded). A completed transfer that differs reads ``completed, differs``.
    """
    results = t.get("verification") or {}
    tables = {n: r for n, r in results.items() if isinstance(r, dict)}
    differs = [n for n, r in tables.items() if r.get("status") == "differs"]
    outcome: str | None = None
    if differs:
        outcome = "differs"
    elif tables and all(r.get("status") == "verified" for r in tables.values()):
        outcome = "verified"
    elif tables:
        outcome = "unverified"
    first = None
    if differs:
        rng = tables[differs[0]].get("first_range") or {}
        first = {
            "table": differs[0],
            "after": rng.get("after"),
            "until": rng.get("until"),
        }
    deltas = {n: d for n, d in (t.get("delta") or {}).items() if isinstance(d, dict)}

    def total(key: str) -> int:
        return sum(int(d.get(key) or 0) for d in deltas.values())

    status = t["status"]
    if status == "completed" and (outcome == "differs" or t.get("error")):
        status = "completed, differs" if outcome == "differs" else "completed, error"
    return {
        "outcome": outcome,
        "differs": differs,
        "first": first,
        "tables": tables,
        "deltas": deltas,
        "rows_pulled": total("rows_pulled"),
        "deleted": total("deleted"),
        "status_text": status,
    }


def _redirect(resp: falcon.Response, url: str) -> None:
    # Set, not raised: a raised redirect counts as a failed request, and the
    # request's transaction (the action just taken) would roll back.
    resp.status = falcon.HTTP_303
    resp.location = url


def _secure(req: falcon.Request, site: Site) -> bool:
    scheme = req.forwarded_scheme if site.settings.trust_forwarded else req.scheme
    return scheme == "https"


class Login:
    def __init__(self, kit: Kit) -> None:
        self._kit = kit

    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        if not admin.enabled(req.context.session):
            raise falcon.HTTPNotFound(title="Not found")
        self._kit.render(req, resp, "login.html", wrong=False)

    def on_post(self, req: falcon.Request, resp: falcon.Response) -> None:
        kit = self._kit
        session: Session = req.context.session
        if not admin.enabled(session):
            raise falcon.HTTPNotFound(title="Not found")
        password = _one(kit.form(req).get("password"))
        ip = remote_ip(req, kit.site.settings)
        try:
            cookie = admin.login(session, kit.site.db.engine, password, ip)
        except SyncError as ex:
            resp.set_header("Retry-After", str(ex.retry_after or 60))
            kit.fail(req, resp, ex, f"{kit.base}/login")
            return
        if cookie is None:
            resp.status = falcon.HTTP_401
            kit.render(req, resp, "login.html", wrong=True)
            return
        resp.set_cookie(
            COOKIE,
            cookie,
            path=kit.base,
            http_only=True,
            secure=_secure(req, kit.site),
            same_site="Strict",
            max_age=admin.SESSION_SECONDS,
        )
        _redirect(resp, f"{kit.base}/")


class Logout:
    def __init__(self, kit: Kit) -> None:
        self._kit = kit

    def on_post(self, req: falcon.Request, resp: falcon.Response) -> None:
        self._kit.posted(req)
        resp.unset_cookie(COOKIE, path=self._kit.base)
        _redirect(resp, f"{self._kit.base}/login")


class Overview:
    def __init__(self, kit: Kit) -> None:
        self._kit = kit

    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        kit = self._kit
        kit.guard(req)
        session: Session = req.context.session
        row = module.get(session)
        counts: dict[str, dict[str, int]] = {"sender": {}, "receiver": {}}
        for direction, status, n in session.execute(
            select(Connection.direction, Connection.status, func.count()).group_by(
                Connection.direction, Connection.status
            )
        ):
            counts.setdefault(direction, {})[status] = n
        failed = session.scalars(
            select(Transfer)
            .where(Transfer.status == "failed")
            .order_by(Transfer.created_at.desc())
            .limit(5)
        ).all()
        gave_up = session.scalars(
            select(PeerNotice)
            .where(PeerNotice.state == "gave_up")
            .order_by(PeerNotice.id.desc())
            .limit(5)
        ).all()
        kit.render(
            req,
            resp,
            "overview.html",
            module=row,
            ready=health.readiness(kit.site),
            counts=counts,
            statuses=STATUSES,
            failed=[transfers.describe(t, with_tables=False) for t in failed],
            gave_up=gave_up,
        )


class SettingsPage:
    def __init__(self, kit: Kit) -> None:
        self._kit = kit

    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        self._kit.guard(req)
        self._show(req, resp)

    def _show(self, req: falcon.Request, resp: falcon.Response) -> None:
        self._kit.render(
            req,
            resp,
            "settings.html",
            module=module.get(req.context.session),
            modes=module.INCOMING_MODES,
        )

    def on_post(self, req: falcon.Request, resp: falcon.Response) -> None:
        kit = self._kit
        form = kit.posted(req)
        session: Session = req.context.session
        try:
            enabled = _one(form.get("enabled")) == "true"
            if module.get(session).enabled != enabled:
                conns.set_enabled(session, kit.site, enabled)
            module.set_mode(session, _one(form.get("incoming_mode")))
            if _one(form.get("clear_password")) == "yes":
                module.set_password(session, "")
            elif password := _one(form.get("incoming_password")):
                module.set_password(session, password)
        except SyncError as ex:
            kit.fail(req, resp, ex, f"{kit.base}/settings")
            return
        _redirect(resp, f"{kit.base}/settings?done=settings")


class ConnectionList:
    def __init__(self, kit: Kit) -> None:
        self._kit = kit

    def _show(self, req: falcon.Request, resp: falcon.Response, **extra: Any) -> None:
        direction = req.get_param("direction") or ""
        status = req.get_param("status") or ""
        rows = [
            conns.describe(c)
            for c in conns.list_all(req.context.session)
            if (not direction or c.direction == direction)
            and (not status or c.status == status)
        ]
        self._kit.render(
            req,
            resp,
            "connections.html",
            rows=rows,
            direction=direction,
            status=status,
            statuses=STATUSES,
            **{"created": None, "token": None, **extra},
        )

    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        self._kit.guard(req)
        self._show(req, resp)

    def on_post(self, req: falcon.Request, resp: falcon.Response) -> None:
        """Create a sender connection; its token is in this answer only."""
        kit = self._kit
        form = kit.posted(req)
        session: Session = req.context.session
        try:
            conn, token = conns.create_sender(
                session,
                kit.site,
                name=_one(form.get("name")),
                url=_one(form.get("url")),
                password=_one(form.get("password")) or None,
                options=_options(form),
            )
            created = conns.describe(conn)
        except SyncError as ex:
            kit.fail(req, resp, ex, f"{kit.base}/connections")
            return
        resp.status = falcon.HTTP_201
        self._show(req, resp, created=created, token=token)


class ConnectionPage:
    def __init__(self, kit: Kit) -> None:
        self._kit = kit

    def on_get(self, req: falcon.Request, resp: falcon.Response, cid: str) -> None:
        kit = self._kit
        kit.guard(req)
        session: Session = req.context.session
        try:
            conn = conns.get(session, cid)
        except SyncError as ex:
            kit.fail(req, resp, ex, f"{kit.base}/connections")
            return
        events = session.scalars(
            select(AuditEvent)
            .where(AuditEvent.connection_id == conn.id)
            .order_by(AuditEvent.id.desc())
            .limit(10)
        ).all()
        kit.render(req, resp, "connection.html", c=conns.describe(conn), events=events)

    def on_post(self, req: falcon.Request, resp: falcon.Response, cid: str) -> None:
        """A lifecycle action (``action``) or new limits (``action=limits``)."""
        kit = self._kit
        form = kit.posted(req)
        session: Session = req.context.session
        action = _one(form.get("action"))
        back = f"{kit.base}/connections/{cid}"
        try:
            conn = conns.get(session, cid)
            if action == "limits":
                conns.update_limits(session, conn, _options(form))
            elif action in ACTIONS:
                fn = getattr(conns, action)
                if ACTIONS[action]:
                    fn(session, kit.site, conn, _one(form.get("reason")) or None)
                else:
                    fn(session, kit.site, conn)
            else:
                raise SyncError(ErrorKind.BAD_REQUEST, "Unknown action")
        except SyncError as ex:
            kit.fail(req, resp, ex, back)
            return
        if action == "delete":
            _redirect(resp, f"{kit.base}/connections?done=delete")
        else:
            _redirect(resp, f"{back}?done={action}")


class RemoteTables:
    """A receiver connection's tables at its sender; preview; start a pull."""

    def __init__(self, kit: Kit) -> None:
        self._kit = kit

    def _ask(self, conn: Connection, endpoint: str, body: dict[str, Any]) -> Any:
        try:
            answer = self._kit.peer().post(
                conn.site_url,
                endpoint,
                {"auth_token_hash": conn.auth_token_hash, **body},
            )
        except (PeerUnavailable, PeerRefused) as ex:
            raise SyncError(ErrorKind.BUSY, f"sender unreachable: {ex}") from None
        if (
            answer.status != 200
            or not isinstance(answer.body, dict)
            or answer.body.get("success") is not True
        ):
            raise SyncError(
                ErrorKind.CONFLICT, f"sender refused ({answer.status}): {answer.error}"
            )
        return answer.body

    def on_get(self, req: falcon.Request, resp: falcon.Response, cid: str) -> None:
        kit = self._kit
        kit.guard(req)
        session: Session = req.context.session
        back = f"{kit.base}/connections/{cid}"
        try:
            conn = conns.get(session, cid)
            if conn.direction != "receiver":
                raise SyncError(
                    ErrorKind.BAD_REQUEST, "Tables are pulled on a receiver connection"
                )
            listed = self._ask(conn, "list-tables", {}).get("tables")
            preview_of = req.get_param("preview")
            preview = None
            if preview_of:
                got = self._ask(
                    conn, "table-records", {"table_name": preview_of, "limit": 10}
                )
                preview = {"table": preview_of, "records": got.get("records") or []}
        except SyncError as ex:
            kit.fail(req, resp, ex, back)
            return
        tables = [t for t in listed or [] if isinstance(t, dict)]
        local = _local_summaries(kit.site, [str(t.get("name")) for t in tables])
        for t in tables:
            mine = local.get(str(t.get("name")))
            t["local_rows"] = mine["row_count"] if mine else None
            t["differs"] = (
                None
                if mine is None or not t.get("checksum") or not mine["checksum"]
                else mine["checksum"] != t.get("checksum")
            )
        kit.render(
            req,
            resp,
            "tables.html",
            c=conns.describe(conn),
            tables=tables,
            preview=preview,
            strategies=STRATEGIES,
            modes=SYNC_MODES,
        )

    def on_post(self, req: falcon.Request, resp: falcon.Response, cid: str) -> None:
        kit = self._kit
        form = kit.posted(req)
        session: Session = req.context.session
        if _one(form.get("do")) == "sync":
            _create_sync(
                kit, req, resp, cid, form, f"{kit.base}/connections/{cid}/tables"
            )
            return
        try:
            conn = conns.get(session, cid)
            transfer = pulls.start(
                session,
                kit.site,
                conn,
                _many(form.get("table")),
                create_missing=_one(form.get("create_missing")) == "yes",
            )
            tid = str(transfer.id)
        except SyncError as ex:
            kit.fail(req, resp, ex, f"{kit.base}/connections/{cid}/tables")
            return
        _redirect(resp, f"{kit.base}/transfers/{tid}")


def _local_summaries(site: Site, names: list[str]) -> dict[str, dict[str, Any]]:
    """This site's own row count and checksum of each named table it has."""
    catalog = site.catalog()
    mine = set(catalog.offered_tables())
    try:
        return {
            s["name"]: s
            for s in catalog.table_summaries([n for n in names if n in mine])
        }
    except Exception as ex:  # a table being created by a pull right now
        log.warning("console: local summaries failed: %s", ex)
        return {}


class TransferList:
    def __init__(self, kit: Kit) -> None:
        self._kit = kit

    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        self._kit.guard(req)
        rows = [
            transfers.describe(t, with_tables=False)
            for t in transfers.newest(req.context.session, 50)
        ]
        for row in rows:
            row["check"] = checked(row)
        running = any(r["status"] in ("pending", "running") for r in rows)
        self._kit.render(req, resp, "transfers.html", rows=rows, refresh=running)


class TransferPage:
    def __init__(self, kit: Kit) -> None:
        self._kit = kit

    def on_get(self, req: falcon.Request, resp: falcon.Response, tid: str) -> None:
        kit = self._kit
        kit.guard(req)
        try:
            t = transfers.describe(transfers.get(req.context.session, tid))
            t["check"] = checked(t)
        except SyncError as ex:
            kit.fail(req, resp, ex, f"{kit.base}/transfers")
            return
        kit.render(
            req,
            resp,
            "transfer.html",
            t=t,
            refresh=t["status"] in ("pending", "running"),
        )


class AuditPage:
    def __init__(self, kit: Kit) -> None:
        self._kit = kit

    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        self._kit.guard(req)
        session: Session = req.context.session
        query = select(AuditEvent).order_by(AuditEvent.id.desc()).limit(200)
        chosen = req.get_param("connection") or ""
        if chosen:
            query = query.where(AuditEvent.connection_name == chosen)
        names = sorted(
            n
            for n in session.scalars(
                select(AuditEvent.connection_name).distinct()
            ).all()
            if n
        )
        self._kit.render(
            req,
            resp,
            "audit.html",
            events=session.scalars(query).all(),
            names=names,
            chosen=chosen,
        )


def _create_sync(
    kit: Kit,
    req: falcon.Request,
    resp: falcon.Response,
    cid: str,
    form: dict[str, Any],
    back: str,
) -> None:
    """Create a sync from a posted form, through the service the CLI uses."""
    session: Session = req.context.session
    try:
        conn = conns.get(session, cid)
        tables = _many(form.get("table"))
        tables += _csv(_one(form.get("tables")))
        sync = sync_svc.create(
            session,
            conn,
            tables,
            all_tables=_one(form.get("all_tables")) == "yes",
            every_seconds=sync_svc.parse_every(_one(form.get("every"))),
            strategy=_one(form.get("strategy")) or None,
            mode=_one(form.get("mode")) or "delta",
            mirror_deletes=_one(form.get("mirror_deletes")) == "yes",
            cursor_column=None,
            evolve=_one(form.get("evolve")) == "yes",
        )
        sid = str(sync.id)
    except SyncError as ex:
        kit.fail(req, resp, ex, back)
        return
    _redirect(resp, f"{kit.base}/syncs?done=sync-create#sync-{sid}")


class Syncs:
    """Every sync with its state, last run and next run; create one."""

    def __init__(self, kit: Kit) -> None:
        self._kit = kit

    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        kit = self._kit
        kit.guard(req)
        session: Session = req.context.session
        rows = []
        for sync in sync_svc.every(session):
            row = sync_svc.describe(session, sync)
            last = (
                session.get(Transfer, sync.last_transfer_id)
                if sync.last_transfer_id
                else None
            )
            row["check"] = (
                checked(transfers.describe(last, with_tables=False)) if last else None
            )
            row["progress"] = (
                (last.records_transferred, last.records_expected) if last else None
            )
            rows.append(row)
        receivers = [
            conns.describe(c)
            for c in conns.list_all(session)
            if c.direction == "receiver"
        ]
        kit.render(
            req,
            resp,
            "syncs.html",
            rows=rows,
            receivers=receivers,
            strategies=STRATEGIES,
            modes=SYNC_MODES,
            running=any(r["last_status"] == "running" for r in rows),
        )

    def on_post(self, req: falcon.Request, resp: falcon.Response) -> None:
        kit = self._kit
        form = kit.posted(req)
        _create_sync(
            kit, req, resp, _one(form.get("connection")), form, f"{kit.base}/syncs"
        )


class SyncPage:
    """Pause, resume, run now or delete one sync (plain form posts)."""

    def __init__(self, kit: Kit) -> None:
        self._kit = kit

    def on_post(self, req: falcon.Request, resp: falcon.Response, sid: str) -> None:
        kit = self._kit
        form = kit.posted(req)
        session: Session = req.context.session
        action = _one(form.get("action"))
        back = f"{kit.base}/syncs"
        try:
            if action not in SYNC_ACTIONS:
                raise SyncError(ErrorKind.BAD_REQUEST, "Unknown action")
            sync = sync_svc.get(session, sid)
            if action in ("pause", "resume"):
                sync_svc.set_paused(session, sync, action == "pause")
            elif action == "run":
                sync_svc.run_now(session, sync)
            else:
                sync_svc.delete(session, sync)
        except SyncError as ex:
            kit.fail(req, resp, ex, back)
            return
        anchor = "" if action == "delete" else f"#sync-{sid}"
        _redirect(resp, f"{back}?done=sync-{action}{anchor}")


class Static:
    TYPES = {".css": "text/css; charset=utf-8", ".js": "text/javascript"}

    def on_get(self, req: falcon.Request, resp: falcon.Response, name: str) -> None:
        path = HERE / "static" / name
        if name not in {"console.css", "console.js"} or not path.is_file():
            raise falcon.HTTPNotFound(title="Not found")
        resp.content_type = self.TYPES[path.suffix]
        resp.cache_control = ["max-age=300"]
        resp.data = path.read_bytes()


def routes(site: Site) -> dict[str, object]:
    kit = Kit(site)
    base = kit.base
    return {
        f"{base}": Overview(kit),
        f"{base}/": Overview(kit),
        f"{base}/login": Login(kit),
        f"{base}/logout": Logout(kit),
        f"{base}/settings": SettingsPage(kit),
        f"{base}/connections": ConnectionList(kit),
        f"{base}/connections/{{cid}}": ConnectionPage(kit),
        f"{base}/connections/{{cid}}/tables": RemoteTables(kit),
        f"{base}/transfers": TransferList(kit),
        f"{base}/transfers/{{tid}}": TransferPage(kit),
        f"{base}/audit": AuditPage(kit),
        f"{base}/syncs": Syncs(kit),
        f"{base}/syncs/{{sid}}": SyncPage(kit),
        f"{base}/static/{{name}}": Static(),
    }
