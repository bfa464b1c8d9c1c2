"""``walrelay doctor --sync-config``: every node reviewed, and sequences of
synced tables that can give the same values on two nodes flagged with the fix."""

from __future__ import annotations

import json
import re
from pathlib import Path

import yaml
from click.testing import CliRunner

from tests.integration.sync_support import SyncEnv, sync_clusters, sync_env
from walrelay.cli.main import main

__all__ = ["sync_clusters", "sync_env"]


def doctor(config: Path) -> tuple[int, dict[str, list[dict[str, object]]]]:
    out = CliRunner().invoke(
        main, ["doctor", "--sync-config", str(config), "--json", "--no-record"]
    )
    report = json.loads(out.stdout)
    assert report["unreachable"] == {}
    return out.exit_code, {n: r["findings"] for n, r in report["nodes"].items()}


def test_doctor_flags_overlapping_sequences_and_its_fix_works(
    sync_env: SyncEnv, tmp_path: Path
) -> None:
    env = sync_env
    config = tmp_path / "sync.yaml"
    nodes = {n: {"dsn": env.dsns[n]} for n in ("a", "b")}
    config.write_text(
        yaml.safe_dump({"sync": {"name": env.name, "nodes": nodes, "tables": ["public.items"]}})
    )
    for node in ("a", "b"):
        env.execute(node, "alter table items add column serial_no bigserial")
    env.execute("b", "select nextval('items_serial_no_seq') from generate_series(1, 7)")
    code, findings = doctor(config)
    assert code in (0, 1, 3, 4)
    overlaps = {
        n: [f for f in fs if f["code"] == "sync_sequence_overlap"] for n, fs in findings.items()
    }
    assert [len(v) for v in overlaps.values()] == [1, 1]
    finding = overlaps["a"][0]
    assert finding["severity"] == "warn" and finding["object"] == "public.items.serial_no"
    assert "node a" in str(finding["message"]) and "node b" in str(finding["message"])
    fix = str(finding["fix"])
    # Past every value either node gave (b: 7), node a gets the evens, b the odds.
    statements = dict(re.findall(r"on node (\w+): (ALTER [^;(]+?)(?:;| \()", fix))
    assert statements == {
        "a": "ALTER SEQUENCE items_serial_no_seq INCREMENT BY 2 START WITH 8 RESTART WITH 8",
        "b": "ALTER SEQUENCE items_serial_no_seq INCREMENT BY 2 START WITH 9 RESTART WITH 9",
    }
    for node, statement in statements.items():
        env.execute(node, statement)
    _, findings = doctor(config)
    assert not [f for fs in findings.values() for f in fs if f["code"] == "sync_sequence_overlap"]
    values = {n: env.execute(n, "select nextval('items_serial_no_seq')")[0][0] for n in "ab"}
    assert values == {"a": 8, "b": 9}
    # The plain doctor (one database) is unchanged, and the options exclude each other.
    bad = CliRunner().invoke(main, ["doctor", "--sync-config", str(config), "--dsn", env.dsns["a"]])
    assert bad.exit_code == 2 and "exclude each other" in bad.stderr
