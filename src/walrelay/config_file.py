"""Reading walrelay.yaml into plain data, refusing what would be misread.

Every problem is a :class:`~walrelay.errors.ConfigError` of one line naming
the file, the place and the fix: a file over :data:`MAX_CONFIG_BYTES`
(checked before anything is read), text that is not UTF-8, YAML that does
not parse, a key given twice in one mapping (YAML would keep the last one
silently). Error messages never quote the file's lines: a DSN with its
password may be on them.
"""

from __future__ import annotations

import codecs
import os
from pathlib import Path
from typing import Any

import yaml
import yaml.reader
from yaml.constructor import ConstructorError
from yaml.nodes import MappingNode, Node, ScalarNode

from walrelay.errors import ConfigError

__all__ = ["MAX_CONFIG_BYTES", "read_config_document"]

# A real walrelay.yaml is a few kB; anything near this is a wrong file.
MAX_CONFIG_BYTES = 1024 * 1024
# More aliases than any hand-written config uses; a "billion laughs" document
# would otherwise expand into more objects than memory holds once validated.
MAX_ALIASES = 100

_BOMS = (
    (codecs.BOM_UTF32_LE, "UTF-32"),
    (codecs.BOM_UTF32_BE, "UTF-32"),
    (codecs.BOM_UTF16_LE, "UTF-16"),
    (codecs.BOM_UTF16_BE, "UTF-16"),
)
_TO_UTF8 = "save it as UTF-8 (e.g. iconv -f {enc} -t UTF-8 old.yaml > walrelay.yaml)"


class _DuplicateKey(ConstructorError):
    pass


class _StrictLoader(yaml.SafeLoader):
    """``yaml.SafeLoader`` that refuses a key given twice in one mapping and
    more than :data:`MAX_ALIASES` aliases."""

    _aliases = 0

    def compose_node(self, parent: Node | None, index: Any) -> Node | None:
        if self.check_event(yaml.AliasEvent):
            self._aliases += 1
            if self._aliases > MAX_ALIASES:
                event = self.peek_event()  # type: ignore[no-untyped-call]
                raise ConstructorError(
                    None, None, f"more than {MAX_ALIASES} aliases (*name)", event.start_mark
                )
        return super().compose_node(parent, index)

    def construct_mapping(self, node: MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: dict[Any, int] = {}
        for key_node, _ in node.value:
            if not isinstance(key_node, ScalarNode) or key_node.tag == "tag:yaml.org,2002:merge":
                continue
            key = self.construct_object(key_node, deep=True)
            try:
                first = seen.get(key)
            except TypeError:
                continue  # unhashable: SafeLoader reports it itself
            line = key_node.start_mark.line + 1
            if first is not None:
                raise _DuplicateKey(
                    None,
                    None,
                    f"key {_shown(key)} appears twice in one mapping (lines {first} and {line})",
                    key_node.start_mark,
                )
            seen[key] = line
        return super().construct_mapping(node, deep=deep)


def _shown(key: Any) -> str:
    text = repr(key)
    return text if len(text) <= 60 else text[:57] + "..."


def _read_bytes(path: Path) -> bytes:
    try:
        size = os.stat(path).st_size
        if size > MAX_CONFIG_BYTES:
            raise _too_big(path)
        with open(path, "rb") as f:
            raw = f.read(MAX_CONFIG_BYTES + 1)  # a file still growing is caught here
    except IsADirectoryError:
        raise ConfigError(
            f"config {path} is a directory", fix="pass --config with the YAML file"
        ) from None
    except OSError as e:
        raise ConfigError(
            f"cannot read config {path}: {e.strerror}", fix="pass --config with a readable file"
        ) from None
    if len(raw) > MAX_CONFIG_BYTES:
        raise _too_big(path)
    return raw


def _too_big(path: Path) -> ConfigError:
    return ConfigError(
        f"config {path} is larger than {MAX_CONFIG_BYTES // 1024**2} MiB, the most walrelay reads",
        fix="pass --config with walrelay's YAML file (a real one is a few kB)",
    )


def _decode(raw: bytes, path: Path) -> str:
    for bom, enc in _BOMS:
        if raw.startswith(bom):
            raise ConfigError(f"config {path} is {enc} text", fix=_TO_UTF8.format(enc=enc))
    if b"\x00" in raw:
        raise ConfigError(
            f"config {path} holds NUL bytes (UTF-16 without a byte-order mark, or not text)",
            fix=_TO_UTF8.format(enc="UTF-16"),
        )
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        line = raw[: e.start].count(b"\n") + 1
        raise ConfigError(
            f"config {path} is not UTF-8 text (byte 0x{raw[e.start]:02x} on line {line})",
            fix=_TO_UTF8.format(enc="LATIN1"),
        ) from None


def _where(e: yaml.YAMLError) -> str:
    mark = getattr(e, "problem_mark", None) or getattr(e, "context_mark", None)
    return f" (line {mark.line + 1}, column {mark.column + 1})" if mark is not None else ""


def _unreadable(e: yaml.reader.ReaderError, path: Path) -> ConfigError:
    char = e.character if isinstance(e.character, str) else chr(e.character)
    return ConfigError(
        f"config {path} holds the control character U+{ord(char):04X}, which YAML does not allow",
        fix="remove it (or quote it as an escape such as \\x01 in a double-quoted string)",
    )


def _parse(text: str, path: Path) -> Any:
    try:
        loader = _StrictLoader(text)
    except yaml.reader.ReaderError as e:
        raise _unreadable(e, path) from None
    try:
        return loader.get_single_data()
    except yaml.reader.ReaderError as e:
        raise _unreadable(e, path) from None
    except _DuplicateKey as e:
        raise ConfigError(f"config {path}: {e.problem}", fix="remove one of the two") from None
    except yaml.MarkedYAMLError as e:
        # problem only: str(e) would quote the offending line, maybe a password on it
        what = " ".join(str(e.problem or e.context or "syntax error").split())
        raise ConfigError(
            f"config {path} is not valid YAML: {what}{_where(e)}",
            fix="correct the YAML at that place",
        ) from None
    except yaml.YAMLError as e:
        raise ConfigError(f"config {path} is not valid YAML: {type(e).__name__}") from None
    except RecursionError:
        raise ConfigError(
            f"config {path} is nested too deeply to be a walrelay config",
            fix="pass --config with walrelay's YAML file",
        ) from None
    except (ValueError, OverflowError) as e:
        # e.g. a timestamp such as 2024-02-30 that PyYAML builds a date from
        raise ConfigError(
            f"config {path} holds a value YAML cannot build: {' '.join(str(e).split())}",
            fix="quote the value to keep it as a string",
        ) from None
    finally:
        loader.dispose()


def read_config_document(path: str | os.PathLike[str]) -> Any:
    """The YAML document at ``path`` as plain data, or a one-line ConfigError."""
    p = Path(path)
    return _parse(_decode(_read_bytes(p), p), p)
