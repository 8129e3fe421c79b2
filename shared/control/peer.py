"""Call other sites' APIs: the guarded URL, the protocol's headers, clear outcomes.

Transient failures (no connection, timeout, 5xx, 429) raise PeerUnavailable so
the caller can retry later; every other answer is returned as it came, unless
it breaks this site's limits (AnswerRefused).

A peer is not trusted: its connection goes only to checked addresses
(shared.control.transport), each call has a total time limit besides the
limit on each read, and its body is read as a stream, decoded here within a
size limit (shared.control.decoding) and never by httpx.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, Self

import httpx

from shared.control import decoding, signing, transport
from shared.data import wire
from shared.logging import trace_headers
from shared.security import UnsafeURL, check_url
from shared.settings import Settings

log = logging.getLogger("dbsync.peer")

USER_AGENT = "dbsync/0.1 (PhoenixKit-Sync compatible)"
# Control answers ({"success": true, ...}) are a few hundred bytes; the data
# endpoints' answers get SYNC_PEER_ANSWER_MAX_BYTES, pull-data pages their own.
CONTROL_ANSWER_MAX_BYTES = 64 * 1024
ERROR_ANSWER_MAX_BYTES = 64 * 1024  # a 429 or 5xx answer, read for its text
DATA_ENDPOINTS = frozenset(
    {"list-tables", "table-schema", "table-records", "table-fingerprints"}
)


class PeerUnavailable(Exception):
    """The peer could not answer now; worth trying again later."""

    def __init__(
        self, message: str, retry_after: float | None = None, status: int | None = None
    ) -> None:
        super().__init__(message)
        self.retry_after = retry_after
        self.status = status


class RateLimited(PeerUnavailable):
    """The peer asked us to slow down (429); not a failure."""


class PeerRefused(Exception):
    """The call may not be made at all (the URL fails the guard), or its
    answer may not be taken (AnswerRefused)."""


class AnswerRefused(PeerRefused):
    """The peer answered beyond this site's limits: too large once decoded,
    or in a coding this site does not take."""


@dataclass(frozen=True)
class PeerResponse:
    status: int
    body: dict[str, Any]

    @classmethod
    def parse(cls, status: int, content: bytes) -> PeerResponse:
        """An answer from its raw body: a JSON object, or {} when it is not one."""
        try:
            data = wire.parse_json(content)
        except ValueError:
            return cls(status, {})
        return cls(status, data if isinstance(data, dict) else {})

    @property
    def error(self) -> str:
        text = self.body.get("error") if isinstance(self.body, dict) else None
        return str(text) if text else f"HTTP error {self.status}"


class PeerClient:
    def __init__(
        self,
        settings: Settings,
        transport: httpx.BaseTransport | None = None,
        signing_keys: signing.KeyLookup | None = None,
    ):
        self._settings = settings
        self._signing_keys = signing_keys
        self._prefix = settings.url_prefix
        if transport is None:
            transport = _guarded(settings)
        self._client = httpx.Client(
            timeout=httpx.Timeout(settings.http_timeout_seconds, connect=10.0),
            headers={
                "user-agent": USER_AGENT,
                "accept": "application/json",
                "accept-encoding": decoding.ACCEPT_ENCODING,
            },
            transport=transport,
            follow_redirects=False,
        )

    @property
    def settings(self) -> Settings:
        return self._settings

    def close(self) -> None:
        self._client.close()

    def endpoint_url(
        self, site_url: str, endpoint: str, prefix: str | None = None
    ) -> str:
        """The endpoint's URL at the peer: under the connection's peer prefix,
        or (None) under this site's own."""
        prefix = self._prefix if prefix is None else prefix
        return f"{site_url.rstrip('/')}{prefix}/sync/api/{endpoint}"

    def guard(self, site_url: str) -> None:
        """Refuse a URL whose form the guard refuses; its addresses are
        checked when the connection is opened (shared.control.transport)."""
        try:
            check_url(
                site_url,
                allow_private=self._settings.allow_private_urls,
                own_url=self._settings.site_url,
                resolve=False,
                allow_plain_http=self._settings.allow_plain_http,
            )
        except UnsafeURL as ex:
            raise PeerRefused(f"peer URL refused: {ex}") from None

    def answer_limit(self, endpoint: str) -> int:
        """The most bytes a JSON answer from ``endpoint`` may take, decoded."""
        if endpoint in DATA_ENDPOINTS:
            return self._settings.peer_answer_max_bytes
        return CONTROL_ANSWER_MAX_BYTES

    def post(
        self,
        site_url: str,
        endpoint: str,
        body: dict[str, Any],
        *,
        prefix: str | None = None,
    ) -> PeerResponse:
        """POST and read the JSON answer, within answer_limit and
        SYNC_PEER_CALL_SECONDS; ``prefix``: the peer's (see endpoint_url)."""
        with self._open(
            site_url,
            endpoint,
            body,
            "application/json",
            self.answer_limit(endpoint),
            self._settings.peer_call_seconds,
            prefix,
        ) as stream:
            answer = stream.response()
        log.info("peer call endpoint=%s status=%s", endpoint, answer.status)
        return answer

    def post_stream(
        self,
        site_url: str,
        endpoint: str,
        body: dict[str, Any],
        accept: str,
        *,
        max_bytes: int | None = None,
        seconds: float | None = None,
        prefix: str | None = None,
    ) -> PeerStream:
        """POST like ``post``, but hand back the answer unread, to stream its body.

        Same guard and the same PeerUnavailable / RateLimited for transient
        answers (whose small bodies are read for their error text). The body
        may take ``max_bytes`` decoded (default: answer_limit) and the whole
        call, reading included, ``seconds`` (default SYNC_PEER_CALL_SECONDS).
        The caller must close the stream (it is a context manager).
        """
        stream = self._open(
            site_url,
            endpoint,
            body,
            accept,
            max_bytes or self.answer_limit(endpoint),
            seconds or self._settings.peer_call_seconds,
            prefix,
        )
        log.info("peer call endpoint=%s status=%s (streamed)", endpoint, stream.status)
        return stream

    def _open(
        self,
        site_url: str,
        endpoint: str,
        body: dict[str, Any],
        accept: str,
        max_bytes: int,
        seconds: float,
        prefix: str | None = None,
    ) -> PeerStream:
        self.guard(site_url)
        url = self.endpoint_url(site_url, endpoint, prefix)
        # Control calls are signed when the connection has a key; data calls
        # go out as they are (signing.request decides).
        content, headers = signing.request(site_url, endpoint, body, self._signing_keys)
        request = self._client.build_request(
            "POST",
            url,
            content=content,
            headers={**headers, **trace_headers(), "accept": accept},
        )
        limits = _Limits(endpoint, max_bytes, seconds)
        try:
            with transport.deadline(limits.deadline):
                resp = self._client.send(request, stream=True)
        except httpx.TransportError as ex:
            raise limits.unavailable(ex) from None
        except UnsafeURL as ex:
            raise PeerRefused(f"peer URL refused: {ex}") from None
        stream = PeerStream(resp, limits)
        try:
            if resp.status_code == 429 or resp.status_code >= 500:
                stream.raise_transient()
        except BaseException:
            stream.close()
            raise
        return stream


