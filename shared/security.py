"""Tokens, hashes, the incoming password and the outbound URL guard."""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import re
import secrets
import socket
from urllib.parse import urlsplit

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError

_hasher = PasswordHasher()


def new_token() -> str:
    """32 random bytes from the OS CSPRNG, URL-safe base64 without padding."""
    return secrets.token_urlsafe(32)


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


def same_secret(a: str | None, b: str | None) -> bool:
    """Compare two secrets in constant time; a missing one never matches."""
    if not a or not b:
        return False
    return hmac.compare_digest(a.encode("utf-8"), b.encode("utf-8"))


def short_hash(token_hash: str | None) -> str:
    """The most of a token hash that may appear in a log line."""
    return (token_hash or "")[:8]


def hash_password(password: str) -> str:
    return _hasher.hash(password)


def verify_password(password_hash: str | None, password: str | None) -> bool:
    if not password_hash or not password:
        return False
    try:
        return _hasher.verify(password_hash, password)
    except (VerificationError, InvalidHashError):
        return False


class UnsafeURL(ValueError):
    """A peer URL that may not be stored or called."""


_NUMERIC_HOST = re.compile(r"^(0x[0-9a-f]*|[0-9]+)(\.(0x[0-9a-f]*|[0-9]+))*\.?$", re.I)
_CANONICAL_V4 = re.compile(
    r"^(25[0-5]|2[0-4][0-9]|1[0-9]{2}|[1-9]?[0-9])(\.(25[0-5]|2[0-4][0-9]|1[0-9]{2}|[1-9]?[0-9])){3}$"
)


def normalise_url(url: str) -> str:
    """Trim whitespace and trailing slashes; lower-case scheme and host."""
    parts = urlsplit(url.strip())
    netloc = parts.netloc.lower() if "@" not in parts.netloc else parts.netloc
    return f"{parts.scheme.lower()}://{netloc}{parts.path}".rstrip("/")


def origin(url: str) -> tuple[str, str, int]:
    """(scheme, host, port) with default ports filled in, for self-comparison."""
    parts = urlsplit(url.strip())
    scheme = parts.scheme.lower()
    port = parts.port or (443 if scheme == "https" else 80)
    return scheme, (parts.hostname or "").lower().rstrip("."), port


def _refused(ip: ipaddress.IPv4Address | ipaddress.IPv6Address) -> bool:
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return (
        not ip.is_global
        or ip.is_multicast
        or ip.is_private
        or ip.is_loopback
        or ip.is_link_local
        or ip.is_unspecified
        or ip.is_reserved
    )


def check_url(
    url: object,
    *,
    allow_private: bool,
    own_url: str | None = None,
    resolve: bool = True,
) -> str:
    """Return the normalised URL or raise UnsafeURL saying why it is refused.

    Every address the host resolves to must be public, unless private URLs are
    allowed (development and tests). IPv4 in decimal, octal, hex or short forms
    is refused always: no honest peer writes its address that way.
    """
    if not isinstance(url, str) or not url.strip():
        raise UnsafeURL("URL is empty")
    try:
        parts = urlsplit(url.strip())
        port = parts.port
    except ValueError as ex:
        raise UnsafeURL(f"URL cannot be parsed: {ex}") from None
    if parts.scheme.lower() not in ("http", "https"):
        raise UnsafeURL("only http and https URLs are allowed")
    host = (parts.hostname or "").rstrip(".")
    if not host:
        raise UnsafeURL("URL has no host")
    if parts.username is not None or parts.password is not None:
        raise UnsafeURL("URL may not carry credentials")
    if parts.query or parts.fragment:
        raise UnsafeURL("URL may not carry a query or fragment")
    if _NUMERIC_HOST.match(host) and not _CANONICAL_V4.match(host):
        raise UnsafeURL("IPv4 address in a non-canonical form")
    if own_url and origin(url) == origin(own_url):
        raise UnsafeURL("a site cannot connect to itself")
    if not allow_private:
        try:
            literal = ipaddress.ip_address(host)
        except ValueError:
            literal = None
        if literal is not None:
            if _refused(literal):
                raise UnsafeURL("address is not public")
        else:
            if host.lower() == "localhost" or host.lower().endswith(
                (".localhost", ".local", ".internal")
            ):
                raise UnsafeURL("address is not public")
            if resolve:
                for ip in resolve_host(host, port):
                    if _refused(ip):
                        raise UnsafeURL(
                            "host resolves to an address that is not public"
                        )
    return normalise_url(url)


def resolve_host(
    host: str, port: int | None
) -> list[ipaddress.IPv4Address | ipaddress.IPv6Address]:
    try:
        infos = socket.getaddrinfo(host, port or 443, proto=socket.IPPROTO_TCP)
    except (socket.gaierror, UnicodeError) as ex:
        raise UnsafeURL(f"host cannot be resolved: {ex}") from None
    out = []
    for info in infos:
        addr = str(info[4][0]).split("%", 1)[0]
        out.append(ipaddress.ip_address(addr))
    if not out:
        raise UnsafeURL("host resolves to no address")
    return out
