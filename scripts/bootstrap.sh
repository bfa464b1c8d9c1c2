#!/usr/bin/env bash
# Installs what walrelay needs on a fresh Debian 12 machine: PostgreSQL server
# binaries (if missing) and a virtualenv in .venv with walrelay and, with
# "test", the test tools. Sourced by demo.sh and test.sh.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
EXTRA="${1:-}"

apt_install() {
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" >/dev/null
}

have_pg() {
  command -v initdb >/dev/null 2>&1 && return 0
  ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1
}
if ! have_pg; then
  if [ "$(id -u)" = 0 ]; then
    echo "bootstrap: installing PostgreSQL server packages" >&2
    apt_install postgresql
  else
    echo "bootstrap: PostgreSQL server binaries missing: sudo apt-get install postgresql" >&2
    exit 1
  fi
fi

PY="${PYTHON:-python3}"

# A C compiler and the Python headers build walrelay's C fast paths
# (src/walrelay/_speedups.c); without them walrelay still runs, on its
# pure-Python paths, and says so when it starts.
have_headers() {
  "$PY" -c 'import os, sysconfig, sys; sys.exit(not os.path.exists(os.path.join(sysconfig.get_paths()["include"], "Python.h")))'
}
if { ! command -v cc >/dev/null 2>&1 || ! have_headers; } && [ "$(id -u)" = 0 ]; then
  echo "bootstrap: installing gcc and the Python headers for walrelay's C speedups" >&2
  apt_install gcc python3-dev
fi
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
