"""The shipped Prometheus rules file: valid, and its rule unit tests pass
(``promtool check rules`` / ``promtool test rules``, Debian's prometheus)."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

RULES_DIR = Path(__file__).resolve().parents[2] / "deploy" / "prometheus"


def _promtool(*args: str) -> subprocess.CompletedProcess[str]:
    promtool = shutil.which("promtool")
    assert promtool, "promtool missing: bash scripts/servers/install.sh prometheus"
    return subprocess.run(
        [promtool, *args], cwd=RULES_DIR, capture_output=True, text=True, timeout=60
    )


def test_rules_file_is_valid() -> None:
    result = _promtool("check", "rules", "walrelay-rules.yml")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout + result.stderr


def test_rule_unit_tests_pass() -> None:
    result = _promtool("test", "rules", "walrelay-rules.test.yml")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout + result.stderr
