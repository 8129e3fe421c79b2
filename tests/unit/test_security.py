"""Tokens, hashes and the outbound URL guard."""

from __future__ import annotations

import hashlib
import re

import pytest

from shared import security
from shared.security import UnsafeURL, check_url


def test_token_is_43_url_safe_chars_and_hash_is_sha256_hex() -> None:
    token = security.new_token()
    assert re.fullmatch(r"[A-Za-z0-9_-]{43}", token)
    assert security.hash_token(token) == hashlib.sha256(token.encode()).hexdigest()
    assert security.new_token() != token


def test_password_hash_is_argon2_and_verifies() -> None:
    hashed = security.hash_password("s3cret")
    assert hashed.startswith("$argon2id$")
    assert security.verify_password(hashed, "s3cret") is True
    assert security.verify_password(hashed, "wrong") is False
    assert security.verify_password(None, "s3cret") is False
    assert security.verify_password(hashed, "") is False


@pytest.mark.parametrize(
    "url, reason",
    [
        ("http://2130706433/", "non-canonical"),
        ("http://0177.0.0.1/", "non-canonical"),
        ("http://0x7f.0.0.1/", "non-canonical"),
        ("http://127.1/", "non-canonical"),
        ("http://0x7f000001/", "non-canonical"),
        ("http://127.0.0.1:8000/", "not public"),
        ("http://10.1.2.3/", "not public"),
        ("http://172.16.0.1/", "not public"),
        ("http://192.168.1.1/", "not public"),
        ("http://169.254.169.254/", "not public"),
        ("http://0.0.0.0/", "not public"),
        ("http://224.0.0.1/", "not public"),
        ("http://[::1]/", "not public"),
        ("http://[fe80::1]/", "not public"),
        ("http://[fc00::1]/", "not public"),
        ("http://[::ffff:127.0.0.1]/", "not public"),
        ("http://localhost:8000/", "not public"),
        ("ftp://93.184.216.34/", "only http"),
        ("http:///nohost", "no host"),
        ("http://user:pw@93.184.216.34/", "credentials"),
    ],
)
def test_guard_refuses(url: str, reason: str) -> None:
    with pytest.raises(UnsafeURL, match=reason):
        check_url(url, allow_private=False)


def test_guard_checks_every_resolved_address(monkeypatch: pytest.MonkeyPatch) -> None:
    import ipaddress

    monkeypatch.setattr(
        security,
        "resolve_host",
        lambda host, port: [
            ipaddress.ip_address("93.184.216.34"),
            ipaddress.ip_address("10.0.0.5"),
        ],
    )
    with pytest.raises(UnsafeURL, match="resolves to an address that is not public"):
        check_url("https://peer.example.org/", allow_private=False)


def test_guard_accepts_public_and_normalises() -> None:
    assert check_url("HTTPS://93.184.216.34/base/", allow_private=False) == (
        "https://93.184.216.34/base"
    )


def test_private_allowed_for_local_use_but_odd_forms_and_self_still_refused() -> None:
    assert (
        check_url("http://127.0.0.1:8001/", allow_private=True)
        == "http://127.0.0.1:8001"
    )
    with pytest.raises(UnsafeURL, match="non-canonical"):
        check_url("http://127.1:8001/", allow_private=True)
    with pytest.raises(UnsafeURL, match="itself"):
        check_url(
            "http://127.0.0.1:8000",
            allow_private=True,
            own_url="http://127.0.0.1:8000/",
        )


@pytest.mark.parametrize("host", ["127.1\n", "0x7f.1\n", "127.0.0.1\n"])
def test_host_patterns_match_whole_strings_only(host: str) -> None:
    # `$` also matches before a trailing newline: the patterns must see it all.
    assert security._NUMERIC_HOST.match(host) is None
    assert security._CANONICAL_V4.match(host) is None
    assert security._NUMERIC_HOST.fullmatch(host.rstrip("\n")) is not None
