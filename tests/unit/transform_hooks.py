"""Python hooks the transforms' tests name as ``tests.unit.transform_hooks:<fn>``."""

from __future__ import annotations

from typing import Any

FAIL_FOR: set[Any] = set()
"""Keys (``record.id``) :func:`fails_for_some` raises for."""


def identity(event: dict[str, Any]) -> dict[str, Any]:
    return event


def fan_out(event: dict[str, Any]) -> list[dict[str, Any]]:
    return [event, {**event, "copy": True}]


def drop_eu(event: dict[str, Any]) -> dict[str, Any] | None:
    return None if (event.get("record") or {}).get("region") == "eu" else event


def fails_for_some(event: dict[str, Any]) -> dict[str, Any]:
    record = event.get("record") or event.get("old") or {}
    if record.get("id") in FAIL_FOR:
        record["half_done"] = True  # changed in place before raising: must not be parked
        raise RuntimeError(f"enrichment service down for {record.get('id')}")
    record["enriched"] = True
    return event


def wrong_type(event: dict[str, Any]) -> int:
    return 3


BATCH_CALLS: list[list[Any]] = []
"""The ``record.id`` lists each batch function below was called with."""


def _ids(events: list[dict[str, Any]]) -> list[Any]:
    return [(e.get("record") or e.get("old") or {}).get("id") for e in events]


def batch_enrich(events: list[dict[str, Any]]) -> list[dict[str, Any] | None]:
    """A batch function: drops eu rows, marks the others; raises for FAIL_FOR keys."""
    BATCH_CALLS.append(_ids(events))
    out: list[dict[str, Any] | None] = []
    for event in events:
        record = event.get("record") or event.get("old") or {}
        record["half_done"] = True  # changed in place before raising: must not be parked
        if record.get("id") in FAIL_FOR:
            raise RuntimeError(f"lookup service down for {record.get('id')}")
        del record["half_done"]
        if record.get("region") == "eu":
            out.append(None)
            continue
        record["batch_size"] = len(events)
        out.append(event)
    return out


def batch_tag(events: list[dict[str, Any]]) -> list[Any]:
    """A second batch function: tags every event; a list of one for id 3 (fan out to one)."""
    BATCH_CALLS.append(_ids(events))
    out: list[Any] = []
    for event in events:
        event["tagged"] = True
        out.append([event] if _ids([event]) == [3] else event)
    return out


def batch_short(events: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return events[:-1]


def batch_one_bad(events: list[dict[str, Any]]) -> list[Any]:
    return [7 if _ids([e]) == [2] else e for e in events]


SEEN: list[Any] = []
"""What :func:`record_doc_types` saw: (type of doc.big, type of doc.dec)."""


def record_doc_types(event: dict[str, Any]) -> dict[str, Any]:
    doc = event["record"]["doc"]
    SEEN.append((type(doc["big"]).__name__, type(doc["dec"]).__name__, doc["dec"] * 10))
    return event
