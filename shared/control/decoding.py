"""Decode a peer's answer body as it arrives, never past a size limit.

httpx undoes Content-Encoding by itself and without a limit: 65 KB of gzip
on the wire became 64 MiB in memory, and stacked codings (``gzip, gzip``)
multiply the ratio. Here the body is taken raw; each coding is undone in
pieces of at most PIECE bytes, and the output of every stage (the raw bytes
too) counts against the limit, so a bomb stops at the limit with a few
pieces in memory, whatever its ratio.
"""

from __future__ import annotations

import zlib
from collections.abc import Callable, Iterable, Iterator

ACCEPT_ENCODING = "gzip, deflate"
PIECE = 64 * 1024
MAX_CODINGS = 2
_GZIP = ("gzip", "x-gzip")


class BodyRefused(ValueError):
    """A body this site will not decode: an unknown coding or broken data."""


class BodyTooLarge(BodyRefused):
    """A body larger, decoded or not, than its limit."""

    def __init__(self, limit: int) -> None:
        super().__init__(f"larger than {limit} bytes")
        self.limit = limit


def codings(header: str | None) -> list[str]:
    """The codings a Content-Encoding header names, in the order applied."""
    names = [c.strip().lower() for c in (header or "").split(",") if c.strip()]
    names = [n for n in names if n != "identity"]
    for name in names:
        if name not in (*_GZIP, "deflate"):
            raise BodyRefused(f"unsupported Content-Encoding {name!r}")
    if len(names) > MAX_CODINGS:
        raise BodyRefused(f"more than {MAX_CODINGS} content codings")
    return names


def decode(
    raw: Iterable[bytes], names: list[str], limit: Callable[[], int]
) -> Iterator[bytes]:
    """The body under ``names`` (see codings) decoded, piece by piece.

    ``limit()`` is read as the body flows, so a caller may set it once the
    answer's headers are known. Raises BodyTooLarge past it, BodyRefused on
    data that does not decode.
    """
    chunks = _bounded(raw, limit)
    for name in reversed(names):
        chunks = _bounded(_inflate(chunks, name), limit)
    return chunks


def _bounded(chunks: Iterable[bytes], limit: Callable[[], int]) -> Iterator[bytes]:
    total = 0
    for chunk in chunks:
        total += len(chunk)
        if total > limit():
            raise BodyTooLarge(limit())
        yield chunk


def _inflate(chunks: Iterable[bytes], name: str) -> Iterator[bytes]:
    """Undo one gzip or deflate coding, PIECE bytes of output at a time."""
    gzip = name in _GZIP
    obj = zlib.decompressobj(16 + zlib.MAX_WBITS if gzip else zlib.MAX_WBITS)
    fresh = True  # no output yet: deflate may still turn out to be raw
    for chunk in chunks:
        data = chunk
        while data:
            if obj.eof:
                if not gzip:
                    raise BodyRefused("data after the end of the deflate stream")
                obj = zlib.decompressobj(16 + zlib.MAX_WBITS)  # the next member
            try:
                out = obj.decompress(data, PIECE)
            except zlib.error:
                if not gzip and fresh:
                    # Some servers send deflate without its zlib wrapper.
                    obj = zlib.decompressobj(-zlib.MAX_WBITS)
                    fresh = False
                    continue
                raise BodyRefused(f"invalid {name} data") from None
            fresh = False
            data = obj.unused_data if obj.eof else obj.unconsumed_tail
            if out:
                yield out
            while len(out) == PIECE and not data and not obj.eof:
                # All input taken, but the decoder may hold more output.
                out = obj.decompress(b"", PIECE)
                data = obj.unused_data if obj.eof else obj.unconsumed_tail
                if out:
                    yield out
