"""The murmur2 oracle of the Kafka transforms test matches Kafka's own test vectors
(``UtilsTest.testMurmur2``)."""

from __future__ import annotations

import pytest

from tests.unit.murmur2 import java_partition, murmur2, signed


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        (b"21", -973932308),
        (b"foobar", -790332482),
        (b"a-little-bit-long-string", -985981536),
        (b"a-little-bit-longer-string", -1486304829),
        (b"lkjh234lh9fiuh90y23oiuhsafujhadof229phr9h19h89h8", -58897971),
        (bytes([ord("a"), ord("b"), ord("c")]), 479470107),
    ],
)
def test_murmur2_matches_kafka(data: bytes, expected: int) -> None:
    assert signed(murmur2(data)) == expected


def test_partition_is_positive_modulo() -> None:
    assert all(0 <= java_partition(str(i).encode(), 7) < 7 for i in range(100))
