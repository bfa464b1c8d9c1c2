from collections.abc import Callable
from datetime import datetime

from walrelay.model import Event

def configure(unchanged: object) -> None: ...
def decode_tuple(buf: bytes, pos: int, ncols: int) -> tuple[tuple[object, ...], int] | None: ...
def encode_object(
    names: tuple[bytes, ...],
    kinds: bytes,
    encoders: tuple[Callable[[bytes], bytes] | None, ...],
    row: tuple[object, ...],
    indexes: tuple[int, ...] | None,
) -> bytes | None: ...
def set_event_type(cls: type[Event]) -> None: ...
def pg_timestamp(us: int) -> datetime | None: ...
def encode_insert_events(
    frames: list[bytes],
    start: int,
    limit: int,
    spec: tuple[object, ...],
    head: bytes | None,
    seq: int,
    tail: bytes | None,
    commit_lsn: int,
    table: str,
    xid: int,
    committed_at: datetime,
) -> list[Event] | None: ...
