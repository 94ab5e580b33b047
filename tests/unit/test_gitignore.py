"""What the README's commands leave in the working tree is ignored by git: the data directory of
`bin/dev`, the public key the audit line saves (`ledger.pem`) and what a benchmark writes (its JSON and
its chart: the README shows a dated copy of one)."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

repo = Path(__file__).resolve().parents[2]


@pytest.mark.skipif(shutil.which("git") is None or not (repo / ".git").exists(), reason="not a git checkout")
@pytest.mark.parametrize(
    "path",
    [
        "ledger.pem",
        ".tollgate/clickhouse-server/db/x",
        ".tollgate/admin-token",
        "bench/results/compare-latest.json",
        "bench/results/compare-latest.png",
    ],
)
def test_files_the_readme_commands_write_are_ignored(path: str) -> None:
    assert subprocess.run(["git", "check-ignore", "-q", path], cwd=repo).returncode == 0, f"{path} is not ignored"
