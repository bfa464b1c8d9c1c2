"""walrelay.engine.waiting_sink: a destination whose server is down at start."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

import pytest

from tests.factories import make_event
from tests.waiting import wait_for
from walrelay.config import Config, parse_config
from walrelay.engine.delivery import open_destinations
from walrelay.engine.waiting_sink import WaitingSink
from walrelay.errors import ConfigError, SinkUnavailable
from walrelay.model import Event, Lsn
from walrelay.pipeline.backoff import Backoff


class FlakySink:
    """Refuses to open ``down`` times (the server is not up yet), then works."""

    batch_size = 10
    ordered = False
    transactional = True

    def __init__(self, down: int, *, error: Exception | None = None) -> None:
        self.down = down
        self.error = error
        self.opens = 0
        self.delivered: list[Event] = []
        self.trimmed: list[Lsn] = []
        self.closed = False

    async def open(self) -> None:
        self.opens += 1
        if self.error is not None:
            raise self.error
        if self.opens <= self.down:
            raise SinkUnavailable("broker 127.0.0.1:1: refused\n\tis it running?")

    async def deliver(self, events: Sequence[Event]) -> None:
        assert self.opens > self.down, "delivered before open"
        self.delivered.extend(events)

    async def close(self) -> None:
        self.closed = True

    def trim_below(self, lsn: Lsn) -> None:
        self.trimmed.append(lsn)


FAST = Backoff(initial=0.01, multiplier=1.0, maximum=0.01)


async def test_opens_in_the_background_and_delivers_only_once_open() -> None:
    inner = FlakySink(down=1_000_000)
    sink = WaitingSink("d", inner, SinkUnavailable("refused\n\tagain"), FAST)
    sink.start()
    line = sink.not_ready
    assert line is not None and "\n" not in line
    assert line.startswith("destination d: not reachable yet (") and " -- fix: " in line
    with pytest.raises(SinkUnavailable, match="not reachable yet"):
        await sink.deliver([make_event(1)])
    sink.trim_below(5)  # not open: not forwarded
    assert inner.trimmed == []
    inner.down = inner.opens + 2  # the server comes up two attempts from now
    await wait_for(lambda: sink.not_ready is None, what="opened in the background")
    await sink.deliver([make_event(2)])
    assert [e.commit_lsn for e in inner.delivered] == [2]
    sink.trim_below(7)
    assert inner.trimmed == [7]
    await sink.close()
    assert inner.closed


async def test_close_while_waiting_does_not_close_an_unopened_sink() -> None:
    inner = FlakySink(down=1_000_000)
    sink = WaitingSink("d", inner, SinkUnavailable("refused"), FAST)
    sink.start()
    await wait_for(lambda: inner.opens >= 3, what="background attempts")
    await sink.close()
    attempts = inner.opens
    await asyncio.sleep(0.05)  # a window in which a leftover retry loop would try again
    assert inner.opens == attempts and not inner.closed


def config() -> Config:
    return parse_config(
        {
            "source": {"dsn": "host=127.0.0.1 dbname=x", "tables": ["public.t"]},
            "destinations": [
                {"name": "up", "sink": {"type": "stdout"}, "parking": {"enabled": False}},
                {"name": "down", "sink": {"type": "stdout"}, "parking": {"enabled": False}},
            ],
            "ledger": {"type": "none"},
        },
        "(test)",
    )


async def test_open_destinations_wraps_only_the_unreachable_one() -> None:
    sinks = {"up": FlakySink(down=0), "down": FlakySink(down=1_000_000)}
    dests = await open_destinations(config(), lambda d: sinks[d.name], lambda _: [])
    try:
        assert dests.by_name["up"].sink is sinks["up"]
        waiting = dests.by_name["down"].sink
        assert isinstance(waiting, WaitingSink) and waiting.inner is sinks["down"]
    finally:
        await dests.close()


async def test_a_config_error_at_open_still_stops_start_up() -> None:
    sinks = {
        "up": FlakySink(down=0),
        "down": FlakySink(down=0, error=ConfigError("stream is a hash", fix="...")),
    }
    with pytest.raises(ConfigError, match="stream is a hash"):
        await open_destinations(config(), lambda d: sinks[d.name], lambda _: [])
    assert sinks["up"].closed


async def test_a_config_error_found_once_the_server_answers_is_reported_and_retried() -> None:
    inner = FlakySink(down=1_000_000)
    sink = WaitingSink("d", inner, SinkUnavailable("refused"), FAST)
    inner.error = ConfigError("topic t does not exist and auto_create is off", fix="create t")
    sink.start()
    await wait_for(lambda: "auto_create" in (sink.not_ready or ""), what="the config problem")
    assert (sink.not_ready or "").startswith("destination d: cannot be opened (topic t")
    assert (sink.not_ready or "").endswith("-- fix: create t")
    with pytest.raises(SinkUnavailable, match="create t"):
        await sink.deliver([make_event(1)])
    inner.error, inner.down = None, 0  # the operator created the topic
    await wait_for(lambda: sink.not_ready is None, what="opened")
    await sink.deliver([make_event(2)])
    await sink.close()
