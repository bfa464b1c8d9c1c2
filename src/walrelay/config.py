"""walrelay.yaml: typed, validated, secrets kept out of repr and logs."""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from psycopg.conninfo import conninfo_to_dict, make_conninfo
from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)

from walrelay.errors import ConfigError

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h)?\s*$")
_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, None: 1.0}
_SIZE = re.compile(r"^\s*(\d+)\s*(B|kB|KB|KiB|MB|MiB|GB|GiB)?\s*$")
_SIZE_UNITS = {
    None: 1,
    "B": 1,
    "kB": 1024,
    "KB": 1024,
    "KiB": 1024,
    "MB": 1024**2,
    "MiB": 1024**2,
    "GB": 1024**3,
    "GiB": 1024**3,
}


def _duration(value: Any) -> Any:
    if isinstance(value, str):
        m = _DURATION.match(value)
        if not m:
            raise ValueError(f"not a duration: {value!r} (use seconds, or '500ms', '30s', '5m')")
        return float(m.group(1)) * _UNITS[m.group(2)]
    return value


def _size(value: Any) -> Any:
    if isinstance(value, str):
        m = _SIZE.match(value)
        if not m:
            raise ValueError(f"not a size: {value!r} (use bytes, or '64MiB', '1GB')")
        return int(m.group(1)) * _SIZE_UNITS[m.group(2)]
    return value


Seconds = Annotated[float, BeforeValidator(_duration), Field(ge=0)]
Bytes = Annotated[int, BeforeValidator(_size), Field(gt=0)]
_QUALIFIED = re.compile(r"^[^.\s]+\.[^.\s]+$")


def qualify(table: str) -> str:
    """'orders' -> 'public.orders'; 'app.orders' stays."""
    table = table.strip()
    return table if "." in table else f"public.{table}"


def masked_dsn(dsn: str) -> str:
    """The DSN with any password replaced, safe for logs and errors."""
    try:
        params = conninfo_to_dict(dsn)
    except Exception:
        return "<unparseable dsn>"
    if "password" in params:
        params["password"] = "***"
    return make_conninfo(**{k: str(v) for k, v in params.items() if v is not None})


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class BackoffConfig(_Model):
    initial: Seconds = 0.2
    multiplier: float = Field(default=2.0, ge=1.0)
    max: Seconds = 30.0


class SourceConfig(_Model):
    dsn: SecretStr = Field(description="libpq connection string or URL")
    slot: str = "walrelay"
    publication: str = "walrelay_pub"
    tables: list[str] = Field(min_length=1)
    create_slot: bool = True
    create_publication: bool = True
    key_columns: dict[str, list[str]] = Field(default_factory=dict)
    status_interval: Seconds = 10.0
    streaming: bool = True
    reconnect: BackoffConfig = BackoffConfig(initial=0.5, max=30.0)
    spill_dir: str | None = None
    spill_memory_bytes: Bytes = 8 * 1024 * 1024

    @field_validator("tables")
    @classmethod
    def _qualify_tables(cls, v: list[str]) -> list[str]:
        out = [qualify(t) for t in v]
        for t in out:
            if not _QUALIFIED.match(t):
                raise ValueError(f"table {t!r} must be 'schema.name'")
        if len(set(out)) != len(out):
            raise ValueError("tables lists a table twice")
        return out

    @field_validator("key_columns")
    @classmethod
    def _qualify_keys(cls, v: dict[str, list[str]]) -> dict[str, list[str]]:
        return {qualify(k): cols for k, cols in v.items()}

    @field_validator("slot", "publication")
    @classmethod
    def _name(cls, v: str) -> str:
        if not re.match(r"^[a-z0-9_]{1,63}$", v):
            raise ValueError(
                f"{v!r}: slot and publication names must be 1-63 chars of a-z, 0-9 and _"
            )
        return v

    @property
    def dsn_value(self) -> str:
        return self.dsn.get_secret_value()

    @property
    def masked_dsn(self) -> str:
        return masked_dsn(self.dsn_value)


class FileSinkConfig(_Model):
    type: Literal["file"]
    path: str
    fsync: Literal["always", "batch", "interval", "never"] = "batch"
    fsync_interval: Seconds = 1.0
    batch_size: int = Field(default=2000, gt=0)


