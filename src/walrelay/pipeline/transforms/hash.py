"""``hash``: HMAC-SHA256 of a column's value, as hex.

Keyed, so that the same value always gives the same hash (hashed columns
still join) while nobody without the key can test guesses against it (a
plain SHA-256 of an email is reversed by hashing a list of emails). The
value hashed is the column's JSON text as walrelay sends it (a string's
characters without quotes); null stays null.
"""

from __future__ import annotations

import hmac
from collections.abc import Sequence
from hashlib import sha256
from typing import Any

from walrelay.pipeline.envelope import encode_json
from walrelay.pipeline.transforms.base import Draft, Step, row_dicts

__all__ = ["HashStep", "hmac_hex"]


def hmac_hex(key: bytes, value: Any) -> str:
    """The hash ``hash`` writes for ``value``."""
    data = value.encode() if isinstance(value, str) else encode_json(value)
    return hmac.new(key, data, sha256).hexdigest()


class HashStep(Step):
    """Replaces the columns' values by their HMAC-SHA256 (record, old and key)."""

    kind = "hash"

    def __init__(
        self, index: int, tables: Sequence[str] | None, columns: Sequence[str], key: bytes
    ) -> None:
        super().__init__(index, tables, columns)
        self._key = key

    def __repr__(self) -> str:  # the key never reaches a log
        return f"<HashStep {self.label} columns={list(self.columns)}>"

    def run(self, draft: Draft) -> Draft:
        key = self._key
        for row in row_dicts(draft.env):
            for name in self.columns:
                value = row.get(name)
                if value is not None:
                    row[name] = hmac_hex(key, value)
        return draft
