"""One contract suite for the ClickHouse usage store, run on every mode in every run: the embedded chdb
engine, and a real ClickHouse server (the session's, from tests/conftest.py; each test in a database of
its own, dropped afterwards)."""

from __future__ import annotations

import random
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import msgspec
import pytest

from projections.statements import load_statement
from projections.usage import (
    PostingRow,
    UsageFilter,
    UsageStore,
    create_database,
    drop_database,
    parse_usage_cursor,
    usage_cursor,
)
from projections.usage.schema import legacy_projector_group, migrations, unit_names_v7, usage_columns
from schemas.units import Units
from tests.support import capture_posting, charge, examples, refusal

pytestmark = pytest.mark.heavy  # about 2 s a test (a migrated store each), half of them on the real server

modes = ["embedded", "server"]
month = datetime(2026, 11, 1, tzinfo=UTC)


class Opener:
    """Opens stores on one database: a path for the embedded engine, a database on the server."""

    def __init__(self, mode: str, path: Path, server_url: str = "") -> None:
        self.mode = mode
        self.path = path
        self.url = f"{server_url}/tollgate_test_{uuid.uuid4().hex[:12]}"
        if mode == "server":
            create_database(self.url)

    def open(self) -> UsageStore:
        if self.mode == "embedded":
            return UsageStore(path=self.path)
        return UsageStore(url=self.url)

    def drop(self) -> None:
        if self.mode == "server":
            drop_database(self.url)


@pytest.fixture(params=modes)
def opener(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Opener]:
    # The server starts (once per session) only when a server-mode test first asks for it.
    server_url = request.getfixturevalue("clickhouse_url") if request.param == "server" else ""
    made = Opener(request.param, tmp_path / "clickhouse", server_url)
    yield made
    made.drop()


@pytest.fixture
def store(opener: Opener) -> Iterator[UsageStore]:
    opened = opener.open()
    yield opened
    opened.close()


def totals(store: UsageStore, org: str = "org_a") -> tuple[tuple[int, int], ...]:
    """(requests, cost) from raw rows, hourly and daily rollups, and the summary query."""
    summary = store.summary(UsageFilter(org_id=org))
    return (
        store.raw_totals_by_org().get(org, (0, 0)),
        store.rollup_totals_by_org("usage_hourly").get(org, (0, 0)),
        store.rollup_totals_by_org("usage_daily").get(org, (0, 0)),
        (summary.requests, summary.cost_micros),
    )


def test_migrations_apply_once_and_survive_reopening(opener: Opener) -> None:
    first = opener.open()
    assert first.schema_version() == migrations[-1][0]
    assert first.migrate() == []  # nothing left to apply
    first.insert([charge("e1", month)], [])
    first.close()
    second = opener.open()
    try:
        assert second.migrate() == []
        assert second.raw_totals_by_org()["org_a"][0] == 1
    finally:
        second.close()


def test_duplicate_deliveries_change_no_total_raw_or_rollup(store: UsageStore) -> None:
    rows = [charge(f"e{i}", month + timedelta(minutes=13 * i)) for i in range(40)] + [
        refusal(f"r{i}", month + timedelta(minutes=31 * i)) for i in range(5)
    ]
    expected = (45, sum(row.cost_micros for row in rows))
    assert store.insert(rows, [capture_posting(r) for r in rows if r.status == "success"]) == 45
    assert totals(store) == (expected,) * 4
    # The same batch again, an overlapping batch, and repeats inside one batch: nothing new.
    assert store.insert(rows, [capture_posting(r) for r in rows if r.status == "success"]) == 0
    assert store.insert(rows[10:20] + rows[10:20] + [rows[3]], []) == 0
    assert totals(store) == (expected,) * 4
    # A batch mixing new and redelivered events writes only the new ones.
    extra = [charge(f"x{i}", month + timedelta(hours=5, seconds=i)) for i in range(3)]
    assert store.insert(rows[:5] + extra + extra, []) == 3
    grown = (48, expected[1] + sum(row.cost_micros for row in extra))
    assert totals(store) == (grown,) * 4
    assert store.totals_by_org()["org_a"] == (grown[1], expected[1] - 0)  # revenue postings: first 45 only
    assert store.account_balances()["revenue"] == expected[1]
    # The statement's ledger check reads ledger_daily, fed by a view: the postings were not doubled either.
    statement = load_statement(store, "org_a", month, month + timedelta(days=30))
    assert statement.ledger_charges_micros == expected[1]


