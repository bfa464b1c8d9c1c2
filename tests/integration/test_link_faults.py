"""Link faults through walrelay.testing.proxy.TcpProxy: walrelay recovers by itself.

Between walrelay and the source (delay, reset, black-hole longer than
``wal_sender_timeout``), the state database (where the HA lock lives), and a
sink (the PostgreSQL target), and a webhook's Redis ledger. A writer commits
all along; the history checker finds nothing lost, and on the transactional
sinks used here (file, PostgreSQL) no duplicate.
"""

from __future__ import annotations

import asyncio
import base64
from collections.abc import Awaitable, Callable
from pathlib import Path

import psycopg
import pytest
from pydantic import SecretStr

from tests.conftest import StartProxy
from tests.integration.support import (
    RowWriter,
    WebhookReceiver,
    dsn_port,
    dsn_with_port,
    execute,
    make_config,
    read_jsonl,
    running_engine,
    wait_for,
)
from walrelay.pipeline.ledger import LedgerHook
from walrelay.testing.checker import Change, Delivery, Report, check
from walrelay.testing.proxy import TcpProxy
from walrelay.testing.servers import RedisServer


def file_dest(path: Path) -> dict[str, object]:
    return {"name": "file", "sink": {"type": "file", "path": str(path)}, "snapshot": "never"}


def judge(committed: list[int], ids: list[tuple[int, str]]) -> Report:
    expected = [Change(uid=n, key=n, order=0) for n in committed]
    return check(expected, [Delivery(uid=n, key=n, order=0, id=i) for n, i in ids])


def file_ids(path: Path) -> list[tuple[int, str]]:
    return [(e["record"]["id"], e["id"]) for e in read_jsonl(path) if e["op"] == "insert"]


async def outage(proxy: TcpProxy, start: Callable[[], None], seconds: float) -> None:
    """Break the link with ``start`` for ``seconds`` (the outage's length), then restore it."""
    start()
    await asyncio.sleep(seconds)
    proxy.restore()


async def stream_through(writer: RowWriter, out: Path, fault: Awaitable[None]) -> None:
    """Rows flow, ``fault`` breaks the link and restores it, rows flow again by themselves."""
    before = len(writer.committed)
    await wait_for(lambda: len(file_ids(out)) >= before + 50, what="rows before the fault")
    await fault
    after = len(writer.committed)
    await wait_for(lambda: len(file_ids(out)) >= after + 50, within=60, what="rows after the fault")


async def test_source_link_delay_reset_and_blackhole(
    db: str, tmp_path: Path, tcp_proxy: StartProxy
) -> None:
    """The walsender's own timeout (3 s here) ends the black-holed session;
    walrelay reconnects (ending a walsender the server still holds for it)."""
    execute(
        db,
        "create table t (id int primary key)",
        f"alter database {psycopg.conninfo.conninfo_to_dict(db)['dbname']} "
        "set wal_sender_timeout = '3s'",
    )
    proxy = await tcp_proxy(dsn_port(db))
    out = tmp_path / "events.jsonl"
    config = make_config(dsn_with_port(db, proxy.address[1]), ["public.t"], [file_dest(out)])
    writer = RowWriter(db)
    async with running_engine(config):
        writer.start()
        await stream_through(writer, out, outage(proxy, lambda: proxy.delay(0.2), 2))
        connections = proxy.accepted
        await stream_through(writer, out, outage(proxy, proxy.cut, 1))
        # Longer than wal_sender_timeout.
        await stream_through(writer, out, outage(proxy, proxy.blackhole, 5))
        committed = await writer.finish()
        await wait_for(lambda: {n for n, _ in file_ids(out)} >= set(committed), what="every row")
        assert proxy.accepted > connections  # it did reconnect, by itself
    report = judge(committed, file_ids(out))
    assert report.ok(), report.summary()


async def test_state_database_link_cut(db: str, tmp_path: Path, tcp_proxy: StartProxy) -> None:
    """The HA lock's link black-holed: walrelay stops streaming (fenced), and
    streams again once the link is back, nothing lost, nothing twice."""
    execute(db, "create table t (id int primary key)")
    proxy = await tcp_proxy(dsn_port(db))
    out = tmp_path / "events.jsonl"
    config = make_config(db, ["public.t"], [file_dest(out)])
    config = config.model_copy(
        update={
            "state": config.state.model_copy(
                update={"dsn": SecretStr(dsn_with_port(db, proxy.address[1]))}
            )
        }
    )
    writer = RowWriter(db)
    async with running_engine(config):
        writer.start()
        # Longer than the HA lock's fence.
        await stream_through(writer, out, outage(proxy, proxy.blackhole, 5))
        committed = await writer.finish()
        await wait_for(lambda: {n for n, _ in file_ids(out)} >= set(committed), what="every row")
    report = judge(committed, file_ids(out))
    assert report.ok(), report.summary()


