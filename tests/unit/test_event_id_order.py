"""Event ids sort as plain strings in commit order, also within a transaction."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from walrelay.model import SEQ_DIGITS, format_event_id, parse_event_id

_ids = st.tuples(st.integers(0, 2**64 - 1), st.integers(0, 10**SEQ_DIGITS - 1))


def test_within_a_transaction_9_sorts_before_10() -> None:
    assert format_event_id(0x16B3748, 9) < format_event_id(0x16B3748, 10)
    assert format_event_id(0x16B3748, 10) == "00000000016B3748/0000000010"


@given(st.lists(_ids, min_size=2, max_size=50))
def test_string_order_is_commit_order(pairs: list[tuple[int, int]]) -> None:
    assert sorted(pairs, key=lambda p: format_event_id(*p)) == sorted(pairs)


@given(_ids)
def test_ids_round_trip_and_old_unpadded_ids_still_parse(pair: tuple[int, int]) -> None:
    lsn, seq = pair
    assert parse_event_id(format_event_id(lsn, seq)) == pair
    assert parse_event_id(f"{lsn:016X}/{seq}") == pair  # written before the padding
