"""`tollgate statement` prints a statement as JSON and as CSV that add up, from the embedded store."""

from __future__ import annotations

import csv
import io
import json
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

from projections.usage import UsageStore
from tests.support import capture_posting, charge

month = datetime(2026, 11, 1, tzinfo=UTC)


def test_statement_command_prints_json_and_csv_that_add_up(tmp_path: Path) -> None:
    store = UsageStore(path=tmp_path / "clickhouse")
    rows = [
        charge(f"c{i}", month + timedelta(hours=7 * i), model=("sim-chat-small", "sim-tts")[i % 2]) for i in range(50)
    ]
    store.insert(rows, [capture_posting(r) for r in rows])
    store.close()
    command = [sys.executable, "-m", "tollgate", "statement", "--org", "org_a", "--data-dir", str(tmp_path)]
    period = ["--from", "2026-11-01T00:00:00Z", "--to", "2026-11-08T00:00:00Z"]
    inside = sum(r.cost_micros for r in rows if r.created_at < month + timedelta(days=7))
    as_json = subprocess.run([*command, *period], capture_output=True, text=True, check=True, timeout=120)
    body = json.loads(as_json.stdout)
    assert body["charges_micros"] == body["ledger"]["charges_micros"] == inside == body["total_micros"]
    assert sum(line["amount_micros"] for line in body["lines"]) == inside
    as_csv = subprocess.run(
        [*command, *period, "--format", "csv"], capture_output=True, text=True, check=True, timeout=120
    )
    lines = list(csv.DictReader(io.StringIO(as_csv.stdout)))
    assert lines[-1]["unit"] == "total" and int(lines[-1]["amount_micros"]) == inside
    assert sum(int(line["amount_micros"]) for line in lines[:-1]) == inside
    bad = subprocess.run(
        [*command, "--from", "2026-11-08", "--to", "2026-11-01"], capture_output=True, text=True, timeout=120
    )
    assert bad.returncode != 0 and "--from must be before --to" in bad.stderr