TARGET_DDL = """
create table t (id int primary key);
create table audit (n bigserial primary key, id int not null);
create function audit_fn() returns trigger language plpgsql as $$
begin insert into audit (id) values (new.id); return null; end $$;
create trigger audit after insert or update on t for each row execute function audit_fn();
"""


async def test_postgres_sink_link_blackhole_and_reset(db: str, tcp_proxy: StartProxy) -> None:
    execute(db, "create table t (id int primary key)")
    dbname = f"{psycopg.conninfo.conninfo_to_dict(db)['dbname']}_target"
    execute(db, f"create database {dbname}")
    target = psycopg.conninfo.make_conninfo(db, dbname=dbname)
    try:
        execute(target, TARGET_DDL)
        proxy = await tcp_proxy(dsn_port(target))
        dest = {
            "name": "pg",
            "snapshot": "never",
            "retry": {"initial": 0.1, "max": 1.0},
            "sink": {"type": "postgres", "dsn": dsn_with_port(target, proxy.address[1])},
        }
        config = make_config(db, ["public.t"], [dest])
        writer = RowWriter(db)

        def applied() -> list[tuple[int, str]]:
            with psycopg.connect(target) as conn:
                return [(r[0], str(r[0])) for r in conn.execute("select id from audit order by n")]

        async with running_engine(config):
            writer.start()
            for fault in (proxy.blackhole, proxy.cut):
                before = len(writer.committed)

                def caught_up(before: int = before) -> bool:
                    return len(applied()) >= before

                await wait_for(caught_up, what="rows applied")
                fault()
                await asyncio.sleep(3)  # the outage's length: the sink fails and retries
                proxy.restore()
            committed = await writer.finish()
            await wait_for(
                lambda: {n for n, _ in applied()} >= set(committed), within=60, what="every row"
            )
        report = judge(committed, applied())
        assert report.ok(), report.summary()
    finally:
        execute(db, f"drop database if exists {dbname} with (force)")


async def test_redis_ledger_link_blackhole_and_reset(
    db: str, tcp_proxy: StartProxy, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The webhook's Redis ledger black-holed for longer than the ledger client's
    timeout, then reset: delivery pauses (nothing sent unchecked) and resumes
    by itself; nothing lost, and a repeat only ever with its first id."""
    secret = "whsec_" + base64.b64encode(b"0123456789abcdef0123456789abcdef").decode()
    monkeypatch.setenv("WALRELAY_TEST_SECRET", secret)
    execute(db, "create table t (id int primary key)")
    with RedisServer() as server:
        proxy = await tcp_proxy(server.port)
        async with WebhookReceiver(secret) as hook:
            dest = {
                "name": "hook",
                "snapshot": "never",
                "sink": {"type": "webhook", "url": hook.url, "secret_env": "WALRELAY_TEST_SECRET"},
                "ledger": {
                    "type": "redis",
                    "url": f"redis://127.0.0.1:{proxy.address[1]}/0",
                    "timeout": 1,
                },
            }
            config = make_config(db, ["public.t"], [dest])
            writer = RowWriter(db)
            async with running_engine(config) as engine:
                writer.start()
                for fault, seconds in ((proxy.blackhole, 4.0), (proxy.cut, 1.0)):
                    before = len(writer.committed)

                    def caught_up(before: int = before) -> bool:
                        return len(hook.ids) >= before

                    await wait_for(caught_up, what="rows before the fault")
                    await outage(proxy, fault, seconds)  # longer than the timeout
                after = len(writer.committed)
                await wait_for(lambda: len(hook.ids) >= after + 50, within=60, what="rows after")
                committed = await writer.finish()
                await wait_for(
                    lambda: {e["record"]["id"] for e in hook.received} >= set(committed),
                    within=60,
                    what="every row",
                )
                ledger = next(
                    h for h in engine.destinations["hook"].hooks if isinstance(h, LedgerHook)
                )
                assert ledger.check_retries + ledger.record_retries > 0  # the fault was met
                assert ledger.ledger_down_since is None  # and is over
                assert ledger.sent >= len(committed)  # every send went through the ledger
    report = judge(committed, [(e["record"]["id"], e["id"]) for e in hook.received])
    assert report.ok(allow_duplicates=True), report.summary()
