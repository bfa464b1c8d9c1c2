"""SourceWatch.judge: one look at the source in, what changed out (walrelay.engine.watch)."""

from __future__ import annotations

from walrelay.engine.watch import SourceWatch
from walrelay.errors import PublicationLost, SlotLost, WalrelayError
from walrelay.monitor.thresholds import Severity
from walrelay.source.slot import SourceState

TABLES = {10: "public.a", 20: "public.b"}


def watch(alerts: list[tuple[str, str, Severity]] | None = None) -> SourceWatch:
    def alert(rule: str, obj: str, severity: Severity, message: str, fix: str | None) -> None:
        if alerts is not None:
            alerts.append((rule, obj, severity))

    def fatal(error: WalrelayError) -> None:
        raise AssertionError(error)

    return SourceWatch(
        dsn="",
        slot="walrelay",
        publication="pub",
        tables=lambda: dict(TABLES),
        destinations_of=lambda table: ["d1"],
        alert=alert,
        on_fatal=fatal,
        interval=1.0,
    )


def state(**kw: object) -> SourceState:
    base: dict[str, object] = {
        "slot_exists": True,
        "wal_status": "reserved",
        "publication_exists": True,
        "names": dict(TABLES),
        "published": frozenset(TABLES),
    }
    base.update(kw)
    return SourceState(**base)  # type: ignore[arg-type]


def test_all_well_says_nothing() -> None:
    assert watch().judge(state()) == (None, [])


def test_slot_dropped_invalidated_publication_dropped_are_fatal() -> None:
    error, _ = watch().judge(state(slot_exists=False, wal_status=None))
    assert isinstance(error, SlotLost) and "was dropped" in error.message
    error, _ = watch().judge(state(wal_status="lost"))
    assert isinstance(error, SlotLost) and "invalidated" in error.message
    assert error.fix is not None and "pg_drop_replication_slot('walrelay')" in error.fix
    error, _ = watch().judge(state(publication_exists=False))
    assert isinstance(error, PublicationLost) and error.exit_code == 3
    assert error.fix is not None and "CREATE PUBLICATION pub FOR TABLE public.a, public.b" in (
        error.fix
    )


def test_a_table_event_is_reported_once_and_a_rename_is_none() -> None:
    w = watch()
    renamed = {10: "public.a2", 20: "public.b"}
    assert w.judge(state(names=renamed)) == (None, [])
    _, events = w.judge(state(names={20: "public.b"}, published=frozenset({20})))
    assert [(e.table, e.kind) for e in events] == [("public.a", "dropped")]
    _, events = w.judge(state(names={20: "public.b"}, published=frozenset({20})))
    assert events == []  # once
    _, events = w.judge(state(names={20: "public.b"}, published=frozenset()))
    assert [(e.table, e.kind) for e in events] == [("public.b", "unpublished")]
    _, events = w.judge(state(names={20: "public.b"}, published=frozenset({20})))
    assert [(e.table, e.kind) for e in events] == [("public.b", "republished")]


def test_report_pages_and_resolves() -> None:
    alerts: list[tuple[str, str, Severity]] = []
    w = watch(alerts)
    _, events = w.judge(state(published=frozenset({10})))
    for e in events:
        w.report(e, "public.b")
    _, events = w.judge(state())
    for e in events:
        w.report(e, "public.b")
    assert alerts == [
        ("table_unpublished", "table public.b", Severity.PAGE),
        ("table_unpublished", "table public.b", Severity.OK),
    ]
