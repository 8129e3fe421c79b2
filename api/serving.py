"""How the web serves: gunicorn's threaded worker, guarded against slow clients.

``dbsync serve`` runs gunicorn with ``GuardedThreadWorker`` (a ``gthread``
worker, ``SYNC_WEB_THREADS`` threads per process). Gunicorn's own threaded
worker hands a connection to a thread as soon as its first byte arrives; a
client that sends half a request then holds that thread for as long as it
likes, and one that does not read an answer holds it while the answer is
written. This worker changes three things:

- **Requests are read by the event loop, not by threads.** The head and a
  ``Content-Length`` or chunked body (up to ``SYNC_MAX_BODY_BYTES``) are read
  without blocking into a buffer; only a whole request goes to a thread. The
  head must be complete within ``SYNC_HEADER_TIMEOUT_SECONDS`` and the body
  within ``SYNC_BODY_TIMEOUT_SECONDS`` after it, or the connection is answered
  408 and closed. A declared body above the limit is answered 413 at once.
  Idle and half-open sockets cost a file descriptor, never a thread.
- **Answers must be taken.** Every write goes through ``GuardedSocket``: each
  256 KiB of an answer must be accepted by the client within
  ``SYNC_STREAM_STALL_SECONDS``, or the answer is cut (the connection is reset)
  and the thread is free again. The application learns it through
  ``GuardedSocket.write_failed`` (a pull-data page is then counted as not
  delivered).
- **Control calls keep threads.** ``ReservedThreads`` (around the WSGI app)
  lets data calls hold at most ``SYNC_WEB_THREADS - SYNC_WEB_CONTROL_THREADS``
  threads of a process; one more gets 503 with ``Retry-After``. Control calls
  (status, register, verify, ...) and health probes always find a thread.

The rare requests that still read from the socket in a thread (``Expect:
100-continue``, a malformed chunked body, pipelined requests) read under the
same body deadline.
"""

from __future__ import annotations

import errno
import json
import re
import selectors
import socket
import struct
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from functools import partial
from typing import Any

from gunicorn.workers.gthread import TConn, ThreadWorker

from shared.settings import Settings

HEAD_LIMIT = 64 * 1024  # a longer head goes to gunicorn's parser, which refuses it
SLICE = 256 * 1024  # an answer is written in slices; each within the stall timeout
LINGER_SECONDS = 2.0  # a closed connection is drained this long (RFC 9112 9.6)
LINGER_BYTES = 64 * 1024

_CONTENT_LENGTH = re.compile(
    rb"^content-length[ \t]*:[ \t]*([0-9]{1,18})[ \t]*\r?$", re.I | re.M
)
_TRANSFER_ENCODING = re.compile(rb"^transfer-encoding[ \t]*:(.*)$", re.I | re.M)
_EXPECT = re.compile(rb"^expect[ \t]*:", re.I | re.M)


def _canned(status: str, error: str) -> bytes:
    """A whole answer the event loop sends itself, in the protocol's error shape."""
    body = json.dumps({"success": False, "error": error}).encode()
    return (
        f"HTTP/1.1 {status}\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n"
    ).encode() + body


TIMED_OUT = _canned("408 Request Timeout", "Request timed out")
TOO_LARGE = _canned("413 Payload Too Large", "Request body too large")


class ClientTooSlow(OSError):
    """The client did not take an answer (or send a request) in time."""

    def __init__(self, message: str) -> None:
        super().__init__(errno.ETIMEDOUT, message)


