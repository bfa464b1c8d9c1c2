"""Kafka's Java partitioner, ported: the values Kafka's own tests pin."""

from __future__ import annotations

import pytest

from walrelay.worker.partitioner import murmur2, partition_for

# org.apache.kafka.common.utils.UtilsTest.testMurmur2 (and librdkafka's rdmurmur2.c).
JAVA_MURMUR2 = {
    b"21": -973932308,
    b"foobar": -790332482,
    b"a-little-bit-long-string": -985981536,
    b"a-little-bit-longer-string": -1486304829,
    b"lkjh234lh9fiuh90y23oiuhsafujhadof229phr9h19h89h8": -58897971,
    b"abc": 479470107,
    b"1": -1993445489,
    b"12": 126087238,
    b"123": -267702483,
    b"1234": -1614185708,
    b"12345": -1188365604,
}


@pytest.mark.parametrize(("key", "expected"), JAVA_MURMUR2.items())
def test_murmur2_matches_kafka_utils(key: bytes, expected: int) -> None:
    assert murmur2(key) == expected


def test_partition_is_the_positive_hash_modulo_the_partitions() -> None:
    # toPositive(-973932308) = 1173551340; % 12 = 0
    assert partition_for(b"21", 12) == (-973932308 & 0x7FFFFFFF) % 12
    assert partition_for(b'{"id":7}', 1) == 0
    spread = {partition_for(f'{{"id":{i}}}'.encode(), 12) for i in range(200)}
    assert spread == set(range(12))


def test_a_topic_has_partitions() -> None:
    with pytest.raises(ValueError, match="at least one partition"):
        partition_for(b"k", 0)