def test_a_redelivery_after_a_crash_between_the_raw_rows_and_the_rollups_repairs_the_rollups(
    store: UsageStore,
) -> None:
    """One INSERT writes the raw table's part, then each view's: a projector killed in between left
    raw rows that the rollups lack, and the redelivered batch found them known and wrote nothing, so
    summaries and statements missed them for ever. The redelivery now rebuilds those days."""
    before = [charge(f"b{i}", month + timedelta(hours=2 * i)) for i in range(6)]
    store.insert(before, [capture_posting(r) for r in before])
    crashed = [charge(f"c{i}", month + timedelta(hours=3 * i, minutes=1)) for i in range(8)]
    postings = [capture_posting(r) for r in crashed]
    views = ("usage_hourly_mv", "usage_daily_mv", "ledger_daily_mv")
    for view in views:  # the crash: the raw parts are written, the views' are not
        store.command(f"DETACH TABLE {view}")
    store.insert(crashed, postings)
    for view in views:
        store.command(f"ATTACH TABLE {view}")
    raw = (14, sum(r.cost_micros for r in before + crashed))
    assert totals(store)[0] == raw and totals(store)[1] != raw  # what the crash left behind
    assert store.insert(crashed, postings) == 0  # the redelivery writes nothing new...
    assert totals(store) == (raw,) * 4  # ...and the rollups hold every event once
    statement = load_statement(store, "org_a", month, month + timedelta(days=30))
    assert statement.charges_micros == statement.ledger_charges_micros == raw[1]
    assert store.insert(crashed, postings) == 0  # a second redelivery changes nothing either
    assert totals(store) == (raw,) * 4


def test_late_events_land_in_their_own_hour_and_day(store: UsageStore) -> None:
    store.insert([charge("now1", month + timedelta(days=2, hours=3, minutes=5))], [])
    late = charge("late1", month + timedelta(hours=7, minutes=59, seconds=59))
    store.insert([late], [])  # arrives after a newer event
    hours = {row.period_start: row.requests for row in store.rollup("org_a", "hour", "none", None, None, 100)}
    assert hours == {datetime(2026, 11, 3, 3): 1, datetime(2026, 11, 1, 7): 1}
    days = store.rollup("org_a", "day", "model", None, None, 100)
    assert [(row.period_start, row.key, row.cost_micros) for row in days][-1] == (
        datetime(2026, 11, 1),
        "sim-chat-small",
        late.cost_micros,
    )


def test_cursor_pages_through_rows_that_share_a_millisecond(store: UsageStore) -> None:
    moment = month + timedelta(hours=1, microseconds=123_000)
    rows = [charge(f"tie{i:02d}", moment) for i in range(23)] + [
        charge(f"old{i}", month + timedelta(minutes=i)) for i in range(5)
    ]
    random.Random(7).shuffle(rows)
    store.insert(rows, [])
    seen: list[str] = []
    cursor: tuple[datetime, str] | None = None
    for _ in range(10):
        page = store.events(UsageFilter(org_id="org_a", limit=6, after_cursor=cursor))
        seen.extend(row.event_id for row in page)
        if len(page) < 6:
            break
        cursor = parse_usage_cursor(usage_cursor(page[-1]))
    assert len(seen) == len(set(seen)) == 28
    assert seen[:23] == sorted((f"tie{i:02d}" for i in range(23)), reverse=True)