class GuardedSocket:
    """A connected socket whose blocking reads keep a deadline and whose writes
    must make progress: each ``SLICE`` within ``stall`` seconds."""

    def __init__(self, sock: socket.socket, stall: float) -> None:
        self.raw = sock
        self.stall = stall
        self.read_deadline: float | None = None
        self.write_failed = False
        self._timeout: float | None = None  # what a caller set with settimeout

    def __getattr__(self, name: str) -> Any:
        return getattr(self.raw, name)

    def fileno(self) -> int:
        return self.raw.fileno()

    def settimeout(self, value: float | None) -> None:
        self._timeout = value
        self.raw.settimeout(value)

    def gettimeout(self) -> float | None:
        return self._timeout

    def setblocking(self, flag: bool) -> None:
        self._timeout = None if flag else 0.0
        self.raw.setblocking(flag)

    def recv(self, size: int, flags: int = 0) -> bytes:
        if self.read_deadline is None:
            return self.raw.recv(size, flags)
        remaining = self.read_deadline - time.monotonic()
        if remaining <= 0:
            raise ClientTooSlow("request not received in time")
        wait = remaining if self._timeout is None else min(remaining, self._timeout)
        self.raw.settimeout(wait)
        try:
            return self.raw.recv(size, flags)
        except TimeoutError:
            if self._timeout is not None and self._timeout < remaining:
                raise  # the caller's own, shorter timeout
            raise ClientTooSlow("request not received in time") from None
        finally:
            self.raw.settimeout(self._timeout)

    def send(self, data: bytes, flags: int = 0) -> int:
        self.sendall(data)
        return len(data)

    def sendall(self, data: bytes | bytearray | memoryview, flags: int = 0) -> None:
        view = memoryview(data).cast("B")
        try:
            for start in range(0, len(view), SLICE):
                # sendall's timeout bounds the whole call: this slice must be
                # taken within the stall timeout, however the client reads it.
                self.raw.settimeout(self.stall)
                self.raw.sendall(view[start : start + SLICE], flags)
        except TimeoutError:
            self.write_failed = True
            raise ClientTooSlow(
                f"the client took less than {SLICE // 1024} KiB of the answer"
                f" in {self.stall:g} s"
            ) from None
        except OSError:
            self.write_failed = True
            raise
        finally:
            try:
                self.raw.settimeout(self._timeout)
            except OSError:
                pass

    def abort(self) -> None:
        """Make the close reset the connection: what the client was not sent is dropped."""
        try:
            self.raw.setsockopt(
                socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0)
            )
        except OSError:
            pass


class GuardedConn(TConn):
    """A connection and what the event loop has read of its next request."""

    def __init__(self, worker: GuardedThreadWorker, *args: Any) -> None:
        super().__init__(*args)
        self.worker = worker
        self.buffered = bytearray()
        self.deadline = 0.0
        self.need: int | None = None  # bytes of the whole request, once known
        self.chunk_pos = 0  # where the chunked body scan goes on
        self.chunk_total = 0
        self.aborted = False

    @property
    def raw(self) -> socket.socket:
        sock = self.sock
        return sock.raw if isinstance(sock, GuardedSocket) else sock

    def close(self, graceful: bool = False) -> None:
        if graceful and not self.aborted:
            self.worker.linger(self)
            return
        try:
            self.raw.close()
        except OSError:
            pass


