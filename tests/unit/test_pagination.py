"""The list cursor signer (service/api/pagination.py), without I/O: cursors round-trip
exactly, and anything the server did not issue for this filter is refused as BadCursor."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given
from hypothesis import strategies as st

from service.api.pagination import BadCursor, CursorSigner, Position
from tests.helpers import PROPERTY

KEY = "cursor-test-key-" + "c" * 32
SIGNER = CursorSigner(KEY)
POSITION = Position(datetime(2024, 1, 2, 3, 4, 5, 678901, tzinfo=UTC), "FST-12345678-Cur")


moments = st.datetimes(
    min_value=datetime(1970, 1, 1), max_value=datetime(2200, 1, 1), timezones=st.just(UTC)
)
statuses = st.sampled_from([None, "ACTIVE", "INACTIVE", "SUSPENDED"])


@given(moment=moments, customer_id=st.text(max_size=90), status=statuses)
@PROPERTY
def test_a_cursor_decodes_to_its_exact_position(moment, customer_id, status):
    cursor = SIGNER.encode(Position(moment, customer_id), status)
    assert cursor.isascii() and "/" not in cursor and "+" not in cursor  # URL-safe
    decoded = SIGNER.decode(cursor, status)
    assert decoded == Position(moment, customer_id)  # to the microsecond


def test_another_filter_is_refused_with_its_own_message():
    cursor = SIGNER.encode(POSITION, "ACTIVE")
    for other in (None, "INACTIVE"):
        with pytest.raises(BadCursor, match="another status filter"):
            SIGNER.decode(cursor, other)


def test_another_servers_key_is_refused():
    cursor = CursorSigner("another-key-" + "o" * 32).encode(POSITION, None)
    with pytest.raises(BadCursor, match="Not a cursor this service issued"):
        SIGNER.decode(cursor, None)


def test_every_changed_character_is_refused():
    cursor = SIGNER.encode(POSITION, None)
    for i, c in enumerate(cursor):
        for replacement in {"A", "_", "."} - {c}:
            changed = cursor[:i] + replacement + cursor[i + 1 :]
            with pytest.raises(BadCursor):
                SIGNER.decode(changed, None)


def test_a_later_position_cannot_be_made_from_an_issued_cursor():
    later = Position(POSITION.created_at + timedelta(days=1), POSITION.customer_id)
    payload_of_later = CursorSigner("guess").encode(later, None).partition(".")[0]
    mac = SIGNER.encode(POSITION, None).partition(".")[2]
    with pytest.raises(BadCursor):
        SIGNER.decode(f"{payload_of_later}.{mac}", None)


@given(cursor=st.text(max_size=200), status=statuses)
@PROPERTY
def test_any_text_is_a_position_or_bad_cursor_never_another_error(cursor, status):
    try:
        SIGNER.decode(cursor, status)
    except BadCursor:
        return
    pytest.fail(f"{cursor!r} decoded")  # nothing but an issued cursor may decode


def test_the_same_key_makes_the_same_cursor_across_instances():
    """Cursors survive a restart and work across workers: the key alone decides."""
    assert CursorSigner(KEY).encode(POSITION, None) == SIGNER.encode(POSITION, None)
    assert CursorSigner(KEY).decode(SIGNER.encode(POSITION, "ACTIVE"), "ACTIVE") == POSITION
