"""Hand work to the workers by task name, without importing the workers' code."""

from __future__ import annotations

import logging

from celery import Celery

from shared.dispatch import QueueDispatcher, celery_config
from shared.settings import Settings

log = logging.getLogger("dbsync.enqueue")


class BrokerClient:
    """Send tasks by name; the Celery client is built on the first send.

    Reading the database (the CLI) or serving a request that enqueues nothing
    then never touches the broker's configuration.
    """

    def __init__(self, settings: Settings) -> None:
        self._settings = settings
        self._app: Celery | None = None

    def send(self, name: str, args: list[object], queue: str) -> None:
        if self._app is None:
            self._app = Celery("dbsync-web", set_as_current=False)
            self._app.conf.update(celery_config(self._settings))
        self._app.send_task(name, args=args, queue=queue)


class CeleryDispatcher(QueueDispatcher):
    """The web front's dispatcher: a broker hiccup never fails a request."""

    def __init__(self, settings: Settings) -> None:
        self._client = BrokerClient(settings)
        super().__init__(settings, self._send_or_log)

    def _send_or_log(self, name: str, args: list[object], queue: str) -> None:
        # The notice or transfer row is durable; a broker hiccup only delays it
        # until the beat sweep re-dispatches, so it must not fail the request.
        try:
            self._client.send(name, args, queue)
        except Exception as ex:
            log.warning("enqueue failed task=%s error=%s", name, type(ex).__name__)