def _guarded(settings: Settings) -> httpx.BaseTransport:
    return transport.GuardedTransport(
        allow_private=settings.allow_private_urls,
        allow_plain_http=settings.allow_plain_http,
    )


class _Limits:
    """One call's limits: its endpoint, decoded size and deadline."""

    def __init__(self, endpoint: str, max_bytes: int, seconds: float) -> None:
        self.endpoint = endpoint
        self.max_bytes = max_bytes
        self.seconds = seconds
        self.deadline = time.monotonic() + seconds

    def expired(self) -> bool:
        return time.monotonic() >= self.deadline

    def overdue(self) -> PeerUnavailable:
        return PeerUnavailable(
            f"{self.endpoint}: no complete answer within {self.seconds:g} s"
        )

    def unavailable(self, ex: httpx.TransportError) -> PeerUnavailable:
        if isinstance(ex, httpx.TimeoutException) and self.expired():
            return self.overdue()
        return _unavailable(self.endpoint, ex)


class PeerStream:
    """An answer whose body is read as it arrives, within its limits.

    The body is decoded here (Content-Encoding) and may take ``max_bytes``
    decoded, at most: past that, AnswerRefused. Transport failures while
    reading, and a call past its deadline, raise PeerUnavailable, like
    failures before the answer came.
    """

    def __init__(self, resp: httpx.Response, limits: _Limits) -> None:
        self._resp = resp
        self._limits = limits
        self.bytes_read = 0

    @property
    def status(self) -> int:
        return self._resp.status_code

    @property
    def headers(self) -> httpx.Headers:
        return self._resp.headers

    @property
    def media_type(self) -> str:
        """The Content-Type without parameters, lower-case."""
        return self._resp.headers.get("content-type", "").split(";")[0].strip().lower()

    @property
    def max_bytes(self) -> int:
        return self._limits.max_bytes

    @max_bytes.setter
    def max_bytes(self, value: int) -> None:
        """Set the limit, e.g. from the answer's headers, before the body is read."""
        self._limits.max_bytes = value

    def read(self) -> bytes:
        """The whole body, decoded, unparsed."""
        return b"".join(self.iter_bytes())

    def response(self) -> PeerResponse:
        """Read the whole body as a JSON answer (a JSON object, or {})."""
        return PeerResponse.parse(self._resp.status_code, self.read())

    def iter_bytes(self) -> Iterator[bytes]:
        limits = self._limits
        try:
            names = decoding.codings(self._resp.headers.get("content-encoding"))
            for piece in decoding.decode(self._raw(), names, lambda: limits.max_bytes):
                self.bytes_read += len(piece)
                yield piece
        except decoding.BodyTooLarge as ex:
            raise AnswerRefused(
                f"{limits.endpoint}: answer larger than {ex.limit} bytes"
            ) from None
        except decoding.BodyRefused as ex:
            raise AnswerRefused(f"{limits.endpoint}: {ex}") from None

    def _raw(self) -> Iterator[bytes]:
        """The body as it came off the wire, each wait within the deadline."""
        limits = self._limits
        if self._resp.is_stream_consumed:
            # A response built in memory (httpx.MockTransport) arrives read.
            yield self._resp.content
            return
        chunks = self._resp.iter_raw()
        while True:
            try:
                with transport.deadline(limits.deadline):
                    chunk = next(chunks, None)
            except httpx.TransportError as ex:
                raise limits.unavailable(ex) from None
            if chunk is None:
                return
            if limits.expired():
                raise limits.overdue()
            yield chunk

    def raise_transient(self) -> None:
        """Raise RateLimited for a 429, PeerUnavailable for a 5xx, with the
        answer's error text (its first ERROR_ANSWER_MAX_BYTES)."""
        resp = self._resp
        self.max_bytes = min(self.max_bytes, ERROR_ANSWER_MAX_BYTES)
        try:
            text = _error_text(self.response().body)
        except AnswerRefused:
            text = ""
        kind = RateLimited if resp.status_code == 429 else PeerUnavailable
        raise kind(
            f"{self._limits.endpoint}: HTTP {resp.status_code} {text}".strip(),
            _retry_after(resp.headers.get("retry-after")),
            resp.status_code,
        )

    def close(self) -> None:
        self._resp.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _unavailable(endpoint: str, ex: httpx.TransportError) -> PeerUnavailable:
    if isinstance(ex, httpx.TimeoutException):
        return PeerUnavailable(f"{endpoint}: timed out")
    return PeerUnavailable(f"{endpoint}: {type(ex).__name__}")


def _retry_after(raw: str | None) -> float | None:
    try:
        return float(raw) if raw else None
    except ValueError:
        return None


def _error_text(body: dict[str, Any]) -> str:
    error = body.get("error")
    return error[:200] if isinstance(error, str) else ""
