"""The thresholds table of ARCHITECTURE section 3, and the doctor's judgement on hand-made facts.

The doctor is split into gather (SQL) and diagnose (pure); the states that a
test cluster cannot reach quickly (a slot at 6 GB, a PostgreSQL 17
``inactive_since``, spills, a standby) are judged here from :class:`Facts`.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import orjson

from walrelay.monitor import DEFAULT_THRESHOLDS, Facts, Finding, Report, Severity, diagnose
from walrelay.monitor.doctor import (
    DiskFacts,
    PreparedFacts,
    PublicationFacts,
    Setting,
    SlotFacts,
    SpillFacts,
    TableFacts,
    TransactionFacts,
)
from walrelay.monitor.thresholds import GiB, MiB, Thresholds

T = DEFAULT_THRESHOLDS


def test_severity_order_and_alerting() -> None:
    ranked = sorted(Severity, key=lambda s: s.rank)
    assert [s.value for s in ranked] == ["ok", "info", "warn", "page", "error"]
    assert [s for s in Severity if s.alerting] == [Severity.PAGE, Severity.ERROR]


def test_defaults_match_the_architecture_table() -> None:
    assert T.retained_wal_warn_bytes == 1 * GiB
    assert T.retained_wal_page_bytes == 5 * GiB
    assert (T.slot_inactive_warn_seconds, T.slot_inactive_page_seconds) == (60, 300)
    assert (T.wal_disk_warn_percent, T.wal_disk_page_percent) == (60, 80)
    assert (T.delivery_lag_warn_seconds, T.delivery_lag_page_seconds) == (10, 60)
    assert T.oldest_transaction_warn_seconds == 300
    assert T.oldest_transaction_page_seconds is None


def test_retained_wal_pages_at_5gb_or_half_the_keep_size() -> None:
    assert T.retained_wal(GiB - 1, None) is Severity.OK
    assert T.retained_wal(GiB, None) is Severity.WARN
    assert T.retained_wal(5 * GiB, None) is Severity.PAGE
    # with max_slot_wal_keep_size = 4 GB, page at 2 GB
    assert T.retained_wal(2 * GiB - 1, 4 * GiB) is Severity.WARN
    assert T.retained_wal(2 * GiB, 4 * GiB) is Severity.PAGE
    # a small keep size pulls the warn level down with it
    assert T.retained_wal(600 * MiB, GiB) is Severity.PAGE
    assert T.retained_wal(100 * MiB, GiB) is Severity.OK


def test_other_signals() -> None:
    assert T.slot_inactive(59) is Severity.OK
    assert T.slot_inactive(60) is Severity.WARN
    assert T.slot_inactive(300) is Severity.PAGE
    assert T.wal_disk(59.9) is Severity.OK
    assert T.wal_disk(60) is Severity.WARN
    assert T.wal_disk(80) is Severity.PAGE
    assert T.delivery_lag(10) is Severity.WARN
    assert T.delivery_lag(61) is Severity.PAGE
    assert T.open_transaction(299) is Severity.OK
    assert T.open_transaction(300) is Severity.WARN
    assert T.open_transaction(10**6) is Severity.WARN  # no page level for transactions
    assert T.open_transaction(1, warn_seconds=0) is Severity.WARN
    assert T.usage(15, 20) is Severity.OK
    assert T.usage(16, 20) is Severity.WARN
    custom = Thresholds(wal_disk_warn_percent=90, wal_disk_page_percent=95)
    assert custom.wal_disk(85) is Severity.OK


# --------------------------------------------------------------------------- diagnose


def healthy() -> Facts:
    return Facts(
        settings={
            "wal_level": Setting("logical"),
            "max_slot_wal_keep_size": Setting("10240", "MB"),
            "max_replication_slots": Setting("10"),
            "max_wal_senders": Setting("10"),
            "logical_decoding_work_mem": Setting("65536", "kB"),
            "idle_in_transaction_session_timeout": Setting("0", "ms"),
        },
        slots=[slot()],
        wal_senders_used=1,
        publications=[PublicationFacts("walrelay_pub", all_tables=False)],
        tables=[TableFacts("public", "orders", ("walrelay_pub",), "r", "d", False, True)],
        disk=DiskFacts("/pg/pg_wal", 100 * GiB, 20 * GiB, 80 * GiB),
    )


def slot(**kw: Any) -> SlotFacts:
    base = SlotFacts(
        name="walrelay",
        slot_type="logical",
        plugin="pgoutput",
        database="postgres",
        active=True,
        active_pid=42,
        temporary=False,
        wal_status="reserved",
        restart_lsn="0/1000000",
        confirmed_flush_lsn="0/1000100",
        retained_bytes=10 * MiB,
        safe_wal_size=10 * GiB,
    )
    return replace(base, **kw)


def by_code(findings: list[Finding]) -> dict[str, list[Severity]]:
    out: dict[str, list[Severity]] = {}
    for f in findings:
        out.setdefault(f.code, []).append(f.severity)
    return out


def test_healthy_facts_only_ok_and_info() -> None:
    findings = diagnose(healthy(), slot="walrelay")
    assert {f.severity for f in findings} <= {Severity.OK, Severity.INFO}
    assert "slot_ready" in by_code(findings)
    report = Report("host=x", "15.0", "postgres", findings)
    assert report.exit_code == 0
    assert orjson.loads(report.to_json())["summary"]["exit_code"] == 0


def test_slot_states() -> None:
    facts = healthy()
    facts.slots = [
        slot(name="big", retained_bytes=6 * GiB),
        slot(name="gone", active=False, wal_status="lost", retained_bytes=None),
        slot(name="edge", wal_status="unreserved", safe_wal_size=-5),
        slot(name="idle17", active=False, inactive_seconds=400.0),
        slot(name="idle15", active=False),
        slot(name="other", database="app"),
    ]
    codes = by_code(diagnose(facts))
    assert codes["slot_retained_wal"] == [Severity.PAGE]  # 6 GB > 50% of 10 GB keep size
    assert codes["slot_lost"] == [Severity.PAGE]
    assert codes["slot_wal_unreserved"] == [Severity.WARN]
    # PostgreSQL 17 says since when: 400 s inactive pages; 15 can only say "inactive now"
    assert sorted(codes["slot_inactive"], key=lambda s: s.rank) == [Severity.WARN, Severity.PAGE]
    assert codes["multiple_logical_slots"] == [Severity.WARN]
    assert codes["slots_healthy"] == [Severity.OK]


def test_keep_size_and_disk() -> None:
    facts = healthy()
    facts.settings["max_slot_wal_keep_size"] = Setting("-1", "MB")
    f = [x for x in diagnose(facts) if x.code == "max_slot_wal_keep_size_unset"]
    assert [x.severity for x in f] == [Severity.PAGE]
    assert f[0].fix is not None and "max_slot_wal_keep_size = '8GB'" in f[0].fix  # 10% of 80

    facts.slots = []
    assert by_code(diagnose(facts))["max_slot_wal_keep_size_unset"] == [Severity.WARN]

    facts = healthy()
    facts.disk = DiskFacts("/pg/pg_wal", 100 * GiB, 95 * GiB, 5 * GiB)
    codes = by_code(diagnose(facts))
    assert codes["max_slot_wal_keep_size_above_free_disk"] == [Severity.PAGE]
    assert codes["wal_disk_usage"] == [Severity.PAGE]

    facts.disk = None
    facts.disk_unknown_reason = "not on the database host"
    findings = diagnose(facts)
    unknown = [x for x in findings if x.code == "free_disk_unknown"]
    assert [x.severity for x in unknown] == [Severity.INFO]
    assert "not on the database host" in unknown[0].message
    assert "wal_disk_usage" not in by_code(findings)


def test_wal_level_headroom_standby() -> None:
    facts = healthy()
    facts.settings["wal_level"] = Setting("replica", pending_restart=True)
    facts.settings["max_wal_senders"] = Setting("0")
    facts.settings["max_replication_slots"] = Setting("1")
    facts.in_recovery = True
    codes = by_code(diagnose(facts, slot="missing"))
    assert codes["wal_level_not_logical"] == [Severity.ERROR]
    assert codes["wal_senders_disabled"] == [Severity.ERROR]
    assert codes["replication_slots_low"] == [Severity.WARN]
    assert codes["standby_no_logical_decoding"] == [Severity.ERROR]
    assert codes["slot_missing"] == [Severity.ERROR]  # no free slot to create it in


def test_named_slot_problems() -> None:
    facts = healthy()
    facts.slots = [
        slot(name="phys", slot_type="physical", plugin=None, database=None),
        slot(name="td", plugin="test_decoding"),
        slot(name="elsewhere", database="app"),
    ]
    assert by_code(diagnose(facts, slot="phys"))["slot_not_logical"] == [Severity.ERROR]
    assert by_code(diagnose(facts, slot="td"))["slot_wrong_plugin"] == [Severity.ERROR]
    assert by_code(diagnose(facts, slot="elsewhere"))["slot_other_database"] == [Severity.ERROR]
    assert by_code(diagnose(facts, slot="new"))["slot_missing"] == [Severity.INFO]


def test_tables_and_publications() -> None:
    facts = healthy()
    facts.publications = [
        PublicationFacts("all", all_tables=True),
        PublicationFacts("schemas", all_tables=False, schemas=("app",)),
        PublicationFacts("inserts", all_tables=False, update=False, delete=False),
    ]
    facts.tables = [
        TableFacts("public", "nothing", ("all",), "r", "n", False, True),
        TableFacts("public", "lost_index", ("all",), "r", "i", False, False),
        TableFacts("public", "log", ("inserts",), "r", "d", False, False),
        TableFacts("app", "Uq", ("schemas",), "r", "d", False, False, None, "Uq_key"),
        TableFacts("app", "outbox", ("schemas",), "p", "d", False, True),
        TableFacts("app", "outbox_2024", ("schemas",), "r", "d", True, True),
        TableFacts("app", "event_outbox", ("schemas",), "r", "f", False, False),
    ]
    findings = diagnose(facts)
    codes = by_code(findings)
    assert codes["publication_all_tables"] == [Severity.WARN]
    assert codes["publication_tables_in_schema"] == [Severity.WARN]
    assert codes["replica_identity_nothing"] == [Severity.ERROR, Severity.ERROR]
    # the insert-only publication cannot break UPDATEs: a warning, not an error
    assert sorted(codes["table_without_key"], key=lambda s: s.rank) == [
        Severity.WARN,
        Severity.ERROR,
    ]
    assert codes["outbox_not_partitioned"] == [Severity.WARN]  # event_outbox only
    assert codes["replica_identity_full"] == [Severity.WARN]
    fixes = {f.object: f.fix for f in findings if f.code == "table_without_key"}
    assert fixes['table app."Uq"'] == 'ALTER TABLE app."Uq" REPLICA IDENTITY USING INDEX "Uq_key";'
    nothing = next(f for f in findings if f.object == "table public.nothing")
    assert nothing.fix == "ALTER TABLE public.nothing REPLICA IDENTITY DEFAULT;"


def test_spills_transactions_and_prepared() -> None:
    facts = healthy()
    facts.spills = [SpillFacts("walrelay", spill_txns=3, spill_count=9, spill_bytes=3 * 300 * MiB)]
    facts.transactions = [
        TransactionFacts(7, "app", "postgres", "psql", None, "idle in transaction", 400),
        TransactionFacts(8, "app", "postgres", "etl", None, "active", 301),
        TransactionFacts(9, "app", "postgres", "web", None, "active", 5),
    ]
    facts.prepared = [PreparedFacts("tx'1", "app", "postgres", 1000)]
    facts.can_read_all_stats = False
    findings = diagnose(facts)
    codes = by_code(findings)
    spill = next(f for f in findings if f.code == "logical_decoding_spills")
    assert spill.severity is Severity.WARN
    assert spill.fix is not None and "logical_decoding_work_mem = '512MB'" in spill.fix
    assert codes["idle_in_transaction"] == [Severity.WARN]
    assert codes["long_transaction"] == [Severity.WARN]
    assert codes["old_prepared_transaction"] == [Severity.WARN]
    assert codes["activity_partly_hidden"] == [Severity.INFO]
    assert "no_long_transactions" not in codes
    prepared = next(f for f in findings if f.code == "old_prepared_transaction")
    assert prepared.fix is not None and "COMMIT PREPARED 'tx''1'" in prepared.fix
    idle = next(f for f in findings if f.code == "idle_in_transaction")
    assert idle.fix is not None and idle.fix.startswith("SELECT pg_terminate_backend(7);")


def test_report_text_worst_first_and_exit_code() -> None:
    facts = healthy()
    facts.settings["max_slot_wal_keep_size"] = Setting("-1", "MB")
    report = Report("host=x", "15.0", "postgres", diagnose(facts))
    assert report.exit_code == 3  # the worst is a page
    lines = report.to_text().splitlines()
    assert lines[1].startswith("PAGE   max_slot_wal_keep_size_unset")
    assert "| fix: ALTER SYSTEM SET max_slot_wal_keep_size" in lines[1]
    assert lines[-1].startswith("summary: 0 error, 1 page, 0 warn")
    assert lines[-1].endswith("-> exit 3")


def test_fix_texts_quote_awkward_names() -> None:
    facts = healthy()
    facts.slots = [slot(name="a\\b", active=False, wal_status="lost", retained_bytes=None)]
    facts.publications = [PublicationFacts("Select", all_tables=True)]
    facts.can_read_all_stats = False
    facts.user = "App User"
    findings = diagnose(facts)
    lost = next(f for f in findings if f.code == "slot_lost")
    assert lost.fix is not None and "pg_drop_replication_slot(E'a\\\\b')" in lost.fix
    pub = next(f for f in findings if f.code == "publication_all_tables")
    assert pub.fix is not None and 'DROP PUBLICATION "Select"' in pub.fix
    hidden = next(f for f in findings if f.code == "activity_partly_hidden")
    assert hidden.fix == 'GRANT pg_monitor TO "App User";'
