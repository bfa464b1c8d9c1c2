#!/usr/bin/env bash
# Installs Debian's chromium for the dashboard test (tests/integration/test_dashboard.py),
# which drives it with Playwright for Python. Playwright's own browser download
# ("playwright install") is never used: the test launches /usr/bin/chromium.
# Idempotent: does nothing when chromium is already there.
set -euo pipefail
if command -v chromium >/dev/null 2>&1 || [ -x /usr/bin/chromium ]; then
  exit 0
fi
if [ "$(id -u)" = 0 ]; then
  echo "install-browser: installing chromium (Debian package)" >&2
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null
else
  echo "install-browser: chromium missing: sudo apt-get install chromium" >&2
  exit 1
fi
