"""The narrow interface through which the web front and the CLI hand work to workers."""

from __future__ import annotations

from typing import Protocol


class Dispatcher(Protocol):
    def deliver_notice(self, notice_id: int) -> None: ...

    def run_pull(self, transfer_id: str) -> None: ...


class DeferredDispatcher:
    """Enqueue nothing; the beat sweep picks durable work up from the database.

    Used where no broker is wired (unit tests); every notice is in the outbox
    table anyway, so nothing is lost, only delayed until the next sweep.
    """

    def __init__(self) -> None:
        self.notices: list[int] = []
        self.pulls: list[str] = []

    def deliver_notice(self, notice_id: int) -> None:
        self.notices.append(notice_id)

    def run_pull(self, transfer_id: str) -> None:
        self.pulls.append(transfer_id)
