"""Where the HTTP API token comes from, and how requests prove they have it.

The rule: ``/healthz`` and ``/metrics`` are open (they carry no row data and
no secrets); everything else -- ``/api/*`` and the dashboard -- needs the
token, also on loopback (any local process or a web page doing DNS
rebinding could reach a loopback port; a token stops both).

The token is, in order:

1. the environment variable named by ``http.token_env``;
2. the contents of ``http.token_file``;
3. otherwise walrelay generates a random one (256 bits) and keeps it in
   ``$XDG_STATE_HOME/walrelay/<slot>-<port>.token`` (default
   ``~/.local/state``), directory 0700 and file 0600, reused across restarts.
   Only the *path* is logged, never the token: logs travel further than the
   process owner's files. ``walrelay status`` reads the same file.

A token file (given or generated) that group or others may read is refused
with the ``chmod 600`` that fixes it: a token others may know protects nothing.

A request proves it has the token with ``Authorization: Bearer <token>``
(scripts, ``walrelay status``) or with the session cookie the dashboard's
login form sets: HttpOnly, SameSite=Strict, holding a digest of the token
rather than the token itself. Comparisons are constant-time.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import secrets
import stat
from pathlib import Path

from walrelay.config import HttpConfig
from walrelay.errors import ConfigError

__all__ = ["default_token_file", "resolve_token", "session_value", "token_matches"]

COOKIE = "walrelay_session"


def default_token_file(slot: str, port: int) -> Path:
    base = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return Path(base) / "walrelay" / f"{slot}-{port}.token"


def _read(path: Path) -> str:
    with open(path) as f:
        mode = os.fstat(f.fileno()).st_mode
        if mode & 0o077:
            raise ConfigError(
                f"http token file {path} can be read by other users"
                f" (mode {stat.S_IMODE(mode):04o}); walrelay will not use a token others may know",
                fix=f"chmod 600 {path} (and make a new token if others may have read it)",
            )
        token = f.read().strip()
    if not token:
        raise ConfigError(f"http token file {path} is empty", fix="put a token in it or delete it")
    return token


def resolve_token(cfg: HttpConfig, slot: str, *, create: bool) -> tuple[str, str]:
    """``(token, where it came from)``. ``create``: generate the default file if missing.

    Raises :class:`ConfigError` when the configured source is missing, or,
    with ``create=False``, when there is no token to be found.
    """
    if cfg.token_env:
        value = os.environ.get(cfg.token_env)
        if not value:
            raise ConfigError(
                f"http.token_env: environment variable {cfg.token_env} is not set",
                fix=f"export {cfg.token_env}=$(openssl rand -hex 32)",
            )
        return value.strip(), f"${cfg.token_env}"
    path = Path(cfg.token_file) if cfg.token_file else default_token_file(slot, cfg.port)
    try:
        return _read(path), str(path)
    except FileNotFoundError:
        if not create:
            raise ConfigError(
                f"no API token: {path} does not exist (is walrelay running as another user?)",
                fix="set http.token_env, or run as the user that runs walrelay",
            ) from None
    except OSError as e:
        raise ConfigError(f"cannot read the API token file {path}: {e.strerror}") from None
    token = secrets.token_urlsafe(32)
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:  # another walrelay made it just now
        return _read(path), str(path)
    with os.fdopen(fd, "w") as f:
        f.write(token + "\n")
    return token, str(path)


def session_value(token: str) -> str:
    """What the session cookie holds: a digest of the token, not the token."""
    return hashlib.sha256(b"walrelay-session\0" + token.encode()).hexdigest()


def token_matches(given: str, token: str) -> bool:
    return hmac.compare_digest(given.encode(), token.encode())
