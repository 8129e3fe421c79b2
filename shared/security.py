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


# \Z, not $: $ also matches before a trailing newline.
_NUMERIC_HOST = re.compile(
    r"\A(0x[0-9a-f]*|[0-9]+)(\.(0x[0-9a-f]*|[0-9]+))*\.?\Z", re.I
)
_CANONICAL_V4 = re.compile(
    r"\A(25[0-5]|2[0-4][0-9]|1[0-9]{2}|[1-9]?[0-9])(\.(25[0-5]|2[0-4][0-9]|1[0-9]{2}|[1-9]?[0-9])){3}\Z"
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


# Ports a peer URL may name: the web's two, and the unprivileged range without
# the ports browsers refuse to fetch from (the Fetch standard's "bad ports" at
# 1024 and above: IRC, SIP, NFS, X11 and the like), so this site cannot be
# pointed at another service's port to speak HTTP at it.
WEB_PORTS = frozenset({80, 443})
BLOCKED_PORTS = frozenset(
    {1719, 1720, 1723, 2049, 3659, 4045, 4190, 5060, 5061, 6000, 6566}
    | {6665, 6666, 6667, 6668, 6669, 6679, 6697, 10080}
)

_NAT64 = ipaddress.ip_network("64:ff9b::/96")  # RFC 6052 well-known prefix
_NAT64_LOCAL = ipaddress.ip_network("64:ff9b:1::/48")  # RFC 8215: local use
_V4_COMPATIBLE = ipaddress.ip_network("::/96")  # deprecated ::a.b.c.d
_V4_TRANSLATED = ipaddress.ip_network("::ffff:0:0:0/96")  # SIIT ::ffff:0:a.b.c.d
_ISATAP_IDS = (0x00005EFE, 0x02005EFE)  # interface ids that carry an IPv4


def check_port(port: int) -> None:
    """Raise UnsafeURL unless ``port`` is 80, 443 or an unblocked port >= 1024."""
    if port in WEB_PORTS:
        return
    if port < 1024 or port > 65535 or port in BLOCKED_PORTS:
        raise UnsafeURL(
            f"port {port} is not allowed (80, 443, or 1024-65535 except the"
            " ports browsers block)"
        )


def embedded_ipv4(ip: ipaddress.IPv6Address) -> list[ipaddress.IPv4Address]:
    """The IPv4 addresses an IPv6 address carries, where packets may go.

    IPv4-mapped and -compatible, SIIT, 6to4 (2002::/16), NAT64 (64:ff9b::/96),
    Teredo (server and client) and ISATAP interface ids all embed one; a
    check that looks at the IPv6 address alone lets 2002:7f00:1:: through.
    """
    low = ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)
    found = []
    if ip.ipv4_mapped is not None:
        found.append(ip.ipv4_mapped)
    if ip.sixtofour is not None:
        found.append(ip.sixtofour)
    if ip.teredo is not None:
        found.extend(ip.teredo)
    if ip in _NAT64 or ip in _V4_COMPATIBLE or ip in _V4_TRANSLATED:
        found.append(low)
    if (int(ip) >> 32) & 0xFFFFFFFF in _ISATAP_IDS:
        found.append(low)
    return found


def public_address(ip: ipaddress.IPv4Address | ipaddress.IPv6Address) -> bool:
    """Whether ``ip`` is an address on the public internet, and so is every
    IPv4 address it embeds."""
    if isinstance(ip, ipaddress.IPv6Address):
        if ip in _NAT64_LOCAL or (
            ip in _V4_COMPATIBLE and int(ip) <= 1  # :: and ::1
        ):
            return False
        embedded = embedded_ipv4(ip)
        if ip.ipv4_mapped is not None or ip in _NAT64:
            # Only the IPv4 address counts: a packet to it goes there.
            return all(public_address(v4) for v4 in embedded)
        if ip.teredo is not None or ip in _V4_COMPATIBLE or ip in _V4_TRANSLATED:
            return False  # tunnels and forms no public peer uses
        if not all(public_address(v4) for v4 in embedded):
            return False
    return not (
        not ip.is_global
        or ip.is_multicast
        or ip.is_private
        or ip.is_loopback
        or ip.is_link_local
        or ip.is_unspecified
        or ip.is_reserved
    )


def check_address(ip: ipaddress.IPv4Address | ipaddress.IPv6Address) -> None:
    """Raise UnsafeURL unless ``ip`` is public (see public_address)."""
    if not public_address(ip):
        raise UnsafeURL(f"address {ip} is not public")


PLAIN_HTTP_REFUSED = (
    "plain http to a public address would carry the token in clear: use https"
    " (or set SYNC_ALLOW_PLAIN_HTTP=true)"
)


def check_url(
    url: object,
    *,
    allow_private: bool,
    own_url: str | None = None,
    resolve: bool = True,
    allow_plain_http: bool = False,
) -> str:
    """Return the normalised URL or raise UnsafeURL saying why it is refused.

    Every address the host resolves to must be public, unless private URLs are
    allowed (development and tests); ``resolve=False`` checks a host name's
    form only (the connection checks the addresses it dials: see
    shared.control.transport). IPv4 in decimal, octal, hex or short forms is
    refused always: no honest peer writes its address that way. The port must
    pass check_port. Plain http to a public address is refused unless
    ``allow_plain_http``: tokens and passwords would cross the internet in
    clear.
    """
    if not isinstance(url, str) or not url.strip():
        raise UnsafeURL("URL is empty")
    try:
        parts = urlsplit(url.strip())
        port = parts.port
    except ValueError as ex:
        raise UnsafeURL(f"URL cannot be parsed: {ex}") from None
    scheme = parts.scheme.lower()
    if scheme not in ("http", "https"):
        raise UnsafeURL("only http and https URLs are allowed")
    host = (parts.hostname or "").rstrip(".")
    if not host:
        raise UnsafeURL("URL has no host")
    if parts.username is not None or parts.password is not None:
        raise UnsafeURL("URL may not carry credentials")
    if parts.query or parts.fragment:
        raise UnsafeURL("URL may not carry a query or fragment")
    if _NUMERIC_HOST.fullmatch(host) and not _CANONICAL_V4.fullmatch(host):
        raise UnsafeURL("IPv4 address in a non-canonical form")
    if own_url and origin(url) == origin(own_url):
        raise UnsafeURL("a site cannot connect to itself")
    check_port(port if port is not None else (443 if scheme == "https" else 80))
    try:
        literal: ipaddress.IPv4Address | ipaddress.IPv6Address | None = (
            ipaddress.ip_address(host)
        )
    except ValueError:
        literal = None
    if not allow_private:
        if literal is not None:
            check_address(literal)
        else:
            if host.lower() == "localhost" or host.lower().endswith(
                (".localhost", ".local", ".internal")
            ):
                raise UnsafeURL("address is not public")
            if resolve:
                for ip in resolve_host(host, port):
                    if not public_address(ip):
                        raise UnsafeURL(
                            "host resolves to an address that is not public"
                        )
    # With private URLs refused every address that passed is public; with
    # them allowed, a host name is judged when it is dialled.
    public = not allow_private or (literal is not None and public_address(literal))
    if scheme == "http" and public and not allow_plain_http:
        raise UnsafeURL(PLAIN_HTTP_REFUSED)
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
