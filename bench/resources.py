"""What time-metered resources cost the ledger role: --gpus GPU instances running at once (over
--orgs organizations, each granted plenty) are started in one decide_batch, then the role's clock
charges --intervals intervals of them (expire_due: decide, evolve, chain and encode each
ResourceCharged). In process, on the embedded log; no broker.

    .venv/bin/python bench/resources.py
    .venv/bin/python bench/resources.py --gpus 50000 --intervals 5
"""

from __future__ import annotations

import argparse
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

repo = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(repo))

from eventlog.embedded import EmbeddedLog
from eventlog.settings import Settings
from ledger.pricing import default_price_book
from ledger.role import LedgerRole
from schemas.codec import encode
from schemas.commands import GrantCredits, StartResource

t0 = datetime(2026, 11, 1, tzinfo=UTC)
interval_s = 60


class Clock:
    def __init__(self) -> None:
        self.now = t0

    def __call__(self) -> datetime:
        return self.now


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--gpus", type=int, default=10_000)
    parser.add_argument("--orgs", type=int, default=1_000)
    parser.add_argument("--intervals", type=int, default=3)
    args = parser.parse_args()
    role = LedgerRole(EmbeddedLog(Path(":memory:")), Settings(), default_price_book(), Clock())
    commands = [
        encode(
            GrantCredits(
                command_id=f"g{i}", org_id=f"org{i}", issued_at=t0, grant_id=f"g{i}", amount_micros=10**12, kind="paid"
            )
        )
        for i in range(args.orgs)
    ]
    commands += [
        encode(
            StartResource(
                command_id=f"s{i}",
                org_id=f"org{i % args.orgs}",
                issued_at=t0,
                resource_id=f"r{i}",
                token_id="bench",
                kind="gpu",
                resource_class="h100-nvl",
                quantity=1,
                interval_s=interval_s,
            )
        )
        for i in range(args.gpus)
    ]
    started = time.perf_counter()
    role.decide_batch(commands)
    print(f"{args.gpus} starts (and {args.orgs} grants) decided in {time.perf_counter() - started:.3f} s")
    for k in range(1, args.intervals + 1):
        started = time.perf_counter()
        records = role.expire_due(t0 + timedelta(seconds=interval_s * k))
        elapsed = time.perf_counter() - started
        print(
            f"interval {k}: {len(records)} charges in {elapsed:.3f} s "
            f"({elapsed / max(len(records), 1) * 1e6:.0f} µs each; {elapsed / interval_s:.2%} of the interval)"
        )


if __name__ == "__main__":
    main()
