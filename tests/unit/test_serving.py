"""The pieces of api.serving that need no server: the guarded socket and the
threads kept for control calls. (The worker itself: tests/e2e/test_slow_clients.py.)"""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest

from api.serving import ClientTooSlow, GuardedSocket, ReservedThreads


@pytest.fixture
def pair() -> Iterator[tuple[socket.socket, socket.socket]]:
    a, b = socket.socketpair()
    yield a, b
    a.close()
    b.close()


def test_an_answer_the_client_does_not_take_is_cut_after_the_stall(
    pair: tuple[socket.socket, socket.socket],
) -> None:
    server, _client = pair
    guarded = GuardedSocket(server, stall=0.5)
    t0 = time.monotonic()
    with pytest.raises(
        ClientTooSlow, match=r"less than 256 KiB of the answer in 0.5 s"
    ):
        guarded.sendall(b"x" * (8 * 1024 * 1024))
    assert 0.5 <= time.monotonic() - t0 < 2
    assert guarded.write_failed


def test_an_answer_taken_slowly_but_steadily_is_written_whole(
    pair: tuple[socket.socket, socket.socket],
) -> None:
    server, client = pair
    guarded = GuardedSocket(server, stall=1.0)
    payload = b"y" * (2 * 1024 * 1024)
    got = bytearray()

    def read() -> None:
        while len(got) < len(payload):
            got.extend(client.recv(64 * 1024))
            time.sleep(0.01)

    reader = threading.Thread(target=read)
    reader.start()
    guarded.sendall(payload)
    reader.join(timeout=10)
    assert bytes(got) == payload
    assert not guarded.write_failed


def test_a_request_read_in_a_thread_keeps_its_deadline(
    pair: tuple[socket.socket, socket.socket],
) -> None:
    server, client = pair
    guarded = GuardedSocket(server, stall=5)
    client.sendall(b"abc")
    guarded.read_deadline = time.monotonic() + 0.4
    assert guarded.recv(10) == b"abc"
    t0 = time.monotonic()
    with pytest.raises(ClientTooSlow, match="request not received in time"):
        guarded.recv(10)
    assert 0.2 <= time.monotonic() - t0 < 1.5
    # A caller's own shorter timeout stays its own (gunicorn's body drain).
    guarded.read_deadline = time.monotonic() + 10
    guarded.settimeout(0.1)
    with pytest.raises(TimeoutError) as raised:
        guarded.recv(10)
    assert not isinstance(raised.value, ClientTooSlow)
    assert guarded.gettimeout() == 0.1


def _app(environ: dict[str, Any], start_response: Any) -> Any:
    start_response("200 OK", [("Content-Type", "text/plain")])
    return Body()


class Body:
    closed = 0

    def __iter__(self) -> Iterator[bytes]:
        return iter([b"data"])

    def close(self) -> None:
        Body.closed += 1


def test_data_calls_never_take_the_threads_kept_for_control_calls() -> None:
    gate = ReservedThreads(_app, {"/sync/api/pull-data"}, capacity=1)
    seen: list[tuple[str, list[tuple[str, str]]]] = []

    def start(status: str, headers: list[tuple[str, str]]) -> None:
        seen.append((status, headers))

    data = {"PATH_INFO": "/sync/api/pull-data"}
    held = gate(data, start)  # written, not yet closed: holds the one slot
    refused = gate(data, start)
    assert b"".join(refused) == b'{"success":false,"error":"Server busy, retry later"}'
    assert seen[-1][0] == "503 Service Unavailable"
    assert ("Retry-After", "5") in seen[-1][1]
    # A control call passes whatever the data calls hold.
    control = gate({"PATH_INFO": "/sync/api/status"}, start)
    assert (b"".join(control), seen[-1][0]) == (b"data", "200 OK")
    assert b"".join(held) == b"data"
    held.close()  # type: ignore[attr-defined]  # what the server does once written
    assert Body.closed == 1
    again = gate(data, start)
    assert (b"".join(again), seen[-1][0]) == (b"data", "200 OK")
    again.close()  # type: ignore[attr-defined]
    again.close()  # type: ignore[attr-defined]  # a second close releases nothing more
    assert gate._slots.acquire(blocking=False)
    assert not gate._slots.acquire(blocking=False)
