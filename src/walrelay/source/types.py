"""Type OID -> Python value conversion for pgoutput's text-format column values.

pgoutput (without ``binary``) sends every column as the text its type's output
function prints -- in the walsender's session, so the settings in
:data:`SESSION_SETTINGS` are fixed for the replication and snapshot
connections (client options win over ``ALTER DATABASE/ROLE ... SET``).
Instead of writing parsers, :class:`TypeRegistry` reuses psycopg 3's text
loaders: one private :class:`psycopg.adapt.AdaptersMap` (a copy of the global
one, so nothing leaks into application connections) with a few loaders
swapped, one loader instance per OID, its bound ``load`` cached.

The rule: every value converts back, by PostgreSQL itself, to a value equal
to the source's; where a Python/JSON value cannot hold it, the text
PostgreSQL printed is kept. What each type becomes:

=============================================  ==================================
int2, int4, int8, oid                           ``int``
numeric                                         ``Decimal`` (``NaN``/``Infinity``
                                                 included, no float on the way)
float4, float8                                  ``float`` (printed with
                                                 ``extra_float_digits=3``: exact)
bool                                            ``bool``
text, varchar, bpchar (padded), name, "char"    ``str``
json, jsonb                                     :class:`orjson.Fragment`: the
                                                 document's own text, spliced
                                                 into the output as JSON (every
                                                 digit of every number kept);
                                                 ``str`` (the text) when nested
                                                 deeper than :data:`MAX_JSON_DEPTH`
timestamptz                                     aware ``datetime`` in UTC
timestamp / date / time                         naive ``datetime`` / ``date`` /
                                                 ``time``
timetz                                          ``time`` with a fixed offset
interval                                        ``str``: ISO 8601 as PostgreSQL
                                                 prints it with
                                                 ``IntervalStyle=iso_8601``
                                                 (``P1Y2M3DT4H5M6.5S``; months,
                                                 days and time kept apart)
uuid                                            ``UUID``
bytea                                           ``bytes``
arrays of the above                             ``list`` (nested for n-dim,
                                                 ``None`` for NULL elements);
                                                 ``str`` (PostgreSQL's text,
                                                 ``[0:2]={7,8,9}``) when a lower
                                                 bound is not 1
inet, cidr, money, ranges, multiranges          ``str``, exactly as printed
enums, composites, domains, anything unknown    ``str``, exactly as printed
=============================================  ==================================

Values Python's date/time types cannot hold -- ``infinity``/``-infinity``,
BC dates, years after 9999, ``24:00:00`` -- stay the text the server printed
(e.g. the string ``'infinity'``), never an error and never a wrong value.

A value a *known* type's loader rejects (which means the session settings are
not what we assume, or a bug) raises :class:`walrelay.errors.DecodeError`
naming the type and OID; it is never turned into text or ``None`` silently.
The one exception: a value whose bytes are not valid UTF-8 (a ``SQL_ASCII``
database stores any bytes) is its bytes in hex (:class:`NotUtf8`), whatever
its type.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Final

import orjson
from psycopg import abc as pg_abc
from psycopg import errors as pg_errors
from psycopg import postgres
from psycopg.abc import AdaptContext, Buffer
from psycopg.adapt import AdaptersMap, Loader
from psycopg.pq import Format
from psycopg.types.array import ArrayLoader

from walrelay.errors import DecodeError

__all__ = [
    "MAX_JSON_DEPTH",
    "SESSION_OPTIONS",
    "SESSION_SETTINGS",
    "Converter",
    "NotUtf8",
    "TypeRegistry",
    "json_depth",
    "json_value",
    "not_utf8",
]

Converter = Callable[[bytes], Any]
"""Text-format column value -> Python value."""

SESSION_SETTINGS: Final = {
    "DateStyle": "ISO",  # ISO dates/timestamps, what the loaders parse
    "TimeZone": "UTC",  # timestamptz printed in UTC
    "IntervalStyle": "iso_8601",  # P1Y2M3DT4H: months, days and time apart
    "extra_float_digits": "3",  # shortest exact float4/float8 (a lower value rounds)
    "bytea_output": "hex",
    "lc_monetary": "C",  # money as '$1,234.56', whatever the database's locale
    "client_encoding": "UTF8",
    "search_path": "pg_catalog",  # regclass & co. printed schema-qualified
}
"""The settings the converters assume, set on every connection whose printed
values walrelay emits (replication stream, snapshot and backfill readers)."""

SESSION_OPTIONS: Final = " ".join(f"-c {k}={v}" for k, v in SESSION_SETTINGS.items())
""":data:`SESSION_SETTINGS` as a libpq ``options`` string."""

MAX_JSON_DEPTH: Final = 500
"""json/jsonb documents nested deeper are emitted as a JSON *string* holding
the document's text: common JSON parsers refuse deep nesting (orjson at 1024
levels, Python's json near 1000, Jackson at 1000), so a consumer could not
read the event at all."""

_TEXT: Final = Format.TEXT

# OIDs of the built-in types this module treats specially.
INTERVAL_OID: Final = 1186
JSON_OID: Final = 114
JSONB_OID: Final = 3802
_DATE_OID: Final = 1082
_TIME_OID: Final = 1083
_TIMETZ_OID: Final = 1266
_TIMESTAMP_OID: Final = 1114
_TIMESTAMPTZ_OID: Final = 1184
_DATETIME_OIDS: Final = frozenset(
    {_DATE_OID, _TIME_OID, _TIMETZ_OID, _TIMESTAMP_OID, _TIMESTAMPTZ_OID}
)
_AS_TEXT_NAMES: Final = ("inet", "cidr", "interval")  # kept as text

_INFINITIES: Final = (b"infinity", b"-infinity")
_DIGITS: Final = frozenset(b"0123456789")
_OPEN: Final = frozenset(b"[{")
_CLOSE: Final = frozenset(b"]}")
_QUOTE: Final = ord('"')
_BACKSLASH: Final = ord("\\")


def _text_loader() -> type[pg_abc.Loader]:
    cls = postgres.adapters.get_loader(0, _TEXT)  # what psycopg uses for unknown OIDs
    if cls is None:  # pragma: no cover - psycopg always has it
        raise RuntimeError("psycopg has no text loader")
    return cls


_TextLoader: Final = _text_loader()


def json_depth(data: bytes) -> int:
    """Deepest nesting of arrays/objects in a JSON text (brackets in strings skipped)."""
    depth = deepest = 0
    in_string = escaped = False
    for b in data:
        if in_string:
            if escaped:
                escaped = False
            elif b == _BACKSLASH:
                escaped = True
            elif b == _QUOTE:
                in_string = False
        elif b == _QUOTE:
            in_string = True
        elif b in _OPEN:
            depth += 1
            deepest = max(deepest, depth)
        elif b in _CLOSE:
            depth -= 1
    return deepest


def json_value(data: Buffer) -> orjson.Fragment | str:
    """A json/jsonb value as PostgreSQL printed it, ready for orjson.

    The document's own text is valid JSON (PostgreSQL checked it), so it is
    spliced into the output unparsed: numbers keep every digit (no double on
    the way), duplicate keys of ``json`` stay, nothing deep is recursed into.
    Raw CR/LF can only be whitespace between tokens (PostgreSQL rejects them
    unescaped inside strings), so they become spaces: an event stays one line.
    A document nested deeper than :data:`MAX_JSON_DEPTH` becomes a JSON
    string of its text (see there). The C encoder (``_speedups.c``, kind
    ``j``) writes the same bytes.
    """
    raw = bytes(data)
    text = raw.decode()  # strict UTF-8, as for text columns
    if raw.count(b"[") + raw.count(b"{") > MAX_JSON_DEPTH and json_depth(raw) > MAX_JSON_DEPTH:
        return text
    if b"\n" in raw or b"\r" in raw:
        raw = raw.replace(b"\n", b" ").replace(b"\r", b" ")
    return orjson.Fragment(raw)


class _JsonLoader(Loader):
    """json/jsonb (and, through the array loaders, json[]/jsonb[]) as JSON text."""

    def load(self, data: Buffer) -> Any:
        return json_value(data)


def _out_of_python_range(oid: int, data: Buffer) -> bool:
    """True for date/time text that is valid in PostgreSQL but not in Python."""
    raw = bytes(data)
    if raw in _INFINITIES or raw.endswith(b" BC"):
        return True
    if oid in (_TIME_OID, _TIMETZ_OID):
        return raw.startswith(b"24:")
    # ISO dates start with a 4-digit year; five digits mean a year after 9999.
    return len(raw) > 5 and all(b in _DIGITS for b in raw[:5])


class _DateTimeLoader(Loader):
    """psycopg's C date/time loader, keeping unrepresentable values as text.

    Subclassed once per base OID (``inner_oid``) because psycopg's C loader
    classes cannot be subclassed.
    """

    inner_oid: int = 0

    def __init__(self, oid: int, context: AdaptContext | None = None) -> None:
        super().__init__(oid, context)
        inner = postgres.adapters.get_loader(self.inner_oid, _TEXT)
        if inner is None:  # pragma: no cover - psycopg always has these
            raise RuntimeError(f"psycopg has no text loader for oid {self.inner_oid}")
        self._inner = inner(self.inner_oid, context).load
        self.fast_load: Converter = self._inner

    def load(self, data: Buffer) -> Any:
        try:
            return self._inner(data)
        except pg_errors.DataError:
            if _out_of_python_range(self.inner_oid, data):
                return bytes(data).decode()
            raise


_datetime_loader_classes: dict[int, type[_DateTimeLoader]] = {}


def _datetime_loader(oid: int) -> type[_DateTimeLoader]:
    cls = _datetime_loader_classes.get(oid)
    if cls is None:
        cls = type(f"_DateTimeLoader{oid}", (_DateTimeLoader,), {"inner_oid": oid})
        _datetime_loader_classes[oid] = cls
    return cls


# Dynamically made classes are cached: psycopg's own array loaders do the
# same, because classes deriving from C types are never garbage-collected.
_array_loader_classes: dict[tuple[int, bytes], type[pg_abc.Loader]] = {}


def _array_loader(element_oid: int, delimiter: bytes) -> type[pg_abc.Loader]:
    cls = _array_loader_classes.get((element_oid, delimiter))
    if cls is None:
        attrs = {"base_oid": element_oid, "delimiter": delimiter}
        cls = type(f"_ArrayLoader{element_oid}", (ArrayLoader,), attrs)
        _array_loader_classes[(element_oid, delimiter)] = cls
    return cls


def _keeping_bounds(load: Converter) -> Converter:
    """An array whose lower bound is not 1 prints as ``[0:2]={7,8,9}``: psycopg
    would drop the bounds, so such a value stays PostgreSQL's text."""

    def convert(data: bytes) -> Any:
        if data[:1] == b"[":
            return data.decode()
        return load(data)

    return convert


