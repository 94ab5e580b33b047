"""Audit from the log alone: a clean log verifies; altering, removing, inserting or reordering any
ledger event in a copy of the log is caught and named, and so is a rewritten chain whose checkpoints
were deleted; balances as of a past moment come from the log; replay from a moment compares exactly
that window."""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from datetime import time as time_of_day
from decimal import Decimal
from pathlib import Path
from typing import Any

import httpx
import msgspec
import pytest

from eventlog import Record, topics
from eventlog.embedded import EmbeddedLog
from eventlog.settings import Settings
from ledger.audit import Auditor
from ledger.chain import Signer, load_or_create_signing_key, record_hash
from ledger.pricing import PriceBooks, default_price_book
from ledger.role import LedgerRole
from schemas.codec import decode_event, encode
from schemas.commands import GrantCredits
from tests.support import Admin, Role, free_port, wait_for_text, wait_until_serving

admin_token = "tga_audit"
partition_with_money = 0
checkpoint_records_max = 7  # the audited run's TOLLGATE_CHECKPOINT_RECORDS_MAX
checkpoint_type = "chain.checkpoint.v1"


class AuditedRun:
    """`tollgate dev` after a mixed run: grants, charges, a refund, an adjustment, a failed and a
    cancelled job, with checkpoints every few records."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.data_dir = root / "dev"
        self.port = free_port()
        self.base_url = f"http://127.0.0.1:{self.port}"
        env = {
            "TOLLGATE_ADMIN_TOKEN": admin_token,
            "TOLLGATE_KAFKA_BOOTSTRAP": "",
            "TOLLGATE_CHECKPOINT_RECORDS_MAX": str(checkpoint_records_max),
            "TOLLGATE_CHECKPOINT_INTERVAL_S": "0.5",
            "TOLLGATE_SIM_VIDEO_SECOND_MS": "200",
        }
        self.role = Role("dev", ["dev", "--port", str(self.port), "--data-dir", str(self.data_dir)], env, root)
        wait_until_serving(self.base_url, self.role)
        wait_for_text(self.role, "demo API key")
        self.admin = Admin(self.base_url, admin_token)
        self.orgs: list[str] = []
        self.before_second_grant = ""
        self.mid_traffic = ""  # between two charges of the second organization: not a midnight
        self.traffic()

    def traffic(self) -> None:
        for n in range(3):
            org = self.admin.organization(f"audited-{n}")
            self.orgs.append(org)
            self.admin.grant(org, "5")
            key = self.admin.token(org)
            headers = {"Authorization": f"Bearer {key}"}
            with httpx.Client(base_url=self.base_url, headers=headers, timeout=60) as client:
                for i in range(4):
                    body = {"model": "sim-chat-small", "messages": [{"role": "user", "content": f"q{i}"}]}
                    reply = client.post("/v1/chat/completions", json=body)
                    assert reply.status_code == 200, reply.text
                    if (n, i) == (1, 1):
                        time.sleep(0.05)  # apart from both charges, whatever the clocks' resolution
                        self.mid_traffic = datetime.now(UTC).isoformat()
                        time.sleep(0.05)
                failing = {
                    "model": "sim-chat-small",
                    "messages": [{"role": "user", "content": "x"}],
                    "sim": {"fail_attempts": 9},
                }
                assert client.post("/v1/chat/completions", json=failing).status_code == 502
                video = client.post("/v1/videos/generations", json={"prompt": "p", "duration": 8}).json()
                time.sleep(0.3)
                client.delete(f"/v1/jobs/{video['job_id']}")
            refund_of = reply.headers["x-request-id"]
            refund = self.admin.client.post(
                f"/v1/organizations/{org}/refunds",
                json={"amount": "0.000001", "reason": "audit", "reference": refund_of},
            )
            assert refund.status_code == 201, refund.text
            adjust = self.admin.client.post(f"/v1/organizations/{org}/adjustments", json={"amount": "1", "reason": "t"})
            assert adjust.status_code == 201, adjust.text
        time.sleep(0.3)
        self.before_second_grant = datetime.now(UTC).isoformat()
        time.sleep(0.3)
        self.admin.grant(self.orgs[0], "2")
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if all(usage_of(self, org)["balance"]["held_micros"] == 0 for org in self.orgs):
                break
            time.sleep(0.2)
        time.sleep(1.5)  # the last checkpoint


def usage_of(run: AuditedRun, org: str) -> dict[str, Any]:
    return {"balance": run.admin.client.get(f"/v1/organizations/{org}/balance").json()}


@pytest.fixture(scope="module")
def audited(tmp_path_factory: pytest.TempPathFactory) -> Iterator[AuditedRun]:
    run = AuditedRun(tmp_path_factory.mktemp("audit"))
    yield run
    run.role.stop()


def tollgate(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "tollgate", *args],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, **(env or {})},
    )


def verify(
    data_dir: Path, key: Path, *extra: str, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    return tollgate("audit", "verify", "--data-dir", str(data_dir), "--public-key", str(key), *extra, env=env)


def rechained(rows: list[tuple[bytes, bytes, int]]) -> list[tuple[bytes, bytes, int]]:
    """``rows`` with every link recomputed (and every checkpoint's count and head), as a forger with
    write access to the log but not the ledger's key would leave them."""
    head = "0" * 64
    linked: list[tuple[bytes, bytes, int]] = []
    for key, value, ts in rows:
        event = msgspec.structs.replace(decode_event(value), prev_hash=head)
        if json.loads(value)["type"] == checkpoint_type:
            event = msgspec.structs.replace(event, count=len(linked), head=head)
        value = encode(event)
        linked.append((key, value, ts))
        head = record_hash(value)
    return linked


def type_of(row: tuple[bytes, bytes, int]) -> str:
    return str(json.loads(row[1])["type"])


def copy_of(run: AuditedRun, tmp_path: Path) -> Path:
    copy = tmp_path / "copy"
    copy.mkdir()
    source = sqlite3.connect(str(run.data_dir / "log.sqlite3"))
    target = sqlite3.connect(str(copy / "log.sqlite3"))
    source.backup(target)  # a consistent copy of a live WAL database
    source.close()
    target.close()
    return copy


def ledger_rows(copy: Path) -> list[tuple[int, int, bytes, bytes, int]]:
    with sqlite3.connect(str(copy / "log.sqlite3")) as db:
        return db.execute(
            "SELECT partition, offset, key, value, timestamp_ms FROM records WHERE topic = 'tollgate.ledger' "
            "ORDER BY partition, offset"
        ).fetchall()


def rewrite_partition(copy: Path, partition: int, rows: list[tuple[bytes, bytes, int]]) -> None:
    """Replace a partition's ledger records with ``rows`` (key, value, timestamp), renumbered from 0."""
    with sqlite3.connect(str(copy / "log.sqlite3")) as db:
        db.execute("DELETE FROM records WHERE topic = 'tollgate.ledger' AND partition = ?", (partition,))
        db.executemany(
            "INSERT INTO records VALUES ('tollgate.ledger', ?, ?, ?, ?, ?)",
            [(partition, offset, key, value, ts) for offset, (key, value, ts) in enumerate(rows)],
        )


def busiest_partition(copy: Path) -> tuple[int, list[tuple[bytes, bytes, int]]]:
    rows = ledger_rows(copy)
    counts: dict[int, list[tuple[bytes, bytes, int]]] = {}
    for partition, _, key, value, ts in rows:
        counts.setdefault(partition, []).append((key, value, ts))
    partition = max(counts, key=lambda p: len(counts[p]))
    return partition, counts[partition]


def first_index(rows: list[tuple[bytes, bytes, int]], type_tag: str) -> int:
    return next(i for i, (_, value, _) in enumerate(rows) if json.loads(value)["type"] == type_tag)


@pytest.fixture
def key_file(ledger_signing_key: Path) -> Path:
    return ledger_signing_key  # the suite's one ledger key (tests/conftest.py)


def test_a_clean_log_verifies_and_matches_the_read_model(audited: AuditedRun, key_file: Path, tmp_path: Path) -> None:
    live = verify(audited.data_dir, key_file, "--gateway", audited.base_url, "--admin-token", admin_token, "--json")
    assert live.returncode == 0, live.stdout + live.stderr
    report = json.loads(live.stdout)
    assert report["ok"] and report["records"] > 50 and report["captures_checked"] >= 12
    assert sum(p["checkpoints"] for p in report["partitions"].values()) >= 3
    assert report["book_total_micros"] == 0
    assert verify(copy_of(audited, tmp_path), key_file).returncode == 0


def test_the_public_key_is_published_and_verifies(audited: AuditedRun, tmp_path: Path) -> None:
    published = httpx.get(f"{audited.base_url}/v1/audit/public-key").json()
    jwk = tmp_path / "ledger.jwk"
    jwk.write_text(json.dumps(published["keys"][0]))
    assert verify(audited.data_dir, jwk).returncode == 0
    pem = tmp_path / "ledger.pem"
    pem.write_text(published["pem"])
    assert verify(audited.data_dir, pem).returncode == 0


def test_another_key_does_not_verify_the_checkpoints(audited: AuditedRun, tmp_path: Path) -> None:
    from ledger.chain import load_or_create_signing_key, public_key_pem

    other = tmp_path / "other.pem"
    other.write_text(public_key_pem(load_or_create_signing_key(tmp_path / "other-private.pem").public_key()))
    result = verify(audited.data_dir, other)
    assert result.returncode == 1 and "bad_signature" in result.stdout


def test_an_altered_event_is_caught_and_named(audited: AuditedRun, key_file: Path, tmp_path: Path) -> None:
    copy = copy_of(audited, tmp_path)
    partition, rows = busiest_partition(copy)
    index = first_index(rows, "credits.granted.v1")
    key, value, ts = rows[index]
    granted = json.loads(value)
    granted["amount_micros"] += 1_000_000  # a quiet extra credit
    rows[index] = (key, json.dumps(granted, separators=(",", ":")).encode(), ts)
    rewrite_partition(copy, partition, rows)
    result = verify(copy, key_file)
    assert result.returncode == 1
    assert "broken_chain" in result.stdout and granted["event_id"] in result.stdout, result.stdout


def test_a_removed_event_is_caught_at_the_gap(audited: AuditedRun, key_file: Path, tmp_path: Path) -> None:
    copy = copy_of(audited, tmp_path)
    partition, rows = busiest_partition(copy)
    index = first_index(rows, "hold.captured.v1")
    after = json.loads(rows[index + 1][1])["event_id"]
    del rows[index]
    rewrite_partition(copy, partition, rows)
    result = verify(copy, key_file)
    assert result.returncode == 1 and "broken_chain" in result.stdout and after in result.stdout, result.stdout


def test_an_inserted_event_is_caught_even_when_linked_in(audited: AuditedRun, key_file: Path, tmp_path: Path) -> None:
    copy = copy_of(audited, tmp_path)
    partition, rows = busiest_partition(copy)
    index = first_index(rows, "credits.granted.v1")
    key, value, ts = rows[index]
    forged = json.loads(value)
    forged["event_id"] = "forged-grant"
    forged["grant_id"] = "forged-grant"
    forged["prev_hash"] = record_hash(value)  # linked to its predecessor, as a careful forger would
    rows.insert(index + 1, (key, json.dumps(forged, separators=(",", ":")).encode(), ts))
    rewrite_partition(copy, partition, rows)
    result = verify(copy, key_file)
    assert result.returncode == 1 and "forged-grant" in result.stdout, result.stdout


def test_a_rechained_forgery_fails_the_signed_checkpoints(audited: AuditedRun, key_file: Path, tmp_path: Path) -> None:
    """Insert an event and recompute every later link: only the signatures can tell."""
    copy = copy_of(audited, tmp_path)
    partition, rows = busiest_partition(copy)
    index = first_index(rows, "credits.granted.v1")
    forged = decode_event(rows[index][1])
    forged = msgspec.structs.replace(forged, event_id="forged-grant-2", grant_id="forged-grant-2")
    rows.insert(index + 1, (rows[index][0], encode(forged), rows[index][2]))
    rewrite_partition(copy, partition, rechained(rows))
    result = verify(copy, key_file)
    assert result.returncode == 1 and "bad_signature" in result.stdout, result.stdout


def test_a_rechained_forgery_without_its_checkpoints_is_caught_and_named(
    audited: AuditedRun, key_file: Path, tmp_path: Path
) -> None:
    """Insert an event, delete every checkpoint after it and recompute every link: no signature is
    left to fail, but the ledger signs at least every checkpoint_records_max records, so the run of
    unsigned records that follows the last checkpoint kept is too long."""
    copy = copy_of(audited, tmp_path)
    partition, rows = busiest_partition(copy)
    index = first_index(rows, "credits.granted.v1")
    forged = decode_event(rows[index][1])
    forged = msgspec.structs.replace(forged, event_id="forged-grant-3", grant_id="forged-grant-3")
    kept = rows[: index + 1]
    rest = [row for row in rows[index + 1 :] if type_of(row) != checkpoint_type]
    forged_rows = rechained([*kept, (rows[index][0], encode(forged), rows[index][2]), *rest])
    rewrite_partition(copy, partition, forged_rows)
    last_checkpoint = max((i for i, row in enumerate(kept) if type_of(row) == checkpoint_type), default=-1)
    run_start = last_checkpoint + 1  # the unsigned run: from after the last checkpoint kept to the end
    assert len(forged_rows) - run_start > checkpoint_records_max, "the forgery must be followed by a long run"
    first_of_run = json.loads(forged_rows[run_start][1])["event_id"]

    result = verify(copy, key_file, "--json", env={"TOLLGATE_CHECKPOINT_RECORDS_MAX": str(checkpoint_records_max)})
    assert result.returncode == 1, result.stdout + result.stderr
    report = json.loads(result.stdout)
    assert report["unsigned_records_max"] == checkpoint_records_max, "the bound defaults to the settings' value"
    problem = report["first_problem"]
    assert f"partition {partition} offset {run_start} event {first_of_run}: unsigned_run" in problem, problem
    assert report["partitions"][str(partition)]["unsigned_tail"] == len(forged_rows) - run_start
    # The option overrides the settings; a bound as long as the whole partition lets it through.
    lenient = verify(copy, key_file, "--unsigned-records-max", str(len(forged_rows)), "--json")
    assert lenient.returncode == 0 and json.loads(lenient.stdout)["unsigned_records_max"] == len(forged_rows)


def test_a_clean_log_with_an_unsigned_tail_within_the_bound_verifies(
    audited: AuditedRun, key_file: Path, tmp_path: Path
) -> None:
    """The live log keeps the bound everywhere; a log whose last records are not signed yet (here:
    cut just before a checkpoint) verifies while that tail is within the bound, and a tail longer
    than the bound is named by its first record."""
    live = verify(audited.data_dir, key_file, "--unsigned-records-max", str(checkpoint_records_max), "--json")
    assert live.returncode == 0, live.stdout + live.stderr
    assert all(
        p["longest_unsigned_run"] <= checkpoint_records_max for p in json.loads(live.stdout)["partitions"].values()
    )

    copy = copy_of(audited, tmp_path)
    partition, rows = busiest_partition(copy)
    checkpoints = [i for i, row in enumerate(rows) if type_of(row) == checkpoint_type]
    runs = [(at - (before + 1), at) for before, at in zip([-1, *checkpoints], checkpoints, strict=False)]
    tail, cut = max(runs)  # the longest run a checkpoint closed: the tail once that checkpoint is cut off
    assert 2 <= tail <= checkpoint_records_max, runs
    rewrite_partition(copy, partition, rows[:cut])
    result = verify(copy, key_file, "--unsigned-records-max", str(checkpoint_records_max), "--json")
    assert result.returncode == 0, result.stdout + result.stderr
    report = json.loads(result.stdout)
    assert report["partitions"][str(partition)]["unsigned_tail"] == tail and report["unsigned_records"] >= tail
    strict = verify(copy, key_file, "--unsigned-records-max", str(tail - 1))
    first_of_tail = json.loads(rows[cut - tail][1])["event_id"]
    assert strict.returncode == 1, strict.stdout
    assert f"partition {partition} offset {cut - tail} event {first_of_tail}: unsigned_run" in strict.stdout


def test_a_tail_cut_off_with_its_checkpoints_is_caught_by_the_read_model_only(
    audited: AuditedRun, key_file: Path, tmp_path: Path
) -> None:
    """Cutting a partition right after one of its checkpoints leaves a log that proves itself; only
    the live balances (--gateway) show that the second grant is gone."""
    copy = copy_of(audited, tmp_path)
    org = audited.orgs[0]
    rows_by_partition: dict[int, list[tuple[bytes, bytes, int]]] = {}
    for partition, _, key, value, ts in ledger_rows(copy):
        rows_by_partition.setdefault(partition, []).append((key, value, ts))
    partition, rows = next((p, r) for p, r in rows_by_partition.items() if any(k == org.encode() for k, _, _ in r))
    last_grant = max(i for i, row in enumerate(rows) if row[0] == org.encode() and type_of(row) == "credits.granted.v1")
    cut = max(i for i in range(last_grant) if type_of(rows[i]) == checkpoint_type) + 1
    rewrite_partition(copy, partition, rows[:cut])
    alone = verify(copy, key_file, "--unsigned-records-max", str(checkpoint_records_max))
    assert alone.returncode == 0, alone.stdout + alone.stderr
    compared = verify(copy, key_file, "--gateway", audited.base_url, "--admin-token", admin_token)
    assert compared.returncode == 1, compared.stdout
    assert f"read model: balances {org}: amount_micros" in compared.stdout, compared.stdout


def test_the_ledger_signs_every_checkpoint_records_max_records_within_a_batch_and_after_a_restart(
    tmp_path: Path,
) -> None:
    """One batch of commands can append more records than checkpoint_records_max; the role signs
    inside the batch, and a rebuilt role counts on from the last checkpoint in the log."""
    records_max = 3
    settings = Settings(checkpoint_records_max=records_max, checkpoint_interval_s=3600)
    key = load_or_create_signing_key(tmp_path / "key.pem")
    log = EmbeddedLog(tmp_path / "log.sqlite3")
    now = datetime(2026, 11, 1, tzinfo=UTC)

    def grants(first: int, count: int) -> list[bytes]:
        return [
            encode(
                GrantCredits(
                    command_id=f"g{n}", org_id="org", issued_at=now, grant_id=f"g{n}", amount_micros=1, kind="paid"
                )
            )
            for n in range(first, first + count)
        ]

    def run(role: LedgerRole, first: int, count: int) -> None:
        outputs = role.decide_batch(grants(first, count)) + role.checkpoints(now)
        producer = log.producer("t")
        producer.send([o for o in outputs if o.topic == topics.LEDGER])
        producer.flush(10)  # the embedded log commits in groups: the restarted role reads these

    def restarted() -> LedgerRole:
        role = LedgerRole(log, settings, default_price_book(), lambda: now, signer=Signer(key))
        role._owned = set(range(log.partitions))
        role.rebuild(role._owned)
        return role

    run(restarted(), 0, 11)  # 11 grants in one batch: checkpoints after the 3rd, 6th and 9th
    run(restarted(), 11, 1)  # 2 were unsigned, so this one is the 3rd: a checkpoint after it
    run(restarted(), 12, 2)  # none unsigned: these 2 need no checkpoint yet

    consumer = log.consumer([topics.LEDGER], client_id="audit")
    records: list[Record] = []
    while not consumer.caught_up():
        records += consumer.poll(1000, 100)
    types = [json.loads(r.value)["type"] for r in sorted(records, key=lambda r: r.offset)]
    checkpoint_at = [i for i, t in enumerate(types) if t == checkpoint_type]
    assert checkpoint_at == [3, 7, 11, 15] and len(types) == 18, types

    def audited_with(bound: int) -> Auditor:
        auditor = Auditor(
            public_keys=[key.public_key()], prices=PriceBooks(default_price_book()), unsigned_records_max=bound
        )
        auditor.feed(records)
        auditor.finish()
        return auditor

    assert audited_with(records_max).ok, audited_with(records_max).findings
    stricter = audited_with(records_max - 1).findings
    assert stricter and stricter[0].kind == "unsigned_run" and stricter[0].offset == 0, stricter


def test_reordered_events_are_caught(audited: AuditedRun, key_file: Path, tmp_path: Path) -> None:
    copy = copy_of(audited, tmp_path)
    partition, rows = busiest_partition(copy)
    index = first_index(rows, "hold.placed.v1")
    rows[index], rows[index + 1] = rows[index + 1], rows[index]
    rewrite_partition(copy, partition, rows)
    result = verify(copy, key_file)
    assert result.returncode == 1 and "broken_chain" in result.stdout, result.stdout


def test_a_balance_as_of_a_past_moment(audited: AuditedRun) -> None:
    org = audited.orgs[0]
    now = audited.admin.client.get(f"/v1/organizations/{org}/balance").json()["amount_micros"]
    cli = tollgate(
        "audit", "balance", "--data-dir", str(audited.data_dir), "--org", org, "--at", audited.before_second_grant
    )
    assert cli.returncode == 0, cli.stderr
    assert json.loads(cli.stdout)["amount_micros"] == now - 2_000_000, "before the second grant of 2 credits"
    api = audited.admin.client.get(f"/v1/organizations/{org}/balance-at", params={"at": audited.before_second_grant})
    assert api.status_code == 200 and api.json()["amount_micros"] == now - 2_000_000
    today = audited.admin.client.get(
        f"/v1/organizations/{org}/balance-at", params={"at": datetime.now(UTC).isoformat()}
    )
    assert today.json()["amount_micros"] == now
    assert (
        audited.admin.client.get(f"/v1/organizations/{org}/balance-at", params={"at": "yesterday"}).status_code == 400
    )


def test_replay_rebuilds_balances_jobs_and_windows_equal_to_the_live_ones(audited: AuditedRun) -> None:
    result = tollgate(
        "replay",
        "--data-dir",
        str(audited.data_dir),
        "--projections",
        "balances,jobs,windows",
        "--gateway",
        audited.base_url,
        "--admin-token",
        admin_token,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    report = json.loads(result.stdout)
    assert report["ok"] and report["balances"]["organizations"] >= 3 and report["balances"]["book_total_micros"] == 0
    statuses = report["jobs"]["by_status"]
    assert (
        statuses.get("completed", 0) >= 12 and statuses.get("dead_letter", 0) >= 3 and statuses.get("cancelled", 0) >= 3
    )
    assert "rebuilt" not in result.stdout


def test_replay_notices_a_read_model_that_drifted(audited: AuditedRun, tmp_path: Path) -> None:
    """Replay a copy of the log that lacks the last grant: its balance differs from the live one."""
    copy = copy_of(audited, tmp_path)
    partition, rows = busiest_partition(copy)
    last_grant = max(i for i, (_, value, _) in enumerate(rows) if json.loads(value)["type"] == "credits.granted.v1")
    rewrite_partition(copy, partition, rows[:last_grant])
    result = tollgate(
        "replay",
        "--data-dir",
        str(copy),
        "--projections",
        "balances",
        "--gateway",
        audited.base_url,
        "--admin-token",
        admin_token,
    )
    assert result.returncode == 1 and "balances org_" in result.stdout, result.stdout


def test_replay_rebuilds_usage_rows_and_rollups_equal_to_the_live_ones(audited: AuditedRun, tmp_path: Path) -> None:
    result = tollgate(
        "replay",
        "--data-dir",
        str(audited.data_dir),
        "--projections",
        "usage",
        "--target",
        str(tmp_path / "rebuilt"),
        "--gateway",
        audited.base_url,
        "--admin-token",
        admin_token,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    usage_report = json.loads(result.stdout)["usage"]
    assert usage_report["rollups_agree"] and usage_report["rows"] >= 15 and usage_report["cost_micros"] > 0


def replay_usage_since(run: AuditedRun, data_dir: Path, since: str, target: Path) -> subprocess.CompletedProcess[str]:
    return tollgate(
        "replay",
        "--data-dir",
        str(data_dir),
        "--projections",
        "jobs,usage",
        "--since",
        since,
        "--target",
        str(target),
        "--gateway",
        run.base_url,
        "--admin-token",
        admin_token,
    )


def test_replay_since_a_moment_of_the_day_compares_exactly_that_window(audited: AuditedRun, tmp_path: Path) -> None:
    """--since between two charges of one organization: the rebuilt usage and the live statements
    cover the same window, to the millisecond (usage/by-token's from would start at midnight)."""
    since = datetime.fromisoformat(audited.mid_traffic)
    assert since.time() != time_of_day(0)
    result = replay_usage_since(audited, audited.data_dir, audited.mid_traffic, tmp_path / "rebuilt")
    assert result.returncode == 0, result.stdout + result.stderr
    report = json.loads(result.stdout)
    assert report["ok"] and report["usage"]["from"].startswith(audited.mid_traffic[:23])
    everything = tollgate(
        "replay", "--data-dir", str(audited.data_dir), "--projections", "jobs,usage", "--target", str(tmp_path / "all")
    )
    whole = json.loads(everything.stdout)
    # Only the usage of the second organization's last two charges and of the third organization is in.
    assert 0 < report["usage"]["rows"] < whole["usage"]["rows"]
    assert 0 < report["usage"]["cost_micros"] < whole["usage"]["cost_micros"]
    assert 0 < report["jobs"]["jobs"] < whole["jobs"]["jobs"]


def test_replay_since_a_moment_notices_usage_that_drifted_after_it(audited: AuditedRun, tmp_path: Path) -> None:
    """A copy of the log that lacks a charge after --since differs from the live statements; one that
    lacks a charge before it does not (that charge is outside the window)."""
    since = datetime.fromisoformat(audited.mid_traffic)
    org = audited.orgs[1]
    for after, expect_mismatch in ((True, True), (False, False)):
        copy = tmp_path / f"copy-{after}"
        copy.mkdir()
        copy = copy_of(audited, copy)
        rows_by_partition: dict[int, list[tuple[bytes, bytes, int]]] = {}
        for partition, _, key, value, ts in ledger_rows(copy):
            rows_by_partition.setdefault(partition, []).append((key, value, ts))
        partition, rows = next((p, r) for p, r in rows_by_partition.items() if any(k == org.encode() for k, _, _ in r))
        captures = [
            i
            for i, row in enumerate(rows)
            if row[0] == org.encode()
            and type_of(row) == "hold.captured.v1"
            and (decode_event(row[1]).occurred_at >= since) == after
        ]
        assert captures
        del rows[captures[0]]
        rewrite_partition(copy, partition, rows)
        result = replay_usage_since(audited, copy, audited.mid_traffic, copy / "rebuilt")
        assert (result.returncode == 1) == expect_mismatch, result.stdout + result.stderr
        assert (f"usage {org} [" in result.stdout) == expect_mismatch, result.stdout


def test_statements_from_the_log_match_clickhouse_exactly(audited: AuditedRun) -> None:
    # The run started within the last hour or two; the period is open-ended to the future.
    start = (datetime.now(UTC) - timedelta(hours=2)).replace(minute=0, second=0, microsecond=0).isoformat()
    stop = (datetime.now(UTC) + timedelta(days=2)).replace(hour=0, minute=0, second=0, microsecond=0).isoformat()
    for org in audited.orgs:
        live = audited.admin.client.get(f"/v1/organizations/{org}/statements", params={"from": start, "to": stop})
        from_log = tollgate(
            "audit",
            "statement",
            "--data-dir",
            str(audited.data_dir),
            "--org",
            org,
            "--from",
            start,
            "--to",
            stop,
        )
        assert live.status_code == 200 and from_log.returncode == 0, live.text + from_log.stderr
        clickhouse = json.loads(live.text, parse_float=Decimal)
        log = json.loads(from_log.stdout, parse_float=Decimal)
        assert log["lines"] == clickhouse["lines"]
        assert (log["charges_micros"], log["refunds_micros"], log["total_micros"]) == (
            clickhouse["charges_micros"],
            clickhouse["refunds_micros"],
            clickhouse["total_micros"],
        )
        assert log["charges_micros"] > 0 and log["refunds_micros"] == 1


@pytest.mark.parametrize("tampered", [False, True])
def test_a_parallel_verify_reports_exactly_what_one_process_does(
    audited: AuditedRun, key_file: Path, tmp_path: Path, tampered: bool
) -> None:
    copy = copy_of(audited, tmp_path)
    if tampered:
        partition, rows = busiest_partition(copy)
        index = first_index(rows, "hold.captured.v1")
        key, value, ts = rows[index]
        captured = json.loads(value)
        captured["amount_micros"] -= 1  # a quiet discount
        rows[index] = (key, json.dumps(captured, separators=(",", ":")).encode(), ts)
        rewrite_partition(copy, partition, rows)
    reports = []
    for processes in ("1", "2"):
        result = verify(copy, key_file, "--processes", processes, "--json")
        assert result.returncode == (1 if tampered else 0), result.stdout + result.stderr
        report = json.loads(result.stdout)
        del report["records_per_s"]
        reports.append(report)
    assert reports[0] == reports[1]
    assert reports[0]["ok"] is not tampered
    if tampered:
        assert captured["event_id"] in reports[0]["first_problem"]