def test_filters_and_spend_by_source(store: UsageStore) -> None:
    rows = [
        charge("a1", month + timedelta(hours=1)),
        charge("a2", month + timedelta(hours=2), model="sim-chat-large", token_id="tok_2"),
        charge("a3", month + timedelta(hours=3), source="playground"),
        refusal("a4", month + timedelta(hours=4)),
        charge("b1", month + timedelta(hours=1), org_id="org_b"),
    ]
    store.insert(rows, [])

    def ids(**kwargs: object) -> list[str]:
        return [row.event_id for row in store.events(UsageFilter(org_id="org_a", **kwargs))]  # type: ignore[arg-type]

    assert ids() == ["a4", "a3", "a2", "a1"]
    assert ids(model="sim-chat-large") == ["a4", "a2"]
    assert ids(status="error") == ["a4"]
    assert ids(source="playground") == ["a3"]
    assert ids(token_id="tok_2") == ["a2"]
    assert ids(start=month + timedelta(hours=2), end=month + timedelta(hours=3)) == ["a3", "a2"]
    assert ids(before=month + timedelta(hours=2)) == ["a1"]
    summary = store.summary(UsageFilter(org_id="org_a"))
    assert summary.requests == 4 and summary.errors == 1
    assert summary.cost_micros_by_source == {
        "api": rows[0].cost_micros + rows[1].cost_micros,
        "playground": rows[2].cost_micros,
    }
    by_token = {row.key: row.cost_micros for row in store.rollup("org_a", "day", "token", None, None, 10, False)}
    assert by_token == {"tok_1": rows[0].cost_micros + rows[2].cost_micros, "tok_2": rows[1].cost_micros}


def test_statement_lines_add_up_to_the_ledger_charges(store: UsageStore) -> None:
    rng = random.Random(11)
    models = ("sim-chat-small", "sim-chat-large", "sim-image", "sim-tts", "sim-video", "sim-embed-small")
    rows = []
    for i in range(300):
        model = rng.choice(models)
        units = Units(
            input_tokens=rng.randrange(0, 60_000),
            cached_input_tokens=rng.randrange(0, 500),
            output_tokens=rng.randrange(0, 3000),
            images=rng.randrange(0, 3) if model == "sim-image" else 0,
            variant=rng.choice(("", "1024x1024/hd", "1792x1024/standard")) if model == "sim-image" else "",
            characters=rng.randrange(0, 5000),
            video_seconds=rng.randrange(0, 9) if model == "sim-video" else 0,
        )
        rows.append(
            charge(f"s{i}", month + timedelta(minutes=rng.randrange(0, 60 * 24 * 29)), model=model, units=units)
        )
    outside = charge("next_month", month + timedelta(days=30))
    refund = PostingRow(
        event_id="refund1",
        posting=0,
        created_at=month + timedelta(days=3),
        org_id="org_a",
        kind="credits.refunded.v1",
        debit="refunds",
        credit="org_a/wallet",
        amount_micros=1234,
    )
    store.insert([*rows, outside], [*(capture_posting(r) for r in [*rows, outside]), refund])
    statement = load_statement(store, "org_a", month, month + timedelta(days=30))
    charged = sum(row.cost_micros for row in rows)
    assert sum(line.amount_micros for line in statement.lines if line.unit != "refund") == charged
    assert statement.charges_micros == statement.ledger_charges_micros == charged
    assert statement.total_micros == charged - 1234 == sum(line.amount_micros for line in statement.lines)
    assert statement.balanced
    assert all(line.amount_micros >= 0 for line in statement.lines if line.unit != "refund")
    # Unit lines carry real quantities and prices: input tokens of the small model at its rate.
    small = [line for line in statement.lines if line.model == "sim-chat-small" and line.unit == "input_tokens"]
    assert small and small[0].unit_price_micros_per_million == 150_000
    assert sum(line.quantity for line in small) == sum(r.input_tokens for r in rows if r.model == "sim-chat-small")