class NotUtf8(str):
    """A value whose bytes are not valid UTF-8 (only a ``SQL_ASCII`` database
    holds such), losslessly: ``\\x`` and the bytes in hex, as PostgreSQL
    prints a bytea (``bytes.fromhex(value[2:])`` gives them back). A string
    like any other to JSON; the envelope lists such columns in ``not_utf8``,
    which tells it from a text that merely looks like this."""

    __slots__ = ()


def not_utf8(data: Buffer) -> NotUtf8:
    """``data`` as a :class:`NotUtf8` value."""
    return NotUtf8("\\x" + bytes(data).hex())


def _is_utf8(data: Buffer) -> bool:
    try:
        bytes(data).decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


def _guarded(load: Converter, oid: int, name: str) -> Converter:
    def convert(data: bytes) -> Any:
        try:
            return load(data)
        except Exception as exc:
            if not _is_utf8(data):
                return not_utf8(data)  # a SQL_ASCII database's bytes
            if isinstance(exc, DecodeError):
                raise
            raise DecodeError(
                f"cannot convert a value of type {name} (oid {oid}) "
                f"from pgoutput's text format: {type(exc).__name__}: {exc}",
                fix=f"the replication session must use {SESSION_OPTIONS}; "
                "otherwise report this value as a bug",
            ) from exc

    return convert


