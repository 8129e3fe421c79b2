"""Which address a call comes from, behind trusted proxies or not (finding 6)."""

from __future__ import annotations

import pytest
from falcon import testing

from api.middleware import remote_ip
from shared.settings import Settings


def settings(**env: str) -> Settings:
    return Settings.from_env({"SYNC_HOME": "/tmp/dbsync-test-home", **env})


def caller(headers: dict[str, str], **env: str) -> str:
    req = testing.create_req(headers=headers, remote_addr="10.0.0.1")
    return remote_ip(req, settings(**env))


TRUSTED = {"SYNC_TRUST_FORWARDED": "true"}


@pytest.mark.parametrize(
    ("headers", "env", "expected"),
    [
        # Not behind a proxy: the headers are the client's own words.
        ({"X-Forwarded-For": "1.2.3.4"}, {}, "10.0.0.1"),
        # One proxy: it appended the address it saw, on the right.
        ({"X-Forwarded-For": "6.6.6.6, 198.51.100.7"}, TRUSTED, "198.51.100.7"),
        ({"X-Forwarded-For": "198.51.100.7"}, TRUSTED, "198.51.100.7"),
        # A Forwarded header (which the proxy does not write) never wins.
        (
            {"Forwarded": "for=6.6.6.6", "X-Forwarded-For": "198.51.100.7"},
            TRUSTED,
            "198.51.100.7",
        ),
        ({"Forwarded": "for=6.6.6.6"}, TRUSTED, "10.0.0.1"),
        # Two proxies: the second from the right is what the outer one saw.
        (
            {"X-Forwarded-For": "6.6.6.6, 198.51.100.7, 10.0.0.9"},
            {**TRUSTED, "SYNC_TRUSTED_PROXY_HOPS": "2"},
            "198.51.100.7",
        ),
        # Fewer entries than proxies, or no address: not the proxies' header.
        (
            {"X-Forwarded-For": "198.51.100.7"},
            {**TRUSTED, "SYNC_TRUSTED_PROXY_HOPS": "2"},
            "10.0.0.1",
        ),
        ({"X-Forwarded-For": "6.6.6.6, not-an-ip"}, TRUSTED, "10.0.0.1"),
        ({"X-Forwarded-For": "2001:db8::1"}, TRUSTED, "2001:db8::1"),
    ],
)
def test_the_caller_is_counted_from_the_right(
    headers: dict[str, str], env: dict[str, str], expected: str
) -> None:
    assert caller(headers, **env) == expected
