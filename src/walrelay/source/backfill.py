"""Backfills on demand while streaming: watermarks, keyset chunks, resumable.

``walrelay backfill`` (walrelay.cli.backfill) stores a request in
``<state schema>.backfills`` (:mod:`walrelay.state.backfills`); the running
engine (:mod:`walrelay.engine.backfills`) polls that table and runs the
requests one at a time, in this process, because the chunk rows must
meet the replication stream (DBLog-style, https://arxiv.org/abs/2010.12597):

1. emit a *low watermark*: ``pg_logical_emit_message(true,
   'walrelay.watermark', '{"backfill": id, "chunk": n, "kind": "low"}')``;
2. read the next chunk by keyset (``where key > cursor order by key limit
   chunk_size``, plus ``--where``), in its own statement and snapshot, taken
   after the low watermark committed;
3. emit the *high watermark*.

When the stream reaches the low watermark the engine starts recording the
keys of the table changed in the stream (events routed to the backfill's
destination); at the high watermark it drops the chunk rows whose keys
changed in between -- the stream carries a newer version of them -- and
hands the remaining rows to the destination as ``read`` events *inside the
high watermark's transaction* (ids ``<hw commit_lsn>/1..n``). So a row is
never delivered stale after its newer change: a change committed before the
low watermark is ahead of the read row in the stream; a change between the
watermarks drops the row; a change after the high watermark comes after it.

The cursor (the last key read) and the counts are saved in the state
database only once the slot may be confirmed past the high watermark (every
read event of the chunk delivered or parked): a crash re-reads at most the
chunk in progress, and a restarted engine resumes the request from its
cursor. Watermark messages are never delivered to destinations.
"""

from __future__ import annotations

WATERMARK_PREFIX = "walrelay.watermark"
"""The prefix of the watermark messages (``pg_logical_emit_message``)."""
