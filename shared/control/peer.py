"""Call other sites' APIs: the guarded URL, the protocol's headers, clear outcomes.

Transient failures (no connection, timeout, 5xx, 429) raise PeerUnavailable so
the caller can retry later; every other answer is returned as it came.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, Self

import httpx

from shared.control import signing
from shared.data import wire
from shared.security import UnsafeURL, check_url
from shared.settings import Settings

log = logging.getLogger("dbsync.peer")

USER_AGENT = "dbsync/0.1 (PhoenixKit-Sync compatible)"


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
    """The call may not be made at all (the URL fails the guard)."""


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
        self._client = httpx.Client(
            timeout=httpx.Timeout(settings.http_timeout_seconds, connect=10.0),
            headers={"user-agent": USER_AGENT, "accept": "application/json"},
            transport=transport,
            follow_redirects=False,
        )

    def close(self) -> None:
        self._client.close()

    def endpoint_url(self, site_url: str, endpoint: str) -> str:
        return f"{site_url.rstrip('/')}{self._prefix}/sync/api/{endpoint}"

    def guard(self, site_url: str) -> None:
        try:
            check_url(
                site_url,
                allow_private=self._settings.allow_private_urls,
                own_url=self._settings.site_url,
            )
        except UnsafeURL as ex:
            raise PeerRefused(f"peer URL refused: {ex}") from None

    def post(self, site_url: str, endpoint: str, body: dict[str, Any]) -> PeerResponse:
        self.guard(site_url)
        url = self.endpoint_url(site_url, endpoint)
        content, headers = signing.request(site_url, endpoint, body, self._signing_keys)
        try:
            resp = self._client.post(url, content=content, headers=headers)
        except httpx.TransportError as ex:
            raise _unavailable(endpoint, ex) from None
        _raise_if_transient(endpoint, resp)
        log.info("peer call endpoint=%s status=%s", endpoint, resp.status_code)
        return PeerResponse.parse(resp.status_code, resp.content)

    def post_stream(
        self, site_url: str, endpoint: str, body: dict[str, Any], accept: str
    ) -> PeerStream:
        """POST like ``post``, but hand back the answer unread, to stream its body.

        Same guard and the same PeerUnavailable / RateLimited for transient
        answers (whose small bodies are read for their error text). The caller
        must close the stream (it is a context manager).
        """
        self.guard(site_url)
        url = self.endpoint_url(site_url, endpoint)
        request = self._client.build_request(
            "POST", url, json=body, headers={"accept": accept}
        )
        try:
            resp = self._client.send(request, stream=True)
        except httpx.TransportError as ex:
            raise _unavailable(endpoint, ex) from None
        try:
            if resp.status_code == 429 or resp.status_code >= 500:
                resp.read()
                _raise_if_transient(endpoint, resp)
        except httpx.TransportError as ex:
            resp.close()
            raise _unavailable(endpoint, ex) from None
        except BaseException:
            resp.close()
            raise
        log.info(
            "peer call endpoint=%s status=%s (streamed)", endpoint, resp.status_code
        )
        return PeerStream(resp, endpoint)


class PeerStream:
    """An answer whose body is read as it arrives.

    Transport failures while reading raise PeerUnavailable, like failures
    before the answer came.
    """

    def __init__(self, resp: httpx.Response, endpoint: str) -> None:
        self._resp = resp
        self._endpoint = endpoint
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

    def read(self) -> bytes:
        """The whole body, unparsed."""
        try:
            content = self._resp.read()
        except httpx.TransportError as ex:
            raise _unavailable(self._endpoint, ex) from None
        self.bytes_read += len(content)
        return content

    def response(self) -> PeerResponse:
        """Read the whole body as a JSON answer (a JSON object, or {})."""
        return PeerResponse.parse(self._resp.status_code, self.read())

    def iter_bytes(self) -> Iterator[bytes]:
        try:
            for chunk in self._resp.iter_bytes():
                self.bytes_read += len(chunk)
                yield chunk
        except httpx.TransportError as ex:
            raise _unavailable(self._endpoint, ex) from None

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


def _raise_if_transient(endpoint: str, resp: httpx.Response) -> None:
    if resp.status_code == 429 or resp.status_code >= 500:
        retry_after = _retry_after(resp.headers.get("retry-after"))
        kind = RateLimited if resp.status_code == 429 else PeerUnavailable
        raise kind(
            f"{endpoint}: HTTP {resp.status_code} {_error_text(resp)}".strip(),
            retry_after,
            resp.status_code,
        )


def _retry_after(raw: str | None) -> float | None:
    try:
        return float(raw) if raw else None
    except ValueError:
        return None


def _error_text(resp: httpx.Response) -> str:
    try:
        data = resp.json()
    except ValueError:
        return ""
    if isinstance(data, dict) and isinstance(data.get("error"), str):
        return data["error"][:200]
    return ""
