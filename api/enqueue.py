"""Hand work to the workers by task name, without importing the workers' code."""

from __future__ import annotations

import logging

from celery import Celery

from shared.settings import Settings

log = logging.getLogger("dbsync.enqueue")


class CeleryDispatcher:
    def __init__(self, settings: Settings) -> None:
        self._settings = settings
        self._app = Celery(
            "dbsync-web", broker=settings.broker_url, set_as_current=False
        )
        self._app.conf.broker_connection_retry_on_startup = True
        if settings.broker_url.startswith("redis"):
            self._app.conf.broker_transport_options = {"visibility_timeout": 7200}

    def deliver_notice(self, notice_id: int) -> None:
        self._send("dbsync.deliver_notice", [notice_id], self._settings.peer_queue)

    def run_pull(self, transfer_id: str) -> None:
        self._send("dbsync.run_pull", [transfer_id], self._settings.pull_queue)

    def _send(self, name: str, args: list[object], queue: str) -> None:
        # The notice or transfer row is durable; a broker hiccup only delays it
        # until the beat sweep re-dispatches, so it must not fail the request.
        try:
            self._app.send_task(name, args=args, queue=queue)
        except Exception as ex:
            log.warning("enqueue failed task=%s error=%s", name, type(ex).__name__)
