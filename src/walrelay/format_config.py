"""Config models of a destination's output format (walrelay.pipeline.formats).

``format: walrelay | debezium | cloudevents`` on a destination, with the
options of the chosen format under ``debezium: {...}`` / ``cloudevents:
{...}``. The Debezium options take Debezium's own property names too
(``decimal.handling.mode`` for ``decimal_handling``...), so a connector's
settings can be pasted.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

__all__ = ["CloudEventsOptions", "DebeziumOptions", "FormatName", "check_format"]

FormatName = Literal["walrelay", "debezium", "cloudevents"]

# Sinks that carry per-event headers (CloudEvents binary mode puts the
# attributes there) and sinks whose body must stay walrelay's envelope.
_HEADER_SINKS = frozenset({"webhook", "kafka"})
_ENVELOPE_SINKS = frozenset({"postgres"})


class _Options(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)


class DebeziumOptions(_Options):
    """``debezium: {...}``: what Debezium's PostgreSQL connector would be set to."""

    # source.name (Debezium's topic.prefix); default: the slot's name.
    name: str | None = Field(default=None, alias="topic.prefix")
    decimal_handling: Literal["precise", "string", "double"] = Field(
        default="precise", alias="decimal.handling.mode"
    )
    binary_handling: Literal["bytes", "base64", "hex"] = Field(
        default="bytes", alias="binary.handling.mode"
    )
    time_precision: Literal["adaptive", "connect"] = Field(
        default="adaptive", alias="time.precision.mode"
    )
    unavailable_value_placeholder: str = Field(
        default="__debezium_unavailable_value", alias="unavailable.value.placeholder"
    )
    # JsonConverter's schemas.enable: {"schema", "payload"} around every key and value.
    schemas_enable: bool = Field(default=False, alias="schemas.enable")


class CloudEventsOptions(_Options):
    """``cloudevents: {...}``: CloudEvents 1.0 attributes and the transport mode."""

    mode: Literal["structured", "binary"] = "structured"
    # {schema}, {table}, {op}; events without a table (logical messages) use message_type.
    type: str = "walrelay.{schema}.{table}.{op}"
    message_type: str = "walrelay.message"
    # Default: /walrelay/<slot>.
    source: str | None = None

    @field_validator("type", "message_type")
    @classmethod
    def _template(cls, v: str) -> str:
        try:
            v.format(schema="s", table="t", op="insert")
        except (KeyError, IndexError, ValueError) as exc:
            raise ValueError(
                f"cloudevents type template {v!r}: {exc!s} is not a field; "
                "use {schema}, {table} and {op}"
            ) from None
        return v


def check_format(
    name: str,
    fmt: FormatName,
    sink_type: str,
    *,
    has_router: bool,
    cloudevents_mode: str,
    transaction_metadata: bool = False,
) -> None:
    """Raise ValueError (a config error) for a format the destination cannot carry."""
    if transaction_metadata and sink_type in _ENVELOPE_SINKS:
        raise ValueError(
            f"destination {name!r}: a {sink_type} sink applies row changes and cannot take "
            "transaction_metadata events; remove transaction_metadata: true"
        )
    if fmt == "walrelay":
        return
    if sink_type in _ENVELOPE_SINKS:
        raise ValueError(
            f"destination {name!r}: format {fmt} cannot feed a {sink_type} sink, which applies "
            "walrelay's envelope; remove format: or use format: walrelay"
        )
    if has_router:
        raise ValueError(
            f"destination {name!r}: the outbox router: renders its own payload; "
            f"remove format: {fmt} or the router:"
        )
    if fmt == "cloudevents" and cloudevents_mode == "binary" and sink_type not in _HEADER_SINKS:
        raise ValueError(
            f"destination {name!r}: CloudEvents binary mode needs headers, which a {sink_type} "
            "sink does not have; use cloudevents: {mode: structured} or a webhook/kafka sink"
        )
