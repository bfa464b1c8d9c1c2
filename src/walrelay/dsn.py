"""PostgreSQL connection strings in messages: masked, checked, one line.

libpq's own errors may quote the connection string (``missing "=" after
"PW"`` quotes a fragment of a password with a space in it), so no message
built here ever contains the text of a DSN that does not parse, and the
password of one that does is replaced.
"""

from __future__ import annotations

import psycopg
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from walrelay.errors import ConfigError

__all__ = [
    "DSN_HINT",
    "connect_error",
    "dsn_problem",
    "masked_dsn",
    "one_line",
    "scrub",
    "speaking_utf8",
]

DSN_HINT = (
    "a value with spaces or quotes must be single-quoted in key=value form"
    " (password='a b'; escape ' and \\ with \\), and percent-encoded in a URL (a%20b)"
)


def masked_dsn(dsn: str) -> str:
    """The DSN with any password replaced, safe for logs and errors."""
    try:
        params = conninfo_to_dict(dsn)
    except Exception:
        return "<unparsable dsn>"
    if "password" in params:
        params["password"] = "***"
    shown = make_conninfo(**{k: str(v) for k, v in params.items() if v is not None})
    return shown if shown.isprintable() else repr(shown)[1:-1]


def dsn_problem(dsn: str) -> str | None:
    """Why ``dsn`` cannot be used -- in our words, quoting none of it -- or None."""
    if not dsn.isprintable():
        return "holds a control character (a line break, tab, NUL ...)"
    try:
        params = conninfo_to_dict(dsn)
    except psycopg.Error:
        return (
            "not a valid libpq connection string or URL"
            " (details hidden: they may quote the password)"
        )
    except Exception:
        return "not a valid libpq connection string or URL"
    for host in str(params.get("host") or "").split(","):
        if host and not host.startswith("/") and not _encodable_host(host):
            return f"host {host!r} is not a valid host name"
    return None


def _encodable_host(host: str) -> bool:
    try:
        host.encode("idna")  # what the resolver will do with it
    except UnicodeError:
        return False
    return True


def one_line(message: str) -> str:
    """``message`` with its line breaks and runs of blanks folded to one space."""
    return " ".join(message.split())


def scrub(message: str, dsn: str) -> str:
    """``message`` as one line with the DSN's password (or, if the DSN does not
    parse, anything quoted from it) removed."""
    try:
        password = conninfo_to_dict(dsn).get("password")
    except Exception:
        if "password" in dsn or "@" in dsn or "'" in dsn:
            return "the connection string does not parse (details hidden: it may hold a password)"
        password = None
    if password:
        message = message.replace(str(password), "***")
    return one_line(message)


def connect_error(what: str, dsn: str, error: BaseException, *, fix: str) -> ConfigError:
    """One line for a failed connection to ``what``: the masked DSN, libpq's
    reason without the password, and ``fix``."""
    return ConfigError(
        f"cannot connect to {what} ({masked_dsn(dsn)}): {scrub(str(error), dsn)}", fix=fix
    )


_REFUSED_FOR_GOOD = (
    "authentication failed",
    "no pg_hba.conf entry",
    "does not exist",  # the database or the role
    "permission denied",
    "invalid connection option",
    "invalid dsn",
)


def refused_for_good(error: BaseException) -> bool:
    """Whether a failed connection is the configuration's fault (a password, a
    database or role name, pg_hba), which no retry will mend; not a server that
    is down or restarting."""
    text = str(error).lower()
    return any(reason in text for reason in _REFUSED_FOR_GOOD)


def speaking_utf8(dsn: str) -> str:
    """``dsn`` with ``client_encoding=UTF8`` unless it names an encoding itself.

    walrelay reads and writes UTF-8 on every connection: without it, a
    ``SQL_ASCII`` database makes psycopg return text as bytes (so
    ``current_setting('wal_level')`` read ``b'logical'``), and any other
    encoding is converted to UTF-8 by the server, which knows it best.
    """
    try:
        if "client_encoding" in conninfo_to_dict(dsn):
            return dsn
        return make_conninfo(dsn, client_encoding="UTF8")
    except psycopg.Error:
        return dsn  # refused at load (dsn_problem); never reached with a loaded config
