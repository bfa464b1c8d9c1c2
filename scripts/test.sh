#!/usr/bin/env bash
# The README's test command, also what CI runs: install, lint, type-check, test.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
bash scripts/bootstrap.sh test
bash scripts/servers/install.sh all
bash scripts/install-browser.sh
V=.venv/bin
echo "== ruff"; $V/ruff check src tests bench; $V/ruff format --check src tests bench
echo "== mypy (src/ strict, tests/ relaxed: see pyproject.toml)"; $V/mypy
echo "== import layers"; $V/lint-imports
echo "== pytest"; $V/pytest -q -p no:cacheprovider "$@"
