"""Domain errors; the web front maps their ``kind`` to an HTTP status in one place.

The kinds are a closed set so that a misspelt kind fails where it is raised
instead of turning into a silent default answer.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Any


class ErrorKind(StrEnum):
    """What went wrong, as far as the protocol's answer is concerned."""

    BAD_REQUEST = "bad_request"
    UNAUTHORIZED = "unauthorized"
    FORBIDDEN = "forbidden"
    NOT_FOUND = "not_found"
    CONFLICT = "conflict"
    TOO_LARGE = "too_large"
    THROTTLED = "throttled"
    DISABLED = "disabled"
    BUSY = "busy"  # too many answers being served at once: retry later


class SyncError(Exception):
    """A refusal with the protocol's message text.

    ``kind`` must be an ErrorKind; its string value is accepted too (a StrEnum
    equals its value), anything else raises ValueError here.
    """

    def __init__(
        self,
        kind: ErrorKind | str,
        message: str,
        *,
        extra: dict[str, Any] | None = None,
        retry_after: int | None = None,
    ) -> None:
        super().__init__(message)
        self.kind = ErrorKind(kind)
        self.message = message
        self.extra = extra or {}
        self.retry_after = retry_after

    def body(self) -> dict[str, Any]:
        return {"success": False, "error": self.message, **self.extra}


def bad_request(message: str, **extra: Any) -> SyncError:
    return SyncError(ErrorKind.BAD_REQUEST, message, extra=extra)