class StdoutSinkConfig(_Model):
    type: Literal["stdout"]
    batch_size: int = Field(default=2000, gt=0)


class WebhookSinkConfig(_Model):
    type: Literal["webhook"]
    url: SecretStr
    secret_env: str | None = None
    secret_file: str | None = None
    timeout: Seconds = 10.0
    headers: dict[str, str] = Field(default_factory=dict)
    max_connections: int = Field(default=64, gt=0)
    batch_size: int = Field(default=1, gt=0)

    def secret(self) -> str | None:
        """The signing secret, read from the environment or a file at start-up."""
        if self.secret_env:
            value = os.environ.get(self.secret_env)
            if not value:
                raise ConfigError(
                    f"webhook secret: environment variable {self.secret_env} is not set",
                    fix=f"export {self.secret_env}=whsec_... or remove secret_env",
                )
            return value
        if self.secret_file:
            try:
                return Path(self.secret_file).read_text().strip()
            except OSError as e:
                raise ConfigError(
                    f"webhook secret: cannot read secret_file {self.secret_file}: {e.strerror}",
                    fix="point secret_file at a readable file holding the secret",
                ) from None
        return None


SinkConfig = Annotated[
    FileSinkConfig | StdoutSinkConfig | WebhookSinkConfig, Field(discriminator="type")
]

OPS = ("insert", "update", "delete", "truncate", "message")


class DestinationConfig(_Model):
    name: str
    sink: SinkConfig
    tables: list[str] | None = None
    ops: list[Literal["insert", "update", "delete", "truncate", "message"]] | None = None
    max_in_flight: int | None = Field(default=None, gt=0)
    buffer_bytes: Bytes = 64 * 1024 * 1024
    retry: BackoffConfig = BackoffConfig()

    @field_validator("name")
    @classmethod
    def _name(cls, v: str) -> str:
        if not re.match(r"^[A-Za-z0-9_.-]{1,64}$", v):
            raise ValueError(f"destination name {v!r}: use 1-64 chars of A-Z a-z 0-9 _ . -")
        return v

    @field_validator("tables")
    @classmethod
    def _qualify_tables(cls, v: list[str] | None) -> list[str] | None:
        return None if v is None else [qualify(t) for t in v]

    def effective_max_in_flight(self) -> int:
        if self.max_in_flight is not None:
            return self.max_in_flight
        return 32 if self.sink.type == "webhook" else self.sink.batch_size


class Config(_Model):
    source: SourceConfig
    destinations: list[DestinationConfig] = Field(min_length=1)
    shutdown_timeout: Seconds = 30.0
    log_level: Literal["debug", "info", "warning", "error"] = "info"

    @model_validator(mode="after")
    def _check(self) -> Config:
        names = [d.name for d in self.destinations]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(f"destination names must be unique; repeated: {', '.join(dupes)}")
        source_tables = set(self.source.tables)
        for d in self.destinations:
            for t in d.tables or []:
                if t not in source_tables:
                    raise ValueError(
                        f"destination {d.name!r} lists table {t!r}, which is not in "
                        f"source.tables; add it there or remove it here"
                    )
        return self


def _format_validation(e: ValidationError, where: str) -> str:
    lines = []
    for err in e.errors():
        loc = ".".join(str(p) for p in err["loc"]) or "(top level)"
        msg = err["msg"]
        if err["type"] == "extra_forbidden":
            msg = "unknown setting (typo?)"
        lines.append(f"{loc}: {msg}")
    return f"invalid config {where}: " + "; ".join(lines)


def parse_config(data: Any, where: str = "") -> Config:
    if not isinstance(data, dict):
        raise ConfigError(
            f"invalid config {where}: expected a mapping with 'source' and 'destinations'",
            fix="see the config reference in README.md",
        )
    try:
        return Config.model_validate(data)
    except ValidationError as e:
        raise ConfigError(
            _format_validation(e, where), fix="see the config reference in README.md"
        ) from None


def load_config(path: str | os.PathLike[str]) -> Config:
    p = Path(path)
    try:
        text = p.read_text()
    except OSError as e:
        raise ConfigError(
            f"cannot read config {p}: {e.strerror}", fix="pass --config with a readable file"
        ) from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as e:
        raise ConfigError(f"config {p} is not valid YAML: {e}") from None
    return parse_config(data, str(p))
