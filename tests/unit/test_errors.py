"""Error kinds are a closed set, and the web front answers every one of them."""

from __future__ import annotations

import falcon
import pytest

from api.errors import STATUS_BY_KIND
from shared.errors import ErrorKind, SyncError


@pytest.mark.parametrize("kind", list(ErrorKind))
def test_every_kind_has_a_status(kind: ErrorKind) -> None:
    assert STATUS_BY_KIND[kind].split()[0].isdigit()


def test_the_mapping_names_only_kinds() -> None:
    assert set(STATUS_BY_KIND) == set(ErrorKind)


def test_a_kind_outside_the_set_fails_where_it_is_raised() -> None:
    with pytest.raises(ValueError):
        SyncError("not_fonud", "Connection not found")


def test_the_string_of_a_kind_still_names_it() -> None:
    error = SyncError("conflict", "Table has no primary key")
    assert error.kind is ErrorKind.CONFLICT
    assert STATUS_BY_KIND[error.kind] == falcon.HTTP_409
