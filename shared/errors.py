"""Domain errors; the web front maps their ``kind`` to an HTTP status in one place."""

from __future__ import annotations

from typing import Any


class SyncError(Exception):
    """A refusal with the protocol's message text.

    kind is one of: bad_request, unauthorized, forbidden, not_found, conflict,
    too_large, throttled, disabled.
    """

    def __init__(
        self,
        kind: str,
        message: str,
        *,
        extra: dict[str, Any] | None = None,
        retry_after: int | None = None,
    ) -> None:
        super().__init__(message)
        self.kind = kind
        self.message = message
        self.extra = extra or {}
        self.retry_after = retry_after

    def body(self) -> dict[str, Any]:
        return {"success": False, "error": self.message, **self.extra}


def disabled() -> SyncError:
    return SyncError("disabled", "DB Sync module is disabled")


def bad_request(message: str, **extra: Any) -> SyncError:
    return SyncError("bad_request", message, extra=extra)


def not_found(message: str = "Connection not found", **extra: Any) -> SyncError:
    return SyncError("not_found", message, extra=extra)
