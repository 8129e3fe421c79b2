"""Make text that came from a peer safe to store and to show.

A peer chooses what its error texts, names and status words hold: NUL (which
PostgreSQL refuses in text), unpaired surrogates (which UTF-8 refuses),
control characters. Written as they came they would make the very statement
that records a failure fail in turn, and the task that tried would end with
nothing recorded.
"""

from __future__ import annotations


def safe_text(text: str, limit: int) -> str:
    """``text`` with every unprintable character written as an escape, at most
    ``limit`` characters: storable in any text column, one line."""
    text = text[: limit * 2]
    if not text.isprintable():
        text = "".join(
            ch if ch.isprintable() else ch.encode("unicode_escape").decode("ascii")
            for ch in text
        )
    return text.encode("utf-8", "backslashreplace").decode("utf-8")[:limit]


def short_word(value: object, limit: int) -> str | None:
    """A short identifier-like value a peer sent (a status, a uuid), or None
    when it is not a printable string of at most ``limit`` characters."""
    if isinstance(value, str) and value.isprintable() and len(value) <= limit:
        return value
    return None
