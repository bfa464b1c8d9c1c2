"""Output formats: the last per-destination step of the Router.

A destination's ``format`` (``walrelay`` | ``debezium`` | ``cloudevents``)
renders the final body, record key and transport attributes of each event
from walrelay's envelope (after the destination's transforms) plus the
table's column types (:meth:`EnvelopeBuilder.relation
<walrelay.pipeline.envelope.EnvelopeBuilder.relation>`). ``walrelay`` is no
step at all: the envelope is the body, byte for byte.

- :mod:`.debezium`: Debezium's PostgreSQL connector envelope, values by
  :mod:`.debezium_values`;
- :mod:`.cloudevents`: CloudEvents 1.0, structured or binary mode.
"""

from __future__ import annotations

import importlib.metadata
from collections.abc import Callable, Sequence
from typing import Protocol

from psycopg.conninfo import conninfo_to_dict

from walrelay.config import DestinationConfig, SourceConfig
from walrelay.model import Event, Relation
from walrelay.pipeline.formats.cloudevents import CloudEventsFormatter
from walrelay.pipeline.formats.debezium import DebeziumFormatter
from walrelay.pipeline.transaction_metadata import TransactionOrder

__all__ = [
    "SNAPSHOT_BACKFILL",
    "SNAPSHOT_INITIAL",
    "SNAPSHOT_NONE",
    "CloudEventsFormatter",
    "DebeziumFormatter",
    "Formatter",
    "build_formatters",
]

# What a formatter is told about where a row came from (Debezium's source.snapshot).
SNAPSHOT_NONE = "false"
SNAPSHOT_INITIAL = "true"
SNAPSHOT_BACKFILL = "incremental"


class Formatter(Protocol):
    """Renders one event (walrelay's envelope in its body) in a destination's format."""

    def render(
        self, event: Event, snapshot: str, transaction: TransactionOrder | None = None
    ) -> Event:
        """``event`` in this format. ``snapshot``: what a ``read`` event is (one of
        the SNAPSHOT_ constants); ``transaction``: its place in its transaction
        when the destination has transaction metadata."""
        ...


def _version() -> str:
    try:
        return f"walrelay-{importlib.metadata.version('walrelay')}"
    except importlib.metadata.PackageNotFoundError:
        return "walrelay"


def build_formatters(
    configs: Sequence[DestinationConfig],
    relation: Callable[[str], Relation | None],
    source: SourceConfig | None,
) -> dict[str, Formatter]:
    """The formatter of each destination whose format is not ``walrelay``."""
    slot = source.slot if source is not None else "walrelay"
    db = ""
    if source is not None:
        try:
            db = str(conninfo_to_dict(source.dsn_value).get("dbname") or "")
        except Exception:  # an unparsable DSN fails at connect with its own error
            db = ""
    out: dict[str, Formatter] = {}
    for dcfg in configs:
        if dcfg.format == "debezium":
            out[dcfg.name] = DebeziumFormatter(
                dcfg.debezium,
                name=slot,
                db=str(db),
                version=_version(),
                relation=relation,
                transformed=bool(dcfg.transforms) or dcfg.router is not None,
            )
        elif dcfg.format == "cloudevents":
            out[dcfg.name] = CloudEventsFormatter(dcfg.cloudevents, slot=slot)
    return out
