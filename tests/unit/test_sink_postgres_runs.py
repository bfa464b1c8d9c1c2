"""How the PostgreSQL sink groups a batch's statements: in order, a run of
upserts of distinct rows as one statement over a JSON array of bodies."""

from __future__ import annotations

import json

from walrelay.sinks.postgres import _runs


def test_runs_keep_order_and_split_where_a_row_repeats() -> None:
    up, delete = b"upsert", b"delete"
    statements = [
        (up, ('{"a":1}',), ("1",)),
        (up, ('{"a":2}',), ("2",)),
        (up, ('{"a":3}',), ("1",)),  # row 1 again: a new statement
        (delete, ('{"d":1}',), None),
        (delete, ('{"d":2}',), None),
        (up, ('{"a":4}',), ("1",)),
    ]
    out = [(q, [tuple(json.loads(p[0]) for p in params)]) for q, params in _runs(statements)]
    assert out == [
        (up, [([{"a": 1}, {"a": 2}],)]),
        (up, [([{"a": 3}],)]),
        (delete, [({"d": 1}, {"d": 2})]),
        (up, [([{"a": 4}],)]),
    ]


def test_a_run_of_upserts_is_cut_at_the_size_limit() -> None:
    statements = [(b"upsert", (f'{{"a":{i}}}',), (str(i),)) for i in range(5)]
    sizes = [len(json.loads(p[0][0])) for _, p in _runs(statements, max_chars=14)]
    assert sizes == [2, 2, 1]  # each body is 7 characters
