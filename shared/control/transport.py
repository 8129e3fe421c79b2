"""Open peer connections only to checked addresses, and end every call on time.

httpx resolves a host name itself, after any check of ours: a name that
answers a public address to the URL guard and 127.0.0.1 to the connection
(DNS rebinding) reached 127.0.0.1. Here the name is resolved once, when the
connection is opened; every address it gives must pass the guard
(shared.security.public_address) and only those are dialled. The request
still names the host: httpx writes the Host header from the URL and httpcore
passes the URL's host to TLS, for SNI and the certificate check.

The same connections refuse to write a byte in clear to a public address
unless plain http is allowed (tokens cross the internet in a request body),
and honour a deadline for the whole call (``deadline``): each wait on the
socket is cut to what is left of it, so a peer that drips its answer a byte
at a time cannot hold a call past its limit.
"""

from __future__ import annotations

import contextvars
import ipaddress
import socket
import ssl
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from typing import Any

import httpcore
import httpx

from shared.security import (
    PLAIN_HTTP_REFUSED,
    UnsafeURL,
    check_address,
    check_port,
    public_address,
)

_deadline: contextvars.ContextVar[float | None] = contextvars.ContextVar(
    "dbsync_peer_deadline", default=None
)


@contextmanager
def deadline(at: float) -> Iterator[None]:
    """Let no network wait inside the block run past ``at`` (time.monotonic)."""
    token = _deadline.set(at)
    try:
        yield
    finally:
        _deadline.reset(token)


def _left(timeout: float | None, expired: type[Exception]) -> float | None:
    """``timeout`` cut to the time left before the deadline; ``expired`` if none is."""
    at = _deadline.get()
    if at is None:
        return timeout
    left = at - time.monotonic()
    if left <= 0:
        raise expired("the call's time limit passed")
    return left if timeout is None else min(timeout, left)


class _Stream(httpcore.NetworkStream):
    """A connection's socket, with the deadline and the clear-text rule."""

    def __init__(self, inner: httpcore.NetworkStream, *, clear_refused: bool) -> None:
        self._inner = inner
        self._clear_refused = clear_refused

    def read(self, max_bytes: int, timeout: float | None = None) -> bytes:
        return self._inner.read(max_bytes, _left(timeout, httpcore.ReadTimeout))

    def write(self, buffer: bytes, timeout: float | None = None) -> None:
        if self._clear_refused:
            raise UnsafeURL(PLAIN_HTTP_REFUSED)
        self._inner.write(buffer, _left(timeout, httpcore.WriteTimeout))

    def close(self) -> None:
        self._inner.close()

    def start_tls(
        self,
        ssl_context: ssl.SSLContext,
        server_hostname: str | None = None,
        timeout: float | None = None,
    ) -> httpcore.NetworkStream:
        tls = self._inner.start_tls(
            ssl_context, server_hostname, _left(timeout, httpcore.ConnectTimeout)
        )
        return _Stream(tls, clear_refused=False)

    def get_extra_info(self, info: str) -> Any:
        return self._inner.get_extra_info(info)


class GuardedBackend(httpcore.SyncBackend):
    """Dial a host at the addresses the guard let through, and nowhere else."""

    def __init__(self, *, allow_private: bool, allow_plain_http: bool) -> None:
        self._allow_private = allow_private
        self._allow_plain_http = allow_plain_http

    def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,
        local_address: str | None = None,
        socket_options: Iterable[httpcore.SOCKET_OPTION] | None = None,
    ) -> httpcore.NetworkStream:
        check_port(port)
        targets = self._resolve(host, port)
        failure: Exception = httpcore.ConnectError(f"{host} has no address")
        for address, ip in targets:
            try:
                stream = super().connect_tcp(
                    address,
                    port,
                    _left(timeout, httpcore.ConnectTimeout),
                    local_address,
                    socket_options,
                )
            except (httpcore.ConnectError, httpcore.ConnectTimeout) as ex:
                failure = ex
                continue
            # Plain text is refused at the first write, not here: https
            # connections start as plain TCP too, until start_tls.
            clear_refused = not self._allow_plain_http and public_address(ip)
            return _Stream(stream, clear_refused=clear_refused)
        raise failure

    def connect_unix_socket(
        self,
        path: str,
        timeout: float | None = None,
        socket_options: Iterable[httpcore.SOCKET_OPTION] | None = None,
    ) -> httpcore.NetworkStream:
        raise UnsafeURL("peers are reached over TCP only")

    def _resolve(
        self, host: str, port: int
    ) -> list[tuple[str, ipaddress.IPv4Address | ipaddress.IPv6Address]]:
        """Each address to dial (as getaddrinfo gave it) with its IP, all checked."""
        try:
            infos = socket.getaddrinfo(
                host, port, type=socket.SOCK_STREAM, proto=socket.IPPROTO_TCP
            )
        except (socket.gaierror, UnicodeError) as ex:
            raise httpcore.ConnectError(f"{host} cannot be resolved: {ex}") from None
        targets = []
        for info in infos:
            address = str(info[4][0])
            ip = ipaddress.ip_address(address.split("%", 1)[0])
            if not self._allow_private:
                try:
                    check_address(ip)
                except UnsafeURL:
                    raise UnsafeURL(
                        "host resolves to an address that is not public"
                    ) from None
            targets.append((address, ip))
        return targets


class GuardedTransport(httpx.HTTPTransport):
    """httpx's own transport over GuardedBackend.

    httpx builds its connection pool with no way to pass a network backend,
    so the pool is built again here with the same defaults. Proxies from the
    environment are not used: a proxy would resolve the names itself.
    """

    def __init__(self, *, allow_private: bool, allow_plain_http: bool) -> None:
        super().__init__()
        limits = httpx.Limits(max_connections=100, max_keepalive_connections=20)
        self._pool = httpcore.ConnectionPool(
            ssl_context=httpx.create_ssl_context(),
            max_connections=limits.max_connections,
            max_keepalive_connections=limits.max_keepalive_connections,
            keepalive_expiry=limits.keepalive_expiry,
            network_backend=GuardedBackend(
                allow_private=allow_private, allow_plain_http=allow_plain_http
            ),
        )
