"""The monitor's warn/page rules: a snapshot (plus a little memory) -> conditions.

Pure: no I/O, and the clock is a parameter. What needs memory across checks
lives in :class:`RuleState`:

* how long a slot has been inactive. PostgreSQL 15 has no
  ``inactive_since`` (17 has), so the monitor counts from the first check
  that saw the slot inactive: a slot already inactive when walrelay starts
  is measured from then, never longer than it really was;
* the reorder-buffer spill counters of the previous checks, to tell a
  sustained spill from a one-off.

Rules (ARCHITECTURE section 3; the numbers are :class:`Thresholds`):

========================  =====================================================
``slot_inactive``         a slot with no consumer, for warn/page durations
``slot_retained_wal``     WAL held back by a slot's ``restart_lsn``
``slot_wal_status``       ``unreserved`` (about to be lost) or ``lost``: page
``slot_missing``          walrelay's own slot is gone: page
``slot_spill``            spill counters growing at N checks in a row: warn;
                          the bytes spilled meanwhile near the free disk: page
``pg_wal_disk``           the filesystem holding pg_wal (only on its host)
``oldest_transaction``    a transaction open too long
``delivery_lag``          commit -> delivered, per destination
``replication_paused``    parking is at its cap: page; delivery blocked
                          (the connection released, walrelay.engine.session): warn
========================  =====================================================

Other slots on the cluster (not walrelay's) get the slot rules too: the
engine is the one process that is always looking.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from walrelay.monitor.alerts import Condition
from walrelay.monitor.probe import SlotState, Snapshot
from walrelay.monitor.thresholds import Severity, Thresholds
from walrelay.sqltext import literal
from walrelay.units import format_bytes, format_duration

__all__ = ["DB_RULES", "ENGINE_RULES", "RuleState", "evaluate_engine", "evaluate_snapshot"]

DB_RULES = frozenset(
    {
        "slot_inactive",
        "slot_retained_wal",
        "slot_wal_status",
        "slot_missing",
        "slot_spill",
        "pg_wal_disk",
        "oldest_transaction",
    }
)
ENGINE_RULES = frozenset({"delivery_lag", "replication_paused"})


@dataclass
class _Spill:
    last_bytes: int
    streak: int = 0  # consecutive checks that saw the counters grow
    streak_bytes: int = 0  # bytes spilled during the streak


@dataclass
class RuleState:
    """What the rules remember between checks (monotonic seconds)."""

    inactive_since: dict[str, float] = field(default_factory=dict)
    spill: dict[str, _Spill] = field(default_factory=dict)

    def inactive_seconds(self, slot: SlotState, now: float) -> float | None:
        """How long ``slot`` has been inactive (None while active); updates memory."""
        if slot.active:
            self.inactive_since.pop(slot.name, None)
            return None
        since = self.inactive_since.setdefault(slot.name, now)
        if slot.server_inactive_seconds is not None:
            return max(slot.server_inactive_seconds, 0.0)
        return now - since

    def forget_missing(self, names: set[str]) -> None:
        for d in (self.inactive_since, self.spill):
            for name in [n for n in d if n not in names]:
                del d[name]


def evaluate_snapshot(
    snapshot: Snapshot,
    *,
    own_slot: str,
    thresholds: Thresholds,
    state: RuleState,
    now: float,
    watch_other_slots: bool = True,
    spill_sustained_checks: int = 3,
    own_detail: str = "",
) -> list[Condition]:
    """Firing conditions of the database rules (:data:`DB_RULES`).

    ``now`` is monotonic seconds; ``own_detail`` says why walrelay itself is
    not streaming, when it is not (added to the owned slot's inactive alert).
    """
    t = thresholds
    out: list[Condition] = []
    keep = snapshot.server.max_slot_wal_keep_size
    disk = snapshot.server.disk
    names = {s.name for s in snapshot.slots}
    state.forget_missing(names)
    if own_slot not in names:
        out.append(
            Condition(
                "slot_missing",
                f"slot {own_slot}",
                Severity.PAGE,
                f"walrelay's replication slot {own_slot} does not exist on the source",
                "changes made while it was missing were not captured: start walrelay again "
                "to create the slot, then backfill the tables",
            )
        )
    for slot in snapshot.slots:
        owned = slot.name == own_slot
        if not owned and not watch_other_slots:
            continue
        if slot.temporary:
            continue  # dies with its session; nothing to page about
        obj = f"slot {slot.name}"
        whose = "walrelay's slot" if owned else f"slot (not walrelay's, database {slot.database})"
        drop = f"SELECT pg_drop_replication_slot({literal(slot.name)});"

        # -- inactive
        inactive = state.inactive_seconds(slot, now)
        if inactive is not None:
            sev = t.slot_inactive(inactive)
            if sev is not Severity.OK:
                if owned:
                    msg = (
                        f"{whose} {slot.name} has had no consumer for {format_duration(inactive)}: "
                        f"walrelay is not streaming{': ' + own_detail if own_detail else ''}"
                    )
                    fix = "check walrelay's log for why it cannot (re)connect to the source"
                else:
                    orphan = " and looks orphaned" if sev is Severity.PAGE else ""
                    msg = (
                        f"{whose} {slot.name} has had no consumer for "
                        f"{format_duration(inactive)}{orphan}; it retains "
                        f"{format_bytes(slot.retained_bytes)} of WAL"
                    )
                    fix = f"start its consumer, or if nothing uses it any more: {drop}"
                limit = (
                    t.slot_inactive_page_seconds
                    if sev is Severity.PAGE
                    else t.slot_inactive_warn_seconds
                )
                out.append(
                    Condition(
                        "slot_inactive",
                        obj,
                        sev,
                        f"{msg} ({sev.value} at {format_duration(limit)})",
                        fix,
                    )
                )

        # -- retained WAL
        if slot.retained_bytes is not None:
            sev = t.retained_wal(slot.retained_bytes, keep)
            if sev is not Severity.OK:
                page = t.retained_wal_page_limit(keep)
                warn = min(t.retained_wal_warn_bytes, page)
                fix = (
                    "walrelay is behind: check delivery lag and parked events per destination"
                    if owned
                    else f"make its consumer catch up, or drop it if unused: {drop}"
                )
                out.append(
                    Condition(
                        "slot_retained_wal",
                        obj,
                        sev,
                        f"{whose} {slot.name} retains {format_bytes(slot.retained_bytes)} of WAL "
                        f"(warn at {format_bytes(warn)}, page at {format_bytes(page)})",
                        fix,
                    )
                )

        # -- wal_status
        if slot.wal_status in ("lost", "unreserved"):
            lost = slot.wal_status == "lost"
            out.append(
                Condition(
                    "slot_wal_status",
                    obj,
                    Severity.PAGE,
                    f"{whose} {slot.name} is "
                    + (
                        "lost: the WAL it needs was removed; its consumer cannot continue"
                        if lost
                        else "about to be lost: it retains more than max_slot_wal_keep_size "
                        "(wal_status unreserved)"
                    ),
                    (
                        f"{drop} then recreate it and backfill"
                        if lost
                        else "make its consumer catch up now, or raise max_slot_wal_keep_size"
                    ),
                )
            )

        # -- spills
        if slot.spill_bytes is not None:
            track = state.spill.get(slot.name)
            if track is None:
                state.spill[slot.name] = _Spill(slot.spill_bytes)
            else:
                grew = slot.spill_bytes - track.last_bytes
                if grew > 0:
                    track.streak += 1
                    track.streak_bytes += grew
                else:  # no growth, or the statistics were reset
                    track.streak = 0
                    track.streak_bytes = 0
                track.last_bytes = slot.spill_bytes
                if track.streak >= spill_sustained_checks:
                    sev = Severity.WARN
                    near = ""
                    if (
                        disk is not None
                        and track.streak_bytes >= disk.free * t.spill_page_fraction_of_free_disk
                    ):
                        sev = Severity.PAGE
                        near = f", near the {format_bytes(disk.free)} free on {disk.path}"
                    out.append(
                        Condition(
                            "slot_spill",
                            obj,
                            sev,
                            f"decoding for {whose} {slot.name} has been spilling to disk for "
                            f"{track.streak} checks in a row ({format_bytes(track.streak_bytes)} "
                            f"meanwhile{near}; {slot.spill_txns} transactions spilled in total)",
                            "raise logical_decoding_work_mem (ALTER SYSTEM SET "
                            "logical_decoding_work_mem = '256MB'; SELECT pg_reload_conf();), "
                            "or split large transactions",
                        )
                    )

    # -- pg_wal disk
    if disk is not None:
        pct = disk.used_percent
        sev = t.wal_disk(pct)
        if sev is not Severity.OK:
            out.append(
                Condition(
                    "pg_wal_disk",
                    "pg_wal",
                    sev,
                    f"the filesystem holding pg_wal ({disk.path}) is {pct:.0f}% full, "
                    f"{format_bytes(disk.free)} free (warn {t.wal_disk_warn_percent:.0f}%, "
                    f"page {t.wal_disk_page_percent:.0f}%)",
                    "find what retains WAL: SELECT slot_name, active, pg_size_pretty("
                    "pg_wal_lsn_diff(pg_current_wal_lsn(), restart_lsn)) FROM "
                    "pg_replication_slots; then free or grow the disk",
                )
            )

    # -- oldest transaction
    tx = snapshot.server.oldest_transaction
    if tx is not None:
        sev = t.open_transaction(tx.seconds)
        if sev is not Severity.OK:
            out.append(
                Condition(
                    "oldest_transaction",
                    "transactions",
                    sev,
                    f"a transaction has been open for {format_duration(tx.seconds)} (pid {tx.pid}, "
                    f"user {tx.user}, database {tx.database}, application "
                    f"{tx.application or '-'}, state {tx.state}): decoding cannot move past it "
                    f"and WAL piles up behind it",
                    f"SELECT pg_terminate_backend({tx.pid}); and set "
                    "idle_in_transaction_session_timeout",
                )
            )
    return out


def evaluate_engine(
    lags: Mapping[str, float],
    *,
    thresholds: Thresholds,
    replication_paused: bool = False,
    backpressured: bool = False,
    slot: str = "",
) -> list[Condition]:
    """Firing conditions of the engine's own rules (:data:`ENGINE_RULES`)."""
    out: list[Condition] = []
    if backpressured and not replication_paused:
        out.append(
            Condition(
                "replication_paused",
                f"slot {slot}",
                Severity.WARN,
                "replication is paused: delivery is blocked (backpressure), so walrelay "
                "closed its replication connection and reconnects when there is room; "
                "the slot retains WAL meanwhile",
                "see which destination is blocked and why (walrelay status: buffered, last error)",
            )
        )
    if replication_paused:
        out.append(
            Condition(
                "replication_paused",
                f"slot {slot}",
                Severity.PAGE,
                "replication is paused: a destination's parked events reached their cap; "
                "the slot does not advance and WAL piles up until the backlog drains",
                "fix the failing destination (walrelay parking list), or raise its cap",
            )
        )
    for name, lag in lags.items():
        sev = thresholds.delivery_lag(lag)
        if sev is Severity.OK:
            continue
        out.append(
            Condition(
                "delivery_lag",
                f"destination {name}",
                sev,
                f"events for destination {name} wait {format_duration(lag)} from commit to "
                f"delivery (warn {format_duration(thresholds.delivery_lag_warn_seconds)}, page "
                f"{format_duration(thresholds.delivery_lag_page_seconds)})",
                "check the destination's last error and its parked events "
                "(walrelay status); a slow sink may need more max_in_flight",
            )
        )
    return out