class GuardedThreadWorker(ThreadWorker):
    """gunicorn's gthread worker that reads requests in its event loop and cuts
    answers that clients do not take (see the module docstring)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        settings = Settings.from_env()
        self.header_timeout = float(settings.header_timeout_seconds)
        self.body_timeout = float(settings.body_timeout_seconds)
        self.stall = float(settings.stream_stall_seconds)
        self.body_limit = settings.max_body_bytes
        self.reading: set[GuardedConn] = set()
        self.lingering: dict[socket.socket, float] = {}

    # -- the event loop: read whole requests --------------------------------------

    def accept(self, listener: socket.socket) -> None:
        try:
            client, addr = listener.accept()
        except OSError as ex:
            if ex.errno not in (errno.EAGAIN, errno.ECONNABORTED, errno.EWOULDBLOCK):
                raise
            return
        self.nr_conns += 1
        conn = GuardedConn(self, self.cfg, client, addr, listener.getsockname())
        self._read_request(conn)

    def on_client_socket_readable(self, conn: GuardedConn, client: Any) -> None:
        """A kept-alive connection starts its next request."""
        self.poller.unregister(client)
        self.keepalived_conns.remove(conn)
        self._read_request(conn)

    def _read_request(self, conn: GuardedConn) -> None:
        conn.raw.setblocking(False)
        conn.buffered = bytearray()
        conn.need = None
        conn.chunk_pos = conn.chunk_total = 0
        conn.deadline = time.monotonic() + self.header_timeout
        self.reading.add(conn)
        self.poller.register(
            conn.raw, selectors.EVENT_READ, partial(self._on_readable, conn)
        )

    def _on_readable(self, conn: GuardedConn, _sock: Any) -> None:
        try:
            data = conn.raw.recv(65536)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            data = b""
        if not data:
            self._drop(conn)
            return
        conn.buffered += data
        if conn.need is None and not self._framed(conn):
            return
        if conn.need == -1:
            self._chunked(conn)
        elif conn.need is not None and len(conn.buffered) >= conn.need:
            self._dispatch(conn)

    def _framed(self, conn: GuardedConn) -> bool:
        """Once the head is complete: decide how much of the body to wait for.

        Returns False while the head is incomplete (or the connection is gone).
        """
        buf = conn.buffered
        end = buf.find(b"\r\n\r\n")
        if end < 0:
            if len(buf) > HEAD_LIMIT:
                self._dispatch(conn)  # gunicorn's parser answers 431/414
            return False
        head = bytes(buf[: end + 2])
        body_start = end + 4
        conn.deadline = time.monotonic() + self.body_timeout
        if _EXPECT.search(head):
            # The client waits for "100 Continue", which gunicorn sends.
            self._dispatch(conn)
            return False
        te = _TRANSFER_ENCODING.search(head)
        if te is not None:
            if te.group(1).strip().lower() != b"chunked":
                self._dispatch(conn)  # gunicorn refuses what it does not support
                return False
            conn.need = -1
            conn.chunk_pos = body_start
            self._chunked(conn)
            return False
        cl = _CONTENT_LENGTH.search(head)
        length = int(cl.group(1)) if cl else 0
        if length > self.body_limit:
            self._refuse(conn, TOO_LARGE)
            return False
        conn.need = body_start + length
        return True

    def _chunked(self, conn: GuardedConn) -> None:
        """Scan a chunked body as it arrives; dispatch once its last chunk is in."""
        buf = conn.buffered
        pos = conn.chunk_pos
        while True:
            eol = buf.find(b"\r\n", pos)
            if eol < 0:
                if len(buf) - pos > 1024:
                    self._dispatch(conn)  # not a chunk size line: the parser says why
                return
            try:
                size = int(bytes(buf[pos:eol]).split(b";", 1)[0].strip(), 16)
            except ValueError:
                self._dispatch(conn)
                return
            if size == 0:
                line = eol + 2
                while True:  # trailers, then an empty line
                    end = buf.find(b"\r\n", line)
                    if end < 0:
                        conn.chunk_pos = pos
                        return
                    if end == line:
                        self._dispatch(conn)
                        return
                    line = end + 2
            if conn.chunk_total + size > self.body_limit:
                self._refuse(conn, TOO_LARGE)
                return
            nxt = eol + 2 + size + 2
            if nxt > len(buf):
                conn.chunk_pos = pos
                return
            conn.chunk_total += size
            pos = conn.chunk_pos = nxt

    def _dispatch(self, conn: GuardedConn) -> None:
        """The request is here: give it to a thread."""
        self.reading.discard(conn)
        self.poller.unregister(conn.raw)
        conn.data_ready = True
        self.enqueue_req(conn)

    def _refuse(self, conn: GuardedConn, answer: bytes) -> None:
        self.reading.discard(conn)
        self.poller.unregister(conn.raw)
        try:
            conn.raw.send(answer)
        except OSError:
            pass
        self.nr_conns -= 1
        self.linger(conn)

    def _drop(self, conn: GuardedConn) -> None:
        self.reading.discard(conn)
        try:
            self.poller.unregister(conn.raw)
        except (KeyError, ValueError, OSError):
            pass
        self.nr_conns -= 1
        try:
            conn.raw.close()
        except OSError:
            pass

    def murder_pending(self) -> None:
        super().murder_pending()
        now = time.monotonic()
        for conn in list(self.reading):
            expired = conn.deadline <= now
            if conn.buffered and expired:
                self.log.info(
                    "request from %s not received within its timeout; answered 408",
                    conn.client[0] if conn.client else "?",
                )
                self._refuse(conn, TIMED_OUT)
            elif not conn.buffered and (expired or not self.alive):
                self._drop(conn)  # nothing sent: closed like an idle keep-alive
        for sock, until in list(self.lingering.items()):
            if until <= now:
                self._end_linger(sock)

    # -- closing without blocking the event loop ----------------------------------

    def linger(self, conn: GuardedConn) -> None:
        """Half-close, then drain what the client still sends for a moment, from
        the event loop (gunicorn does this in the loop thread, blocking it)."""
        sock = conn.raw
        try:
            sock.setblocking(False)
            sock.shutdown(socket.SHUT_WR)
        except OSError:
            sock.close()
            return
        self.lingering[sock] = time.monotonic() + LINGER_SECONDS
        try:
            self.poller.register(sock, selectors.EVENT_READ, self._on_linger)
        except (KeyError, ValueError, OSError):
            self._end_linger(sock)

    def _on_linger(self, sock: socket.socket) -> None:
        try:
            data = sock.recv(LINGER_BYTES)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            data = b""
        if not data:
            self._end_linger(sock)

    def _end_linger(self, sock: socket.socket) -> None:
        self.lingering.pop(sock, None)
        try:
            self.poller.unregister(sock)
        except (KeyError, ValueError, OSError):
            pass
        try:
            sock.close()
        except OSError:
            pass

    # -- threads -------------------------------------------------------------------

    def handle(self, conn: GuardedConn) -> Any:
        if not isinstance(conn.sock, GuardedSocket):
            conn.sock = GuardedSocket(conn.sock, self.stall)
        sock = conn.sock
        sock.setblocking(True)
        conn.init()
        if conn.buffered:
            conn.parser.unreader.unread(bytes(conn.buffered))
            conn.buffered = bytearray()
        # What a thread still reads from the socket (a request that was not
        # buffered whole) must arrive by the request's deadline.
        sock.read_deadline = max(conn.deadline, time.monotonic() + self.header_timeout)
        try:
            return super().handle(conn)
        finally:
            sock.read_deadline = None

    def handle_request(self, req: Any, conn: GuardedConn) -> Any:
        try:
            return super().handle_request(req, conn)
        except ClientTooSlow as ex:
            self.log.warning(
                "cut %s %s to %s: %s",
                req.method,
                req.path,
                conn.client[0] if conn.client else "?",
                ex.strerror,
            )
            conn.aborted = True
            sock = conn.sock
            if isinstance(sock, GuardedSocket):
                sock.abort()
            return False


# -- the application side ------------------------------------------------------------


class ReservedThreads:
    """Let data calls hold at most ``capacity`` threads of this process at once.

    Wraps the WSGI app: a call to one of ``paths`` takes a slot for as long as
    its answer is being produced and written (until the server closes the
    answer); without a free slot it is answered 503 with ``Retry-After`` and
    never reaches the app. Every other call passes untouched, so the threads
    beyond ``capacity`` are always there for control calls.
    """

    BUSY = b'{"success":false,"error":"Server busy, retry later"}'

    def __init__(
        self, app: Callable[..., Iterable[bytes]], paths: set[str], capacity: int
    ) -> None:
        self.app = app
        self.paths = frozenset(paths)
        self.capacity = capacity
        self._slots = threading.BoundedSemaphore(capacity)

    def __call__(
        self, environ: dict[str, Any], start_response: Callable[..., Any]
    ) -> Iterable[bytes]:
        if environ.get("PATH_INFO") not in self.paths:
            return self.app(environ, start_response)
        if not self._slots.acquire(blocking=False):
            start_response(
                "503 Service Unavailable",
                [
                    ("Content-Type", "application/json"),
                    ("Content-Length", str(len(self.BUSY))),
                    ("Retry-After", "5"),
                ],
            )
            return [self.BUSY]
        try:
            result = self.app(environ, start_response)
        except BaseException:
            self._slots.release()
            raise
        return _Closing(result, self._slots.release)


class _Closing:
    """An answer's iterable that calls ``release`` once, when the server closes it."""

    def __init__(self, result: Iterable[bytes], release: Callable[[], Any]) -> None:
        self._result = result
        self._release: Callable[[], Any] | None = release

    def __iter__(self) -> Iterator[bytes]:
        return iter(self._result)

    def close(self) -> None:
        try:
            close = getattr(self._result, "close", None)
            if close is not None:
                close()
        finally:
            release, self._release = self._release, None
            if release is not None:
                release()
