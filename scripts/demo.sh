#!/usr/bin/env bash
# The README's "run it" command: a throwaway PostgreSQL, a sample workload,
# streamed to stdout and walrelay-demo.jsonl; everything stopped afterwards.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
bash "$ROOT/scripts/bootstrap.sh"
exec "$ROOT/.venv/bin/walrelay" demo "$@"
