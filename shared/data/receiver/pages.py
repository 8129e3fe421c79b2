"""Say what a pulled page is and what applying one gives, whatever its format.

Page sources (shared.data.receiver.sources) make these pages and the writer
(shared.data.receiver.writer) applies them; both sides, and the COPY and
SQLite writers under the writer, share the words here: the columns a page
writes, its exact result, and the refusal of a page that cannot apply.

Counting rules, so ``created + updated + skipped + failed`` is the page's
row count:

- A row whose values do not decode for the target's columns is failed.
- Duplicate keys inside one page: the last occurrence wins (it is the one
  written); each earlier occurrence is counted as skipped.
- skip: rows whose key exists are skipped. overwrite / merge: they are
  updated, even when no value changes.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from shared.data.schema import ColumnInfo, TableInfo

MAX_ERRORS = 100


class ImportRefused(Exception):
    """A page that cannot be applied to this table at all (the transfer fails).

    A worker's error, never an answer to a peer: the pull records its text.
    """


class AppendNotSupported(ImportRefused):
    """``append`` needs a single-column key that the database generates."""


@dataclass
class PageResult:
    """Exact outcome of one page."""

    created: int = 0
    updated: int = 0
    skipped: int = 0
    failed: int = 0
    errors: list[dict[str, Any]] = field(default_factory=list)
    ignored_columns: list[str] = field(default_factory=list)

    def fail(self, key: Any, error: str) -> None:
        self.failed += 1
        if len(self.errors) < MAX_ERRORS:
            self.errors.append({"key": key, "error": error})

    def add_failures(self, other: PageResult) -> None:
        self.failed += other.failed
        self.errors.extend(other.errors[: max(0, MAX_ERRORS - len(self.errors))])


@dataclass(frozen=True)
class IncomingPage:
    """The metadata of a bulk page as its headers give it."""

    format: str
    columns: list[str]
    count: int
    has_more: bool
    next_cursor: list[Any] | None


class _Stream(Protocol):
    bytes_read: int

    def iter_bytes(self) -> Iterator[bytes]: ...


@dataclass(frozen=True)
class JsonPage:
    """One JSON pull-data page as received."""

    rows: list[dict[str, Any]]
    next_cursor: Any
    has_more: bool
    size: int

    @property
    def count(self) -> int:
        return len(self.rows)


@dataclass(frozen=True)
class BulkPage:
    """One bulk (COPY data) page: its headers, and its body still to be read.

    The body streams into the database as it arrives, so its size is known
    only once the page has been applied.
    """

    incoming: IncomingPage
    body: _Stream

    @property
    def count(self) -> int:
        return self.incoming.count

    @property
    def next_cursor(self) -> Any:
        return self.incoming.next_cursor

    @property
    def has_more(self) -> bool:
        return self.incoming.has_more

    @property
    def size(self) -> int:
        return self.body.bytes_read


Page = JsonPage | BulkPage


def choose_columns(
    info: TableInfo, incoming: Sequence[str], strategy: str, *, check_keys: bool = True
) -> tuple[list[ColumnInfo], list[str]]:
    """The target columns a page writes (in table order) and the incoming ones ignored.

    Incoming columns the target lacks or computes itself are ignored. Raises
    ImportRefused (AppendNotSupported for append) when the strategy cannot
    apply to this table at all; ``check_keys`` also requires the key columns
    among the incoming ones.
    """
    names = set(incoming)
    writable = {c.name for c in info.columns if not c.generated}
    ignored = sorted(n for n in names if n not in writable)
    columns = [c for c in info.columns if c.name in writable and c.name in names]
    if strategy == "append":
        key_col = check_append(info)
        columns = [c for c in columns if c.name != key_col.name]
        if not columns:
            raise AppendNotSupported(
                f"Rows for {info.name} carry no column besides the key"
            )
        return columns, ignored
    if not info.primary_key:
        raise ImportRefused(
            f"Table {info.name} has no primary key: a new row cannot be"
            " told from one already there",
        )
    missing = [n for n in info.primary_key if n not in names]
    if check_keys and missing:
        raise ImportRefused(f"Rows for {info.name} lack key column(s) {missing}")
    return columns, ignored


def check_append(info: TableInfo) -> ColumnInfo:
    """Return the generated key column ``append`` leaves to the database.

    Raises AppendNotSupported unless the primary key is one column with a
    default, identity or sequence.
    """
    if len(info.primary_key) != 1:
        raise AppendNotSupported(
            f"append needs a single-column generated primary key; {info.name} has"
            f" {'none' if not info.primary_key else 'key ' + str(info.primary_key)}"
        )
    col = info.pk_columns[0]
    if col.identity is None and col.default is None:
        raise AppendNotSupported(
            f"append needs a primary key the database generates; {info.name}.{col.name}"
            " has no default, identity or sequence (use skip, overwrite or merge)"
        )
    return col
