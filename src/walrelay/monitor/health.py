"""The rules that need memory of the engine and of the walsender between checks.

* ``destination_failing``: a destination whose delivery attempts fail and
  none succeeds, measured from the first check that saw it so (warn after
  1 min, page after 5);
* ``parked_cap``: a destination's parked events near their cap (the cap
  itself pauses replication: ``replication_paused``);
* ``heartbeat_lag``: heartbeat emitted -> received, with the delivery lag's
  thresholds;
* ``walsender_lag``: the server's own ``write_lag`` / ``flush_lag`` of the
  walsender serving a slot, with the delivery lag's thresholds;
* ``walsender_cpu``: the walsender's CPU, from ``/proc/<pid>/stat`` when the
  database runs on this host (warn at 50% of a core, page at 90%, each held
  for 5 min). Elsewhere it is estimated from ``pg_stat_activity`` wait
  events sampled every second over 5 min
  (:mod:`walrelay.monitor.walsender_waits`); without those samples a note
  says it cannot be seen;
* ``pg_wal_size``: when pg_wal's volume is not visible from here (a managed
  service), pg_wal's size (``pg_ls_waldir()``) against the most it should
  hold, ``max_wal_size + max_slot_wal_keep_size``.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from walrelay.monitor.alerts import Condition
from walrelay.monitor.probe import Snapshot
from walrelay.monitor.thresholds import Severity, Thresholds
from walrelay.monitor.walsender_waits import WalsenderWaits
from walrelay.units import format_bytes, format_duration

__all__ = ["HEALTH_RULES", "EngineHealth", "WalsenderCpu"]

HEALTH_RULES = frozenset(
    {
        "destination_failing",
        "parked_cap",
        "heartbeat_lag",
        "walsender_lag",
        "walsender_cpu",
        "pg_wal_size",
    }
)

FAILING_WARN_SECONDS = 60.0
FAILING_PAGE_SECONDS = 300.0
PARKED_CAP_WARN_FRACTION = 0.8
WALSENDER_CPU_WARN = 0.5
WALSENDER_CPU_PAGE = 0.9
WALSENDER_CPU_HOLD_SECONDS = 300.0


@dataclass
class _Counts:
    failures: int
    delivered: int


class WalsenderCpu:
    """CPU of walsender processes from ``/proc`` (Linux, same host only)."""

    def __init__(self, proc: Path = Path("/proc")) -> None:
        self._proc = proc
        self._ticks = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
        self._last: dict[int, tuple[float, float]] = {}  # pid -> (monotonic, cpu seconds)

    def _cpu_seconds(self, pid: int) -> float | None:
        try:
            cmdline = (self._proc / str(pid) / "cmdline").read_bytes()
            stat = (self._proc / str(pid) / "stat").read_text()
        except OSError:
            return None
        if b"walsender" not in cmdline:
            return None  # not a walsender here: another host's pid
        fields = stat[stat.rfind(")") + 2 :].split()
        return (int(fields[11]) + int(fields[12])) / self._ticks  # utime + stime

    def ratio(self, pid: int, now: float) -> float | None:
        """Share of one core used since the last call for ``pid`` (None: first
        call, or not a walsender visible here)."""
        cpu = self._cpu_seconds(pid)
        if cpu is None:
            self._last.pop(pid, None)
            return None
        last = self._last.get(pid)
        self._last[pid] = (now, cpu)
        if last is None or now <= last[0]:
            return None
        return max(0.0, (cpu - last[1]) / (now - last[0]))

    def forget_except(self, pids: Iterable[int]) -> None:
        keep = set(pids)
        for pid in [p for p in self._last if p not in keep]:
            del self._last[pid]


@dataclass
class EngineHealth:
    """Memory of the checks for the rules of this module (monotonic seconds)."""

    cpu: WalsenderCpu = field(default_factory=WalsenderCpu)
    failing_since: dict[str, float] = field(default_factory=dict)
    cpu_ratio: dict[str, float] = field(default_factory=dict)  # slot -> last ratio
    # Wait-event samples of the walsenders, when the database is on another host.
    waits: WalsenderWaits | None = None
    _counts: dict[str, _Counts] = field(default_factory=dict)
    _cpu_above: dict[tuple[str, str], float] = field(default_factory=dict)

    # -- destinations -------------------------------------------------------

    def observe_destinations(self, rows: Iterable[Mapping[str, Any]], now: float) -> None:
        """Update who is failing from the destinations' counters: failures
        grew and nothing was delivered since the last check."""
        names = set()
        for row in rows:
            name = str(row["name"])
            names.add(name)
            counts = _Counts(
                int(row.get("failures") or 0) + int(row.get("retry_failures") or 0),
                int(row.get("events_out") or 0) + int(row.get("redelivered") or 0),
            )
            last = self._counts.get(name)
            self._counts[name] = counts
            if last is None:
                continue
            if counts.delivered > last.delivered:
                self.failing_since.pop(name, None)
            elif counts.failures > last.failures:
                self.failing_since.setdefault(name, now)
        for d in (self._counts, self.failing_since):
            for name in [n for n in d if n not in names]:
                del d[name]

    def failing_seconds(self, name: str, now: float) -> float:
        since = self.failing_since.get(name)
        return 0.0 if since is None else max(0.0, now - since)

    def destination_conditions(
        self, rows: Iterable[Mapping[str, Any]], now: float
    ) -> list[Condition]:
        out: list[Condition] = []
        for row in rows:
            name = str(row["name"])
            failing = self.failing_seconds(name, now)
            if failing >= FAILING_WARN_SECONDS:
                sev = Severity.PAGE if failing >= FAILING_PAGE_SECONDS else Severity.WARN
                error = f": {row['last_error']}" if row.get("last_error") else ""
                out.append(
                    Condition(
                        "destination_failing",
                        f"destination {name}",
                        sev,
                        f"every delivery to {name} has failed for {format_duration(failing)} "
                        f"({row.get('parked') or 0} parked){error}",
                        "fix the destination (its last error says why); parked events are "
                        f"retried by themselves: walrelay parking list --destination {name}",
                    )
                )
            used = row.get("parked_cap_used")
            if used is not None and PARKED_CAP_WARN_FRACTION <= used < 1.0:
                out.append(
                    Condition(
                        "parked_cap",
                        f"destination {name}",
                        Severity.WARN,
                        f"parked events of {name} are at {used:.0%} of their cap; at 100% "
                        "replication pauses and the slot retains WAL",
                        f"fix the destination, or raise destinations[{name}].parking."
                        "max_events / max_bytes",
                    )
                )
        return out

    # -- heartbeats -----------------------------------------------------------

    @staticmethod
    def heartbeat_conditions(lag: float | None, slot: str, t: Thresholds) -> list[Condition]:
        if lag is None:
            return []
        sev = t.delivery_lag(lag)
        if sev is Severity.OK:
            return []
        return [
            Condition(
                "heartbeat_lag",
                f"slot {slot}",
                sev,
                f"a heartbeat took {format_duration(lag)} from the source to walrelay: the "
                "stream is behind the database",
                "see delivery lag and the walsender (walrelay status); a long transaction "
                "being decoded delays everything after it",
            )
        ]

    # -- walsenders and pg_wal -----------------------------------------------------

    def walsender_conditions(
        self, snap: Snapshot, t: Thresholds, now: float, notes: list[str]
    ) -> list[Condition]:
        out: list[Condition] = []
        local = snap.server.disk is not None
        pids = []
        self.cpu_ratio = {}
        for slot in snap.slots:
            obj = f"slot {slot.name}"
            lag = max((x for x in (slot.write_lag, slot.flush_lag) if x is not None), default=None)
            if lag is not None and (sev := t.delivery_lag(lag)) is not Severity.OK:
                out.append(
                    Condition(
                        "walsender_lag",
                        obj,
                        sev,
                        f"the walsender of {slot.name} reports write/flush lag "
                        f"{format_duration(lag)} (pg_stat_replication)",
                        "the consumer confirms slowly: see its delivery lag and destinations",
                    )
                )
            if slot.active_pid is None:
                continue
            if not local:
                estimate = None if self.waits is None else self.waits.ratio(slot.active_pid)
                if estimate is not None:
                    self.cpu_ratio[slot.name] = estimate
                    # Already the share over the last 5 minutes: no further hold.
                    out += self._cpu_conditions(slot.name, estimate, now, hold=0.0)
                continue
            pids.append(slot.active_pid)
            ratio = self.cpu.ratio(slot.active_pid, now)
            if ratio is None:
                continue
            self.cpu_ratio[slot.name] = ratio
            out += self._cpu_conditions(slot.name, ratio, now)
        self.cpu.forget_except(pids)
        if not local and self.waits is None:
            notes.append(
                "walsender CPU unknown: the database is not on this host (it is read from "
                "/proc); watch it with the host's own monitoring"
            )
        elif not local:
            notes.append(
                "walsender CPU estimated: the database is not on this host, so it is the "
                "share of 1 s samples of pg_stat_activity without a wait event over 5 min"
            )
        out += self._pg_wal_size(snap, t, notes)
        return out

    def _cpu_conditions(
        self, slot: str, ratio: float, now: float, hold: float = WALSENDER_CPU_HOLD_SECONDS
    ) -> list[Condition]:
        held: dict[str, float] = {}
        for level, limit in (("page", WALSENDER_CPU_PAGE), ("warn", WALSENDER_CPU_WARN)):
            key = (slot, level)
            if ratio >= limit:
                held[level] = now - self._cpu_above.setdefault(key, now)
            else:
                self._cpu_above.pop(key, None)
        for level, sev in (("page", Severity.PAGE), ("warn", Severity.WARN)):
            if held.get(level, -1.0) >= hold:
                how = (
                    f"for {format_duration(held[level])}"
                    if hold
                    else "over the last 5 min (estimated from its wait events)"
                )
                return [
                    Condition(
                        "walsender_cpu",
                        f"slot {slot}",
                        sev,
                        f"the walsender of {slot} uses {ratio:.0%} of a core {how} "
                        "(warn 50%, page 90%, for 5 min)",
                        "decoding is CPU-bound: narrow the publication (FOR TABLE), stream "
                        "large transactions (source.streaming), or avoid several slots on "
                        "one database",
                    )
                ]
        return []

    @staticmethod
    def _pg_wal_size(snap: Snapshot, t: Thresholds, notes: list[str]) -> list[Condition]:
        server = snap.server
        if server.disk is not None:
            return []  # pg_wal_disk judges the volume itself
        budget = (server.max_wal_size or 0) + (server.max_slot_wal_keep_size or 0)
        if server.pg_wal_bytes is None or server.max_slot_wal_keep_size is None or not budget:
            notes.append(
                "pg_wal size not judged: needs pg_monitor for pg_ls_waldir() and a "
                "max_slot_wal_keep_size"
            )
            return []
        percent = 100.0 * server.pg_wal_bytes / budget
        sev = t.wal_disk(percent)
        if sev is Severity.OK:
            return []
        return [
            Condition(
                "pg_wal_size",
                "pg_wal",
                sev,
                f"pg_wal holds {format_bytes(server.pg_wal_bytes)}, {percent:.0f}% of "
                f"max_wal_size + max_slot_wal_keep_size ({format_bytes(budget)}); its volume "
                "is not visible from here (managed service?), so this is judged instead",
                "find the slot that retains WAL (walrelay status); check the volume's free "
                "space in the provider's console",
            )
        ]
