"""Warn/page thresholds of ARCHITECTURE section 3, as one typed table.

The defaults are the table's starting points. They are plain data so a
config section (or a flag) can override them later without touching the
checks that read them.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

GiB = 1024**3
MiB = 1024**2


class Severity(StrEnum):
    """How bad a finding is, mildest first.

    - ``ok``: checked, nothing to do.
    - ``info``: worth knowing, no action needed (or the check could not run).
    - ``warn``: fix it soon; nothing breaks today.
    - ``page``: the primary is at risk now (a disk can fill, a slot is lost).
    - ``error``: a definite misconfiguration that breaks CDC (or the primary's
      own writes), e.g. ``wal_level`` not logical or a published table
      without any key.
    """

    OK = "ok"
    INFO = "info"
    WARN = "warn"
    PAGE = "page"
    ERROR = "error"

    @property
    def rank(self) -> int:
        return _RANK[self]

    @property
    def alerting(self) -> bool:
        """Page and error: someone must act now (``walrelay doctor`` exits 3 or 4)."""
        return self.rank >= _RANK[Severity.PAGE]


_RANK = {
    Severity.OK: 0,
    Severity.INFO: 1,
    Severity.WARN: 2,
    Severity.PAGE: 3,
    Severity.ERROR: 4,
}


@dataclass(frozen=True)
class Thresholds:
    """When a signal warns and when it pages. ``None`` means "never pages"."""

    # retained WAL bytes of a slot (pg_current_wal_lsn() - restart_lsn)
    retained_wal_warn_bytes: int = 1 * GiB
    retained_wal_page_bytes: int = 5 * GiB
    retained_wal_page_fraction_of_keep_size: float = 0.5
    # slot inactive for (the doctor reads inactive_since, PostgreSQL 17+; the engine's
    # monitor measures it itself from the first check that saw the slot inactive)
    slot_inactive_warn_seconds: float = 60.0
    slot_inactive_page_seconds: float = 300.0
    # usage of the filesystem holding pg_wal
    wal_disk_warn_percent: float = 60.0
    wal_disk_page_percent: float = 80.0
    # delivery lag, commit -> delivered (used by the engine's monitor, not the doctor)
    delivery_lag_warn_seconds: float = 10.0
    delivery_lag_page_seconds: float = 60.0
    # oldest open transaction
    oldest_transaction_warn_seconds: float = 300.0
    oldest_transaction_page_seconds: float | None = None
    # reorder-buffer spilling: any spill warns; pages when spilled bytes reach
    # this fraction of the free disk (a sustained rate, judged by a monitor over time)
    spill_page_fraction_of_free_disk: float = 0.5
    # replication slots / WAL senders in use, as a fraction of the maximum
    slots_warn_fraction: float = 0.8

    def retained_wal_page_limit(self, max_slot_wal_keep_size: int | None) -> int:
        """Page at 5 GB, or at 50% of max_slot_wal_keep_size when that is lower."""
        limit = self.retained_wal_page_bytes
        if max_slot_wal_keep_size is not None and max_slot_wal_keep_size >= 0:
            limit = min(
                limit, int(max_slot_wal_keep_size * self.retained_wal_page_fraction_of_keep_size)
            )
        return limit

    def retained_wal(self, retained: int, max_slot_wal_keep_size: int | None) -> Severity:
        """Severity of a slot retaining ``retained`` bytes of WAL."""
        page = self.retained_wal_page_limit(max_slot_wal_keep_size)
        if retained >= page:
            return Severity.PAGE
        if retained >= min(self.retained_wal_warn_bytes, page):
            return Severity.WARN
        return Severity.OK

    def slot_inactive(self, seconds: float) -> Severity:
        if seconds >= self.slot_inactive_page_seconds:
            return Severity.PAGE
        if seconds >= self.slot_inactive_warn_seconds:
            return Severity.WARN
        return Severity.OK

    def wal_disk(self, used_percent: float) -> Severity:
        if used_percent >= self.wal_disk_page_percent:
            return Severity.PAGE
        if used_percent >= self.wal_disk_warn_percent:
            return Severity.WARN
        return Severity.OK

    def delivery_lag(self, seconds: float) -> Severity:
        if seconds >= self.delivery_lag_page_seconds:
            return Severity.PAGE
        if seconds >= self.delivery_lag_warn_seconds:
            return Severity.WARN
        return Severity.OK

    def open_transaction(self, seconds: float, warn_seconds: float | None = None) -> Severity:
        """Severity of a transaction open for ``seconds`` (``warn_seconds`` overrides)."""
        page = self.oldest_transaction_page_seconds
        if page is not None and seconds >= page:
            return Severity.PAGE
        warn = self.oldest_transaction_warn_seconds if warn_seconds is None else warn_seconds
        if seconds >= warn:
            return Severity.WARN
        return Severity.OK

    def usage(self, used: int, maximum: int) -> Severity:
        """Slots or WAL senders in use against their maximum."""
        if maximum <= 0 or used >= maximum:
            return Severity.WARN
        if used >= maximum * self.slots_warn_fraction:
            return Severity.WARN
        return Severity.OK


DEFAULT_THRESHOLDS = Thresholds()
