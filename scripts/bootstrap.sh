#!/usr/bin/env bash
# Installs what walrelay needs on a fresh Debian 12 machine: PostgreSQL server
# binaries (if missing) and a virtualenv in .venv with walrelay and, with
# "test", the test tools. Sourced by demo.sh and test.sh.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
EXTRA="${1:-}"

have_pg() {
  command -v initdb >/dev/null 2>&1 && return 0
  ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1
}
if ! have_pg; then
  if [ "$(id -u)" = 0 ]; then
    echo "bootstrap: installing PostgreSQL server packages" >&2
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql >/dev/null
  else
    echo "bootstrap: PostgreSQL server binaries missing: sudo apt-get install postgresql" >&2
    exit 1
  fi
fi

PY="${PYTHON:-python3}"
if [ ! -x "$ROOT/.venv/bin/python" ]; then
  "$PY" -m venv "$ROOT/.venv"
fi
STAMP="$ROOT/.venv/.walrelay-installed${EXTRA:+-$EXTRA}"
# Reinstall when the project's metadata or its C fast paths changed, or when
# they are not built (pip compiles src/walrelay/_speedups.c in place).
if [ ! -f "$STAMP" ] || [ "$ROOT/pyproject.toml" -nt "$STAMP" ] \
  || [ "$ROOT/src/walrelay/_speedups.c" -nt "$STAMP" ] \
  || ! ls "$ROOT"/src/walrelay/_speedups.*.so >/dev/null 2>&1; then
  "$ROOT/.venv/bin/pip" install -q --upgrade pip >/dev/null
  if [ -n "$EXTRA" ]; then
    "$ROOT/.venv/bin/pip" install -q -e "$ROOT[$EXTRA]"
  else
    "$ROOT/.venv/bin/pip" install -q -e "$ROOT"
  fi
  touch "$STAMP"
fi
# Byte-compile walrelay's own modules (an editable install does not), so that
# no start pays for compiling them, even with PYTHONDONTWRITEBYTECODE set.
"$ROOT/.venv/bin/python" -m compileall -q "$ROOT/src/walrelay" >/dev/null