class TypeRegistry:
    """Converters from pgoutput text values to Python values, by type OID.

    ``converter(oid)`` is the safe one: it returns the value or raises
    :class:`~walrelay.errors.DecodeError`. ``fast_converter(oid)`` is the bare
    psycopg loader for the hot path: it may raise anything, or fail on values
    the safe converter handles (``'infinity'``), so a caller must redo the
    value with ``converter(oid)`` when it raises (the envelope builder converts
    whole rows that way). Both are cached per OID; OIDs never seen before
    become text.

    Custom types announced by pgoutput Type messages (enums, composites,
    domains, their arrays) are text unless :meth:`register` says otherwise.
    :attr:`version` changes on every registration, so callers caching
    converters know when to look again.
    """

    def __init__(self) -> None:
        adapters = AdaptersMap(postgres.adapters)
        for tname in _AS_TEXT_NAMES:
            adapters.register_loader(tname, _TextLoader)
        for info in postgres.types:
            # Range and multirange objects are not JSON: keep the text.
            if info.name.endswith("range"):
                adapters.register_loader(info.oid, _TextLoader)
        adapters.register_loader(JSON_OID, _JsonLoader)
        adapters.register_loader(JSONB_OID, _JsonLoader)
        for oid in _DATETIME_OIDS:
            adapters.register_loader(oid, _datetime_loader(oid))
        self._adapters = adapters
        self._names: dict[int, str] = {}
        self._arrays: set[int] = set()
        for info in postgres.types:
            self._names[info.oid] = info.name
            if info.array_oid:
                self._names[info.array_oid] = f"{info.name}[]"
                self._arrays.add(info.array_oid)
        self._safe: dict[int, Converter] = {}
        self._fast: dict[int, Converter] = {}
        self._registered: set[int] = set()
        self._version = 0

    @property
    def version(self) -> int:
        """Bumped by :meth:`register`; converters cached by callers are stale then."""
        return self._version

    def is_registered(self, oid: int) -> bool:
        """True for a type :meth:`register` described (never loaded as built in)."""
        return oid in self._registered

    def type_name(self, oid: int) -> str:
        """The type's name (``'int4'``, ``'_mood'``, ...) or ``'oid <n>'`` if unknown."""
        return self._names.get(oid) or f"oid {oid}"

    def converter(self, oid: int) -> Converter:
        """Safe converter for ``oid``: value or :class:`~walrelay.errors.DecodeError`."""
        conv = self._safe.get(oid)
        if conv is None:
            self._load(oid)
            conv = self._safe[oid]
        return conv

    def fast_converter(self, oid: int) -> Converter:
        """Hot-path converter: on *any* exception, use :meth:`converter` instead."""
        conv = self._fast.get(oid)
        if conv is None:
            self._load(oid)
            conv = self._fast[oid]
        return conv

    def convert(self, oid: int, data: bytes | None) -> Any:
        """Convenience: ``None`` (SQL NULL) stays ``None``, anything else is converted."""
        return None if data is None else self.converter(oid)(data)

    def register(
        self,
        oid: int,
        name: str,
        *,
        base_oid: int | None = None,
        element_oid: int | None = None,
        delimiter: str = ",",
    ) -> None:
        """Describe a type that is not built in.

        - plain (e.g. from a pgoutput Type message: an enum or composite):
          values stay text; the name shows up in error messages;
        - ``base_oid``: a domain, converted like its base type;
        - ``element_oid``: an array type whose elements are ``element_oid``
          values (so an enum array becomes a list of strings).
        """
        if base_oid is not None and element_oid is not None:
            raise ValueError("a type is a domain (base_oid) or an array (element_oid), not both")
        loader: type[pg_abc.Loader]
        if base_oid is not None:
            loader = self._adapters.get_loader(base_oid, _TEXT) or _TextLoader
            if base_oid in self._arrays:
                self._arrays.add(oid)
        elif element_oid is not None:
            loader = _array_loader(element_oid, delimiter.encode())
            self._arrays.add(oid)
        else:
            loader = _TextLoader
        self._adapters.register_loader(oid, loader)
        self._names[oid] = name
        self._registered.add(oid)
        # Arrays of this type and domains over it may have cached its old loader.
        self._safe.clear()
        self._fast.clear()
        self._version += 1

    def _load(self, oid: int) -> None:
        cls = self._adapters.get_loader(oid, _TEXT) or _TextLoader
        loader = cls(oid, self._adapters)
        load: Converter = loader.load
        fast: Converter = getattr(loader, "fast_load", load)
        if oid in self._arrays:
            load = _keeping_bounds(load)
            fast = _keeping_bounds(fast)
        self._fast[oid] = fast
        self._safe[oid] = _guarded(load, oid, self.type_name(oid))
