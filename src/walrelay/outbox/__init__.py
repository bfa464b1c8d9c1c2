"""The transactional outbox, end to end.

- :func:`publish` / :func:`publish_message`: write an event in the
  application's transaction (outbox row, or table-less logical message);
- :class:`OutboxRouter`: turns those into routed events (topic, key, JSON
  payload, headers) for any sink -- ``router: {type: outbox}`` on a destination;
- :func:`init_outbox` / :func:`maintain`: the partitioned table, its
  publication, and daily partition upkeep that drops only delivered partitions
  (``walrelay outbox init|maintain``, and the engine's ``outbox:`` schedule).
"""

from walrelay.outbox.partitions import (
    MaintainReport,
    OutboxTable,
    init_outbox,
    init_statements,
    maintain,
)
from walrelay.outbox.publish import (
    NotInTransaction,
    apublish,
    apublish_message,
    publish,
    publish_message,
)
from walrelay.pipeline.outbox_router import OutboxRouter

__all__ = [
    "MaintainReport",
    "NotInTransaction",
    "OutboxRouter",
    "OutboxTable",
    "apublish",
    "apublish_message",
    "init_outbox",
    "init_statements",
    "maintain",
    "publish",
    "publish_message",
]
