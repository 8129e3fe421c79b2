"""What the workers did, read from the state database when ``/metrics`` is scraped.

Pulls, pages and rows written, the notice outbox and beat's jobs are all kept
in the state tables by the processes that do the work. Reading them at scrape
time gives the same figures whichever web process answers, survives restarts
of workers and beat, and needs no exporter in a Celery child. No label names a
connection or a peer: the figures are of the site as a whole.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector
from sqlalchemy import case, func, select

from shared.db import Database, utcnow
from shared.state.models import (
    BeatHeartbeat,
    Connection,
    PeerNotice,
    Transfer,
    TransferTable,
)

OPEN_NOTICES = ("queued", "retrying")


class SiteCollector(Collector):
    """Collect the site's work counts from its state database, one scrape at a time."""

    def __init__(self, db: Database) -> None:
        self._db = db

    def collect(self) -> Iterator[Metric]:
        with self._db.session() as session:
            pulls = CounterMetricFamily(
                "dbsync_pulls",
                "Pulls this site ran as a receiver, by outcome",
                labels=["outcome"],
            )
            receiving = Transfer.direction == "receive"
            started = session.scalar(
                select(func.count())
                .select_from(Transfer)
                .where(receiving, Transfer.started_at.is_not(None))
            )
            pulls.add_metric(["started"], started or 0)
            by_status = dict(
                session.execute(
                    select(Transfer.status, func.count())
                    .where(receiving)
                    .group_by(Transfer.status)
                ).all()
            )
            pulls.add_metric(["completed"], by_status.get("completed", 0))
            pulls.add_metric(["failed"], by_status.get("failed", 0))
            yield pulls
            running = GaugeMetricFamily(
                "dbsync_pulls_running", "Receiver pulls in progress now"
            )
            running.add_metric([], by_status.get("running", 0))
            yield running

            rows, pages = session.execute(
                select(
                    func.coalesce(func.sum(TransferTable.rows_done), 0),
                    func.coalesce(func.sum(TransferTable.pages_done), 0),
                )
                .join(Transfer, Transfer.id == TransferTable.transfer_id)
                .where(receiving)
            ).one()
            yield CounterMetricFamily(
                "dbsync_pull_rows_written",
                "Rows the pulls wrote into this site's tables",
                value=int(rows),
            )
            yield CounterMetricFamily(
                "dbsync_pull_pages_written",
                "Pages of rows the pulls wrote into this site's tables",
                value=int(pages),
            )

            notices = dict(
                session.execute(
                    select(PeerNotice.state, func.count()).group_by(PeerNotice.state)
                ).all()
            )
            yield GaugeMetricFamily(
                "dbsync_notice_backlog",
                "Notices owed to peers and not yet delivered (queued or retrying)",
                value=sum(notices.get(state, 0) for state in OPEN_NOTICES),
            )
            failed_attempts = session.scalar(
                select(
                    func.coalesce(
                        func.sum(
                            PeerNotice.attempts
                            - case((PeerNotice.state == "delivered", 1), else_=0)
                        ),
                        0,
                    )
                )
            )
            yield CounterMetricFamily(
                "dbsync_notice_delivery_failures",
                "Attempts to deliver a notice that did not get it delivered",
                value=int(failed_attempts or 0),
            )
            gave_up = CounterMetricFamily(
                "dbsync_notices_given_up",
                "Notices abandoned after their retries ran out",
                value=notices.get("gave_up", 0),
            )
            yield gave_up

            connections = GaugeMetricFamily(
                "dbsync_connections",
                "Connections by direction and status",
                labels=["direction", "status"],
            )
            for direction, status, count in session.execute(
                select(Connection.direction, Connection.status, func.count()).group_by(
                    Connection.direction, Connection.status
                )
            ):
                connections.add_metric([direction, status], count)
            yield connections

            now = utcnow()
            beat = GaugeMetricFamily(
                "dbsync_beat_last_run_age_seconds",
                "Seconds since each of beat's jobs last ran (beat.started: its start)",
                labels=["job"],
            )
            for job, last in session.execute(
                select(BeatHeartbeat.job, BeatHeartbeat.last_run_at)
            ):
                beat.add_metric([job], max(0.0, (now - _aware(last)).total_seconds()))
            yield beat


def _aware(at: dt.datetime) -> dt.datetime:
    # SQLite gives naive datetimes back; every time stored is UTC.
    return at if at.tzinfo is not None else at.replace(tzinfo=dt.UTC)
