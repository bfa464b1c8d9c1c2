"""Error types that carry what to do next. The CLI prints them as one line."""

from __future__ import annotations


class WalrelayError(Exception):
    """Base class. ``exit_code`` is what the CLI exits with."""

    exit_code = 1

    def __init__(self, message: str, *, fix: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.fix = fix

    def __str__(self) -> str:
        if self.fix:
            return f"{self.message} -- fix: {self.fix}"
        return self.message


class ConfigError(WalrelayError):
    """The configuration or the source database's setup is not usable."""

    exit_code = 2


class SourceSetupError(ConfigError):
    """The source database cannot be streamed as configured (wal_level, keys, ...)."""


class SlotBusy(ConfigError):
    """Another process is streaming from the slot."""


class SlotLost(WalrelayError):
    """The slot is gone or its WAL was removed (wal_status 'lost')."""

    exit_code = 3


class PublicationLost(WalrelayError):
    """The publication was dropped while walrelay streamed from it."""

    exit_code = 3


class DecodeError(WalrelayError):
    """pgoutput sent something this decoder does not understand."""

    exit_code = 3


class UnknownRelation(DecodeError):
    """A change referenced a relation OID no Relation message described."""


class SinkError(Exception):
    """A delivery failed. ``permanent`` tells a rejection from an outage."""

    def __init__(
        self, message: str, *, permanent: bool = False, retry_after: float | None = None
    ) -> None:
        super().__init__(message)
        self.permanent = permanent
        self.retry_after = retry_after


class SinkUnavailable(SinkError):
    """The destination could not be reached (connection refused, timeout)."""


class PoisonEvent(SinkError):
    """The destination rejected this event's payload itself."""

    def __init__(self, message: str) -> None:
        super().__init__(message, permanent=True)
