"""The C speedups and the pure-Python paths write the same bytes, end to end.

Two ``walrelay run`` processes stream the same changes from two slots into
two files, one with ``WALRELAY_NO_SPEEDUPS=1``: every line must be identical,
and only the pure-Python one warns that it is running without the C code.
"""

from __future__ import annotations

from pathlib import Path

from tests.integration.support import (
    count_lines,
    execute,
    slot_state,
    wait_for_sync,
    walrelay_process,
    write_config_file,
)
from walrelay import speedups

TYPED = """create table typed (
    id bigint primary key, i2 smallint, n numeric, f8 float8, b bool, t text,
    vc varchar(10), c char(3), j jsonb, ts timestamp, tstz timestamptz, d date,
    u uuid, by bytea, arr int[], iv interval, big text
)"""

WORKLOAD = [
    """insert into typed values
        (1, -32768, 0.1, 1.5, true, 'héllo "quoted" \\ back', 'short', 'ab',
         '{"a": [1, 2.5]}', '2024-02-29 13:14:15.123456', '2024-02-29 13:14:15.5+02',
         '2024-02-29', 'a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11', '\\x00ff', '{1,NULL}',
         '1 day', (select string_agg(md5(g::text), '') from generate_series(1, 1000) g)),
        (2, null, 'NaN', 'Infinity', false, E'tab\\there\\nnew', null, null, null,
         '0099-01-01 00:00:00', 'infinity', '0044-03-15 BC', null, null, null, null, null)""",
    # the TOASTed column is not resent: 'unchanged', through the Python path
    "update typed set t = 'changed' where id = 1",
    "update typed set id = 3 where id = 2",  # a key change: old key
    "insert into full_rows values (1, 'a'), (2, 'b')",
    "update full_rows set v = 'c' where k = 1",
    "delete from full_rows where k = 2",
    "delete from typed where id = 3",
    "truncate full_rows",
    # a transaction of many inserts (after the first, straight from the wire:
    # Router.route_inserts), a key with the separator and non-ASCII text
    """insert into typed (id, t, big)
        select 100 + g, 'row ' || g || chr(31), repeat('é', g) from generate_series(1, 40) g""",
    # inserts before and after another change in one transaction
    """begin; insert into full_rows values (10, 'x'); update typed set t = 'again' where id = 1;
        insert into typed (id, n) values (200, 1e-7); commit""",
]


def config(db: str, slot: str, out: Path) -> dict[str, object]:
    return {
        "source": {
            "dsn": db,
            "slot": slot,
            "publication": "speedups_pub",
            "tables": ["public.typed", "public.full_rows"],
            "status_interval": 1,
        },
        "destinations": [{"name": "file", "sink": {"type": "file", "path": str(out)}}],
        "log_level": "info",
        "http": {"enabled": False},
    }


def test_c_and_pure_python_write_identical_events(db: str, tmp_path: Path) -> None:
    assert speedups.ENABLED, "walrelay._speedups is not built"
    execute(
        db,
        TYPED,
        "create table full_rows (k int primary key, v text)",
        "alter table full_rows replica identity full",
    )
    fast_out, slow_out = tmp_path / "c.jsonl", tmp_path / "py.jsonl"
    fast_cfg = write_config_file(tmp_path / "c.yaml", config(db, "c_slot", fast_out))
    slow_cfg = write_config_file(tmp_path / "py.yaml", config(db, "py_slot", slow_out))
    with (
        walrelay_process(fast_cfg, tmp_path / "c.log"),
        walrelay_process(slow_cfg, tmp_path / "py.log", env={"WALRELAY_NO_SPEEDUPS": "1"}),
    ):
        wait_for_sync(
            lambda: all(slot_state(db, s).get("active_pid") for s in ("c_slot", "py_slot")),
            within=90,  # two processes starting on a busy machine
            what="both slots streaming",
        )
        execute(db, *WORKLOAD)
        expected = 53  # one per row changed, one for the truncate
        wait_for_sync(
            lambda: count_lines(fast_out) >= expected and count_lines(slow_out) >= expected,
            what=f"{expected} events in both files",
        )
    fast, slow = fast_out.read_bytes(), slow_out.read_bytes()
    assert fast.count(b"\n") == expected
    assert fast == slow
    assert b'"unchanged":["big"]' in fast  # the Python fallback inside a C-enabled run
    warning = "the C speedups are off"
    assert warning in (tmp_path / "py.log").read_text()
    assert warning not in (tmp_path / "c.log").read_text()
