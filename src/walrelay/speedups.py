"""The optional C fast paths (``_speedups.c``), or None where they are not built.

``pip install`` compiles them when a C compiler is present; without one,
walrelay runs the same pure-Python code, which is the reference the C code
is tested against byte for byte (``tests/unit/test_speedups.py``).
``WALRELAY_NO_SPEEDUPS=1`` in the environment turns them off (to compare,
or to rule them out when chasing a bug).
"""

from __future__ import annotations

import importlib
import os
from collections.abc import Callable
from datetime import datetime

from walrelay.model import UNCHANGED_TOAST, Event

__all__ = ["ENABLED", "decode_tuple", "encode_insert_events", "encode_object", "pg_timestamp"]

DecodeTuple = Callable[[bytes, int, int], "tuple[tuple[object, ...], int] | None"]
EncodeObject = Callable[
    [
        tuple[bytes, ...],
        bytes,
        tuple[Callable[[bytes], bytes] | None, ...],
        tuple[object, ...],
        tuple[int, ...] | None,
    ],
    "bytes | None",
]

EncodeInsertEvents = Callable[
    [
        list[bytes],
        int,
        int,
        tuple[object, ...],
        bytes | None,
        int,
        bytes | None,
        int,
        str,
        int,
        datetime,
    ],
    list[Event] | None,
]

decode_tuple: DecodeTuple | None
encode_object: EncodeObject | None
encode_insert_events: EncodeInsertEvents | None
pg_timestamp: Callable[[int], datetime | None] | None
try:
    if os.environ.get("WALRELAY_NO_SPEEDUPS", "") not in ("", "0"):
        raise ImportError("turned off by WALRELAY_NO_SPEEDUPS")
    # Loaded by name: an import statement of walrelay._speedups reads, to the
    # import graph (source only), as one of the package walrelay, whose lazy
    # public API sits above every layer.
    _speedups = importlib.import_module("walrelay._speedups")
except ImportError:  # built without a C compiler, or turned off
    decode_tuple = encode_object = encode_insert_events = pg_timestamp = None
else:
    _speedups.configure(UNCHANGED_TOAST)
    decode_tuple = _speedups.decode_tuple
    encode_object = _speedups.encode_object
    # Older builds (a stale extension in a source tree) lack it: the general path then.
    encode_insert_events = getattr(_speedups, "encode_insert_events", None)
    if encode_insert_events is not None:
        _speedups.set_event_type(Event)
    pg_timestamp = getattr(_speedups, "pg_timestamp", None)

ENABLED = encode_object is not None