def test_migrations_3_and_4_keep_rows_written_before_them(opener: Opener) -> None:
    store = opener.open()
    try:
        # Back to schema 2: no views, no rollup tables; then rows arrive that only the raw table sees.
        for ddl in (
            "DROP VIEW usage_daily_mv",
            "DROP VIEW usage_hourly_mv",
            "DROP TABLE usage_daily",
            "DROP TABLE usage_hourly",
            "DROP VIEW ledger_daily_mv",
            "DROP TABLE ledger_daily",
            "TRUNCATE TABLE schema_migrations",
        ):
            store.command(ddl)
        store.command("INSERT INTO schema_migrations VALUES (1, now()), (2, now())")
        rows = [charge(f"old{i}", month + timedelta(hours=5 * i)) for i in range(30)]
        store.insert(rows, [capture_posting(r) for r in rows])
        # 4 rebuilds ledger_postings with its rows, 5 rolls them up, 6 adds priced_micros, 7 every unit,
        # 8 the source's id; 9 keeps the projector group the database was made with
        assert store.migrate() == [3, 4, 5, 6, 7, 8, 9]
        expected = (30, sum(row.cost_micros for row in rows))
        assert totals(store) == (expected,) * 4
        assert store.totals_by_org()["org_a"] == (expected[1], expected[1])
        statement = load_statement(store, "org_a", month, month + timedelta(days=30))
        assert statement.charges_micros == statement.ledger_charges_micros == expected[1]
        store.insert([charge("new1", month)], [])  # and the views keep them from now on
        assert totals(store)[1:3] == ((31, expected[1] + rows[0].cost_micros),) * 2
    finally:
        store.close()


def test_migration_7_rebuilds_the_rollups_with_the_rows_of_schema_6(opener: Opener) -> None:
    """A database at schema 6 (eight units, rollups keyed by their rates) with rows in it: migration 7
    adds every unit, tier, discount and top-up column, rebuilds both rollups from the raw rows, and
    statements of those rows still add up to the ledger; new rows then carry their tiers."""
    store = opener.open()
    try:
        for ddl in (
            "DROP VIEW usage_daily_mv",
            "DROP VIEW usage_hourly_mv",
            "DROP VIEW ledger_daily_mv",
            "DROP TABLE usage_daily",
            "DROP TABLE usage_hourly",
            "DROP TABLE ledger_daily",
            "DROP TABLE usage_events",
            "DROP TABLE ledger_postings",
            "TRUNCATE TABLE schema_migrations",
        ):
            store.command(ddl)
        for version, steps in migrations[:6]:
            assert version <= 6
            for step in steps:
                store.command(step)
            store.command(f"INSERT INTO schema_migrations VALUES ({version}, now())")
        large = Units(input_tokens=40_000, output_tokens=900)
        rows = [
            charge(f"v6_{i}", month + timedelta(hours=7 * i), model="sim-chat-large", units=large) for i in range(12)
        ]
        added = {*unit_names_v7, *(f"{u}_rate" for u in unit_names_v7), "pricing_tier", "discount_percent"}
        columns_v6 = [c for c in usage_columns if c not in added and c not in ("minimum_topup_micros", "source_id")]
        store.insert_columns({c: [getattr(r, c) for r in rows] for c in columns_v6})
        store.insert([], [capture_posting(r) for r in rows])
        assert store.migrate() == [7, 8, 9]
        expected = (12, sum(row.cost_micros for row in rows))
        assert totals(store) == (expected,) * 4
        statement = load_statement(store, "org_a", month, month + timedelta(days=30))
        assert statement.charges_micros == statement.ledger_charges_micros == expected[1]
        assert sum(line.amount_micros for line in statement.lines) == expected[1]
        # The old rows name no tier (nobody recorded one); their rates still tell the tiers apart.
        inputs = [line for line in statement.lines if line.unit == "input_tokens"]
        assert [(line.tier, line.unit_price_micros_per_million, line.quantity) for line in inputs] == [
            ("", 5_000_000, 12 * 40_000)
        ]
        store.insert([charge("v7", month + timedelta(days=2), model="sim-chat-large", units=large)], [])
        tiers = {line.tier for line in load_statement(store, "org_a", month, month + timedelta(days=30)).lines}
        assert "Over 32,768 prompt tokens" in tiers
    finally:
        store.close()


