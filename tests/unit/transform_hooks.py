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
