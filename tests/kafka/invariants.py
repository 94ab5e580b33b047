"""What every fault test checks at its end, in one place: ``tollgate audit verify`` on the cluster's
log (the chain unbroken, every checkpoint signed by the ledger's key, every capture its priced usage,
and, given a gateway, its balances the log's)."""

from __future__ import annotations

import json
import os
import subprocess
import time
from typing import Any

from tests.support import tollgate


def audit_verify(bootstrap: str, gateway: str | None = None, admin_token: str | None = None) -> dict[str, Any]:
    """The verification's JSON report, after the ledger's last checkpoint; fails the test on a
    non-zero exit or a report that is not ok."""
    time.sleep(2)  # the last checkpoint
    command = [*tollgate, "audit", "verify", "--kafka", bootstrap]
    command += ["--public-key", os.environ["TOLLGATE_LEDGER_SIGNING_KEY_FILE"], "--json"]
    if gateway is not None:
        assert admin_token is not None, "the gateway's balances are read with the admin token"
        command += ["--gateway", gateway, "--admin-token", admin_token]
    result = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
    report: dict[str, Any] = json.loads(result.stdout)
    assert report["ok"], report
    return report
