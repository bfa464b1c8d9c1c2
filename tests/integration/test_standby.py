"""Hot standby (walrelay.engine.standby): one streams, the other waits and takes over.

SIGKILL of the active one under load, timed and judged by the checker, is
``bench/chaos.py --all --short`` (test_chaos_all.py): the standby takes over
at every kill. Here: a network cut, and an active one refusing to start
while another holds the slot.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import psycopg
import pytest

from tests.conftest import StartProxy
from tests.integration.support import (
    RowWriter,
    dsn_port,
    dsn_with_port,
    execute,
    make_config,
    read_jsonl,
    running_engine,
    wait_for,
)
from walrelay.engine import Engine
from walrelay.errors import SlotBusy
from walrelay.testing.checker import Change, Delivery, check


def file_dest(path: Path) -> dict[str, object]:
    return {"name": "file", "sink": {"type": "file", "path": str(path)}, "snapshot": "never"}


async def slot_pid(dsn: str) -> int | None:
    async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as conn:
        cur = await conn.execute(
            "select active_pid from pg_replication_slots where slot_name = 'walrelay'"
        )
        row = await cur.fetchone()
    return None if row is None else row[0]


async def test_standby_takes_over_a_cut_off_active(
    db: str, tmp_path: Path, tcp_proxy: StartProxy
) -> None:
    """The active walrelay reaches the source and the state database only
    through a proxy; the proxy black-holes. The active one fences itself, the
    lock's session ends (here when the fenced one closes it; on a real cut
    when its lease runs out), the standby ends the stale walsender and streams:
    within 10 s, nothing lost, and the active one does not stream again."""
    execute(db, "create table t (id int primary key)")
    proxy = await tcp_proxy(dsn_port(db))
    out_a, out_b = tmp_path / "a.jsonl", tmp_path / "b.jsonl"
    active = make_config(dsn_with_port(db, proxy.address[1]), ["public.t"], [file_dest(out_a)])
    standby = make_config(db, ["public.t"], [file_dest(out_b)])
    standby = standby.model_copy(update={"ha": "standby"})
    writer = RowWriter(db)
    async with running_engine(active) as engine_a:
        engine_b = Engine(standby)
        task_b = asyncio.create_task(engine_b.run())
        try:
            writer.start()
            await wait_for(lambda: len(read_jsonl(out_a)) >= 200, what="the active one streaming")
            assert not engine_b.started.is_set()
            proxy.blackhole()
            cut_at = time.monotonic()
            await wait_for(lambda: engine_b.streaming, within=20, what="the standby streaming")
            takeover = time.monotonic() - cut_at
            assert takeover < 10, takeover
            assert not engine_a.streaming
            await wait_for(lambda: len(read_jsonl(out_b)) >= 200, what="the standby delivering")
            writer.stop.set()
            await asyncio.to_thread(writer.join, 10)
            assert writer.error is None, writer.error
            committed = set(writer.committed)
            await wait_for(
                lambda: (
                    committed
                    <= {e["record"]["id"] for e in read_jsonl(out_b)}
                    | {e["record"]["id"] for e in read_jsonl(out_a)}
                ),
                what="every committed row in one of the files",
            )
            proxy.restore()
            b_walsender = await slot_pid(db)
        finally:
            engine_b.request_stop()
            await asyncio.wait_for(task_b, 60)
    seen = read_jsonl(out_a) + read_jsonl(out_b)
    expected = [Change(uid=n, key=n, order=0) for n in writer.committed]
    observed = [
        Delivery(uid=e["record"]["id"], key=e["record"]["id"], order=0, id=e["id"]) for e in seen
    ]
    report = check(expected, observed)
    # A replay after a takeover is a restart's: only what the active one
    # delivered after its last confirmed LSN, under the same ids.
    assert report.ok(allow_duplicates=True), report.summary()
    assert not report.id_changed
    assert b_walsender is not None
    print(f"standby took over {takeover:.1f}s after the cut; {report.summary()}")


async def test_active_refuses_while_another_holds_the_slot(db: str, tmp_path: Path) -> None:
    execute(db, "create table t (id int primary key)")
    config = make_config(db, ["public.t"], [file_dest(tmp_path / "a.jsonl")])
    async with running_engine(config):
        with pytest.raises(SlotBusy) as info:
            await Engine(config).run()
    assert "already streaming to PID" in info.value.message
    assert "another walrelay holds its HA lock" in info.value.message
    assert info.value.fix is not None and "--standby" in info.value.fix