def test_migration_8_adds_the_source_id_and_keeps_the_rows_of_schema_7(opener: Opener) -> None:
    """A database at schema 7 with rows: migration 8 adds ``source_id`` ("" for those rows); a row that
    names its source's id (a hosted agent's message) reads back with it."""
    store = opener.open()
    try:
        store.command("ALTER TABLE usage_events DROP COLUMN source_id")
        store.command("ALTER TABLE schema_migrations DELETE WHERE version = 8 SETTINGS mutations_sync = 1")
        old = charge("v7", month)
        store.insert_columns({c: [getattr(old, c)] for c in usage_columns if c != "source_id"})
        assert store.migrate() == [8]
        message = msgspec.structs.replace(
            charge("v8", month + timedelta(hours=1)), source="hosted_agents", source_id="agent_1"
        )
        store.insert([message], [])
        rows = {row.event_id: row for row in store.events(UsageFilter(org_id="org_a"))}
        assert (rows["v7"].source, rows["v7"].source_id) == ("api", "")
        assert (rows["v8"].source, rows["v8"].source_id) == ("hosted_agents", "agent_1")
        assert store.summary(UsageFilter(org_id="org_a")).cost_micros_by_source == {
            "api": old.cost_micros,
            "hosted_agents": message.cost_micros,
        }
    finally:
        store.close()


def test_migration_9_gives_a_new_database_a_projector_group_of_its_own(opener: Opener, tmp_path: Path) -> None:
    """Each database is made with its projectors' consumer group: kept when it is opened again, another
    for another database; both start past the shared name the earlier schema had for every database."""
    first = opener.open()
    try:
        group = first.projector_group()
        assert group.startswith(legacy_projector_group + "-")
        assert first.migrate() == [] and first.projector_group() == group
    finally:
        first.close()
    reopened = opener.open()
    try:
        assert reopened.projector_group() == group
    finally:
        reopened.close()
    # One embedded engine per process at a time: the other database is opened once the first is closed.
    other = Opener(opener.mode, tmp_path / "other", opener.url.rsplit("/", 1)[0])
    another = other.open()
    try:
        assert another.projector_group() not in (group, legacy_projector_group)
    finally:
        another.close()
        other.drop()


def test_migration_9_keeps_the_shared_projector_group_for_a_database_with_rows(opener: Opener) -> None:
    """A database that holds rows from before migration 9 keeps the group that wrote them (its positions
    go on), rather than getting a new one that would read the whole log again."""
    store = opener.open()
    try:
        store.command("DROP TABLE store_identity")
        store.command("ALTER TABLE schema_migrations DELETE WHERE version = 9 SETTINGS mutations_sync = 1")
        store.insert([charge("v8", month)], [])
        assert store.migrate() == [9]
        assert store.projector_group() == legacy_projector_group
        assert store.migrate() == [] and store.projector_group() == legacy_projector_group
    finally:
        store.close()


def test_windows_read_whole_buckets_from_rollups_and_the_ends_raw_exactly(store: UsageStore) -> None:
    rng = random.Random(5)
    rows = [
        charge(f"w{i}", month + timedelta(milliseconds=rng.randrange(0, 6 * 24 * 3600 * 1000)), source="api")
        if i % 9
        else refusal(f"w{i}", month + timedelta(milliseconds=rng.randrange(0, 6 * 24 * 3600 * 1000)))
        for i in range(400)
    ]
    store.insert(rows, [capture_posting(r) for r in rows if r.status == "success"])
    edges = [None, month, month + timedelta(days=1), month + timedelta(hours=30)]
    for _ in range(examples(25)):
        edges.append(month + timedelta(milliseconds=rng.randrange(0, 7 * 24 * 3600 * 1000)))
    for start in edges:
        for end in rng.sample(edges, 6):
            if start is not None and end is not None and end < start:
                continue
            inside = [
                r for r in rows if (start is None or r.created_at >= start) and (end is None or r.created_at <= end)
            ]
            summary = store.summary(UsageFilter(org_id="org_a", start=start, end=end))
            assert (summary.requests, summary.cost_micros, summary.errors) == (
                len(inside),
                sum(r.cost_micros for r in inside),
                sum(r.status == "error" for r in inside),
            ), (start, end)
            if start is not None and end is not None and start < end:
                statement = load_statement(store, "org_a", start, end)
                charged = sum(r.cost_micros for r in rows if start <= r.created_at < end)
                assert statement.charges_micros == charged == statement.ledger_charges_micros, (start, end)
                assert sum(line.amount_micros for line in statement.lines) == charged
