"""The ledger role: the only writer of ledger events.

It consumes commands, decides against the wallets of the partitions it owns, and appends the
resulting events together with its input offsets in one transaction. Kafka's partition ownership
plus the transactional producer's fencing make it the single writer of each account partition.
"""

from __future__ import annotations

import heapq
import logging
import threading
import time
from collections import Counter
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from typing import Any

import msgspec

from eventlog import EventLog, Outgoing, Processor, Record, partition_for, topics
from eventlog.logs import about
from eventlog.metrics import Every, Metrics, gauges_refresh_s
from eventlog.settings import Settings
from ledger.chain import ChainHead, Signer
from ledger.price_feed import PriceFeed
from ledger.pricing import PriceBook, PriceBooks
from ledger.resources import decide_plan_due, decide_resource_due
from ledger.storage import Storage, days_per_decision_max, decide_file, next_storage_charge
from ledger.wallet import (
    Rejection,
    Wallet,
    decide,
    decide_auto_topup,
    decide_expiry,
    decide_grant_expiry,
    decide_slice_expiry,
    evolve,
)
from schemas.codec import decode_command, decode_event, encode
from schemas.commands import CaptureHold, DeleteFile, LedgerCommand, PlaceHold, ReleaseHold, StartJob, StoreFile
from schemas.events import (
    ChainCheckpoint,
    CommandRejected,
    CreditsGranted,
    Event,
    HoldCaptured,
    HoldPlaced,
    HoldRejected,
    HoldReleased,
    JobCancelRequested,
    JobDeadLettered,
    JobLeased,
    JobLeaseLost,
    JobQueued,
    PlanRenewed,
    PlanSubscribed,
    ResourceCharged,
    ResourceStarted,
    SliceGranted,
    SliceReturned,
)
from schemas.ids import event_id_for
from schemas.moments import utc_now

logger = logging.getLogger(__name__)

pricing_check_interval_s = 1.0  # how often an idle ledger looks for new price book versions
storage_check_interval_s = 60.0  # how often the ledger looks for storage days to charge (ledger/storage.py)
epoch = datetime(1970, 1, 1, tzinfo=UTC)

Clock = Callable[[], datetime]


def dispatch_copy(event: Event) -> Outgoing | None:
    """Jobs go to their pool, and so do the stop signals (cancel, dead letter), so that the worker
    running the job hears them; everything else the ledger decides goes only to the ledger topic."""
    if isinstance(event, (JobQueued, JobCancelRequested, JobDeadLettered)) and event.pool:
        return Outgoing(topics.dispatch_topic(event.pool), event.org_id, encode(event))
    return None


def rejected(command: LedgerCommand, rejection: Rejection, now: datetime) -> CommandRejected:
    """A refusal is a fact too: the caller learns the code, an auditor sees what was refused."""
    return CommandRejected(
        event_id=event_id_for(command.command_id, "command.rejected"),
        occurred_at=now,
        org_id=command.org_id,
        correlation_id=command.correlation_id,
        causation_id=command.command_id,
        command_type=type(command).__struct_config__.tag,  # type: ignore[arg-type]
        code=rejection.value,
    )


class _OpenItems:
    """Open holds and leased jobs per partition, folded from the events the ledger applies (live and
    while rebuilding), for the gauges: counting them in the wallets would walk every hold ever seen."""

    def __init__(self) -> None:
        self.holds: dict[int, set[str]] = {}
        self.leases: dict[int, set[str]] = {}

    def apply(self, partition: int, event: Event) -> None:
        if isinstance(event, HoldPlaced):
            self.holds.setdefault(partition, set()).add(event.hold_id)
        elif isinstance(event, JobLeased):
            self.leases.setdefault(partition, set()).add(event.hold_id)
        elif isinstance(event, JobLeaseLost):
            self.leases.get(partition, set()).discard(event.hold_id)
        elif isinstance(event, (HoldCaptured, HoldReleased)):
            self.holds.get(partition, set()).discard(event.hold_id)
            self.leases.get(partition, set()).discard(event.hold_id)

    def forget(self, partitions: set[int]) -> None:
        for items in (self.holds, self.leases):
            for partition in partitions:
                items.pop(partition, None)


class _CommandKind(msgspec.Struct):
    """What ``awaited`` reads of a command, without decoding the rest of it."""

    type: str
    slice_id: str = ""


_command_kind = msgspec.json.Decoder(_CommandKind)
# Commands whose ledger events no request waits for: a worker's lease and outcome (the client's
# answer comes from the worker's outcome on tollgate.jobs) and a hold carved from a gateway's slice
# (the gateway already reserved it and sent the job). Every other command (a hold decided against
# the wallet, a slice, a grant, a cancel...) has someone waiting for its answer.
_unawaited_types = frozenset(str(kind.__struct_config__.tag) for kind in (StartJob, CaptureHold, ReleaseHold))
_place_hold_type = str(PlaceHold.__struct_config__.tag)


def awaited(value: bytes) -> bool:
    """Whether a request waits on the ledger's decision of this command (its raw value)."""
    try:
        kind = _command_kind.decode(value)
    except msgspec.DecodeError:
        return True  # decided (and refused) at once, as before
    if kind.type == _place_hold_type:
        return not kind.slice_id
    return kind.type not in _unawaited_types


class LedgerRole:
    group = "tollgate-ledger"

    def __init__(
        self,
        log: EventLog,
        settings: Settings,
        prices: PriceBook | PriceBooks,
        clock: Clock = utc_now,
        signer: Signer | None = None,
        metrics: Metrics | None = None,
    ) -> None:
        self._log = log
        self._settings = settings
        self.prices = prices if isinstance(prices, PriceBooks) else PriceBooks(prices)
        self._price_feed = PriceFeed(
            log, f"tollgate-ledger-pricing-{settings.instance_id}", settings.batch_records_max, self.prices
        )
        self._clock = clock
        self.wallets: dict[str, Wallet] = {}
        self.rejections: Counter[str] = Counter()
        self._owned: set[int] = set()
        self._rebuild_needed: set[int] = set()
        # (due time, org, "hold", "grant", "slice", "resource" or "plan", id); entries already
        # resolved are skipped when due.
        self._expiries: list[tuple[datetime, str, str, str]] = []
        # The hash chain of each owned ledger partition, and who signs its checkpoints.
        self.chains: dict[int, ChainHead] = {}
        self._signer = signer
        self._checkpointed_at = time.monotonic()
        self.metrics = metrics or Metrics()
        self._open = _OpenItems()
        self.storage = Storage()  # stored files of the owned organizations, for their storage charges
        self._decisions: dict[tuple[str, str], Any] = {}  # (command type, result) -> its counter
        self._lease_events = {
            kind: self.metrics.ledger_lease_events.labels(kind) for kind in ("granted", "renewed", "lost")
        }
        self._lag = self.metrics.lag_reporter("ledger", "commands")

    def _on_assigned(self, partitions: set[int]) -> None:
        self._rebuild_needed = partitions
        self._owned = partitions

    def rebuild(self, partitions: set[int]) -> None:
        """Derive the wallets of ``partitions`` from the committed ledger events."""

        def partition_of(org_id: str) -> int:
            return partition_for(org_id.encode(), self._log.partitions)

        # Forget wallets this member no longer owns and those about to be derived afresh.
        self.wallets = {
            org: wallet
            for org, wallet in self.wallets.items()
            if partition_of(org) in self._owned and partition_of(org) not in partitions
        }
        self._expiries = [entry for entry in self._expiries if entry[1] in self.wallets]
        self.storage.forget(set(self.wallets))
        heapq.heapify(self._expiries)
        self.chains = {p: head for p, head in self.chains.items() if p in self._owned and p not in partitions}
        for partition in partitions:
            self.chains[partition] = ChainHead()
        self._open.forget(partitions | (set(self._open.holds) - self._owned) | (set(self._open.leases) - self._owned))
        for gone in set(self.metrics.checkpoint_ages.signed_at) - self._owned:
            self.metrics.checkpoint_ages.signed_at.pop(gone, None)
        consumer = self._log.consumer(
            [topics.LEDGER],
            client_id=f"tollgate-ledger-rebuild-{self._settings.instance_id}",
            partitions=sorted(partitions),
        )
        try:
            count = 0
            while not consumer.caught_up():
                self._lag.stalled()  # busy, and known to be: live, not ready
                for record in consumer.poll(self._settings.batch_records_max, self._settings.poll_wait_ms):
                    event = decode_event(record.value)
                    self._apply(event)
                    chain = self.chains.setdefault(record.partition, ChainHead())
                    chain.advance(record.value, event.org_id)
                    if isinstance(event, ChainCheckpoint):
                        # Count on from the last checkpoint the log holds, so that a restarted or
                        # aborted member keeps the bound on unsigned records that audit verify checks.
                        chain.since_checkpoint = 0
                        self.metrics.checkpoint_ages.signed_at[record.partition] = event.occurred_at.timestamp()
                    count += 1
            logger.info("ledger rebuilt partitions %s from %d events", sorted(partitions), count)
        finally:
            consumer.close()

    def _apply(self, event: Event) -> None:
        wallet = self._wallet(event.org_id)
        evolve(wallet, event)
        self.storage.apply(event)
        if isinstance(event, (HoldPlaced, HoldCaptured, HoldReleased, JobLeased, JobLeaseLost)):
            self._open.apply(partition_for(event.org_id.encode(), self._log.partitions), event)
        if isinstance(event, HoldPlaced):
            heapq.heappush(self._expiries, (event.expires_at, event.org_id, "hold", event.hold_id))
        elif isinstance(event, JobLeased):
            heapq.heappush(self._expiries, (event.lease_expires_at, event.org_id, "hold", event.hold_id))
        elif isinstance(event, JobLeaseLost):
            heapq.heappush(self._expiries, (event.expires_at, event.org_id, "hold", event.hold_id))
        elif isinstance(event, CreditsGranted) and event.expires_at is not None:
            heapq.heappush(self._expiries, (event.expires_at, event.org_id, "grant", event.grant_id))
        elif isinstance(event, SliceGranted):
            heapq.heappush(self._expiries, (event.expires_at, event.org_id, "slice", event.slice_id))
        elif isinstance(event, ResourceStarted) or (isinstance(event, ResourceCharged) and not event.ended):
            # The interval held is charged when it is over (ledger/resources.py decide_resource_due).
            due_at = wallet.resources[event.resource_id].due_at()
            heapq.heappush(self._expiries, (due_at, event.org_id, "resource", event.resource_id))
        elif isinstance(event, (PlanSubscribed, PlanRenewed)):
            heapq.heappush(self._expiries, (event.period_end, event.org_id, "plan", event.subscription_id))
        if isinstance(event, (HoldCaptured, HoldReleased, SliceReturned, ResourceCharged)):
            # An expired grant whose remainder open holds (or slices, or a resource's interval) still
            # needed can now expire further.
            for grant in wallet.grants.values():
                if grant.expired and grant.remaining_micros > 0:
                    heapq.heappush(self._expiries, (event.occurred_at, event.org_id, "grant", grant.grant_id))

    def expire_due(self, now: datetime, partition_times: dict[int, datetime] | None = None) -> list[Outgoing]:
        """Release every hold and expire every grant and slice whose time has come, charge every
        resource interval that is over and renew (or end) every plan period that is, by event.

        ``partition_times``: how far the ledger has read each partition's commands (the log's time,
        ``run``). An item is due only once its partition's commands are read up to its due time, so
        a ledger back from an outage decides the captures workers appended in time before it expires
        their holds."""
        outputs: list[Outgoing] = []
        deferred: list[tuple[datetime, str, str, str]] = []
        while self._expiries and self._expiries[0][0] <= now:
            entry = heapq.heappop(self._expiries)
            due_at, org_id, kind, item_id = entry
            at = now
            if partition_times is not None:
                at = min(now, partition_times.get(partition_for(org_id.encode(), self._log.partitions), now))
                if due_at > at:
                    deferred.append(entry)  # its partition's commands are not read that far yet
                    continue
            wallet = self.wallets.get(org_id)
            if wallet is None:
                continue
            if kind == "hold":
                due = decide_expiry(wallet, item_id, at)
            elif kind == "slice":
                due = decide_slice_expiry(wallet, item_id, at)
            elif kind == "resource":
                due = decide_resource_due(wallet, item_id, at)
            elif kind == "plan":
                due = decide_plan_due(wallet, item_id, at)
            else:
                due = decide_grant_expiry(wallet, item_id, at)
            cause = due[0].event_id if due else ""
            self._count_job_events(due)
            for event in due:
                self._apply(event)
                outputs += self._emit(event)
            # Once they are applied: an expiry or a resource's charge lowers the balance it looks at.
            for event in decide_auto_topup(wallet, at, cause) if due else []:
                self._apply(event)
                outputs += self._emit(event)
        for entry in deferred:
            heapq.heappush(self._expiries, entry)
        return outputs

    def charge_storage(self, now: datetime, partition_times: dict[int, datetime] | None = None) -> list[Outgoing]:
        """Charge every owned organization for the storage days that ended (ledger/storage.py), each
        day only once its partition's commands are read past its end (as expiries wait)."""
        outputs: list[Outgoing] = []
        for org_id, state in list(self.storage.orgs.items()):
            wallet = self.wallets.get(org_id)
            if wallet is None or state.unbilled_from is None:
                continue
            at = now
            if partition_times is not None:
                at = min(now, partition_times.get(partition_for(org_id.encode(), self._log.partitions), now))
            for _ in range(days_per_decision_max):
                charge = next_storage_charge(state, org_id, at, self.prices.current, wallet.spendable_micros)
                if charge is None:
                    break
                day = state.unbilled_from  # the day charged (days without bytes before it are passed)
                for command in charge:
                    if state.unbilled_from != day:
                        break  # its hold was refused (nothing spendable): the day is recorded, not charged
                    result = decide(wallet, command, at, self.prices)
                    if isinstance(result, Rejection):
                        self.rejections[result.value] += 1
                        break
                    for event in result:
                        self._apply(event)
                        outputs += self._emit(event)
                if state.unbilled_from == day:
                    logger.error("the storage charge of %s for %s was not decided", org_id, day)
                    break
        return outputs

    def _emit(self, event: Event) -> list[Outgoing]:
        """The records of a decided (and applied) event: a ledger record linked into its partition's
        chain, and its dispatch copy if it has one."""
        copy = dispatch_copy(event)
        if isinstance(event, JobQueued):
            return [copy] if copy is not None else []
        partition = partition_for(event.org_id.encode(), self._log.partitions)
        chain = self.chains.setdefault(partition, ChainHead())
        value = encode(msgspec.structs.replace(event, prev_hash=chain.head))
        chain.advance(value, event.org_id)
        record = Outgoing(topics.LEDGER, event.org_id, value)
        outputs = [record] if copy is None else [record, copy]
        if (
            self._signer is not None
            and not isinstance(event, ChainCheckpoint)
            and chain.since_checkpoint >= self._settings.checkpoint_records_max
        ):
            # Sign right here, in the same transaction, not after the batch: one batch can append
            # more than checkpoint_records_max records, and audit verify fails a longer unsigned run.
            outputs += self._checkpoint(partition, chain, event.occurred_at)
        return outputs

    def _checkpoint(self, partition: int, chain: ChainHead, now: datetime) -> list[Outgoing]:
        assert self._signer is not None
        outputs = self._emit(self._signer.checkpoint(partition, chain, now))
        chain.since_checkpoint = 0
        self.metrics.ledger_checkpoints.inc()
        self.metrics.checkpoint_ages.signed_at[partition] = time.time()  # when committed, within a poll
        return outputs

    def _count(self, command: LedgerCommand, result: str, events: Sequence[Event]) -> None:
        """The decision's counter, and the lease and dead-letter counters of what it decided."""
        key = (str(type(command).__struct_config__.tag), result)
        counter = self._decisions.get(key)
        if counter is None:
            counter = self._decisions[key] = self.metrics.ledger_decisions.labels(*key)
        counter.inc()
        self._count_job_events(events)

    def _count_job_events(self, events: Sequence[Event]) -> None:
        """Before the events are applied: a lease of the run that holds the job is a renewal."""
        for event in events:
            if isinstance(event, JobLeased):
                hold = self.wallets[event.org_id].holds.get(event.hold_id)
                renewed = hold is not None and hold.run_id == event.run_id and event.attempt == hold.attempts
                self._lease_events["renewed" if renewed else "granted"].inc()
            elif isinstance(event, JobLeaseLost):
                self._lease_events["lost"].inc()
            elif isinstance(event, JobDeadLettered):
                self.metrics.ledger_dead_letters.labels(event.pool or "default").inc()

    def refresh_gauges(self) -> None:
        """Open holds, reserved micros, leases and unsigned records per owned partition (once a second)."""
        held: dict[int, int] = dict.fromkeys(self._owned, 0)
        for org_id, wallet in list(self.wallets.items()):
            partition = partition_for(org_id.encode(), self._log.partitions)
            held[partition] = held.get(partition, 0) + wallet.held_micros
        m = self.metrics
        for partition in sorted(self._owned):
            label = str(partition)
            m.ledger_open_holds.labels(label).set(len(self._open.holds.get(partition, ())))
            m.ledger_open_leases.labels(label).set(len(self._open.leases.get(partition, ())))
            m.ledger_held_micros.labels(label).set(held.get(partition, 0))
            chain = self.chains.get(partition)
            m.ledger_unsigned_records.labels(label).set(chain.since_checkpoint if chain is not None else 0)

    def checkpoints(self, now: datetime, force: bool = False) -> list[Outgoing]:
        """Signed checkpoints for partitions with new records and enough time (``_emit`` signs those
        with enough new records as it appends them)."""
        if self._signer is None:
            return []
        due_by_time = time.monotonic() - self._checkpointed_at >= self._settings.checkpoint_interval_s
        outputs: list[Outgoing] = []
        for partition, chain in sorted(self.chains.items()):
            if chain.since_checkpoint == 0 or not chain.key:
                continue
            if not (force or due_by_time or chain.since_checkpoint >= self._settings.checkpoint_records_max):
                continue
            outputs += self._checkpoint(partition, chain, now)
        if due_by_time:
            self._checkpointed_at = time.monotonic()
        return outputs

    def _wallet(self, org_id: str) -> Wallet:
        wallet = self.wallets.get(org_id)
        if wallet is None:
            wallet = self.wallets[org_id] = Wallet(org_id=org_id)
            wallet.collect_events()
        return wallet

    def decide_batch(self, values: list[bytes], appended_at: Sequence[datetime] | None = None) -> list[Outgoing]:
        """Decide each command in order, evolving wallets as we go; the events to append.

        Each command is decided as of ``appended_at``, the moment the log took it (Kafka's
        LogAppendTime on tollgate.commands, assigned by the broker; the embedded log's own clock), not
        the moment the ledger reads it: a capture a worker appended while its hold was open is taken,
        however late a ledger back from an outage reads it. Without it, the ledger's clock."""
        outputs: list[Outgoing] = []
        clock_now = self._clock()
        for index, value in enumerate(values):
            now = appended_at[index] if appended_at is not None else clock_now
            try:
                command = decode_command(value)
            except msgspec.DecodeError as error:
                # A malformed command must not block its partition: count it, log it, move on.
                self.rejections["malformed_command"] += 1
                logger.error("skipping a malformed command: %s", error)
                continue
            wallet = self._wallet(command.org_id)
            result: list[Event] | Rejection
            if isinstance(command, (StoreFile, DeleteFile)):
                result = decide_file(self.storage, command, now)
            else:
                result = decide(wallet, command, now, self.prices)
                if result is Rejection.price_version_unknown and self._price_feed.poll(until_caught_up=True):
                    result = decide(wallet, command, now, self.prices)
            if isinstance(result, Rejection):
                self.rejections[result.value] += 1
                self._count(command, result.value, ())
                logger.warning(
                    "command %s rejected: %s",
                    command.command_id,
                    result.value,
                    extra=about(command.correlation_id, command.org_id),
                )
                result = [rejected(command, result, now)]
            else:
                refused = next((e for e in result if isinstance(e, HoldRejected)), None)
                self._count(command, refused.code if refused is not None else "accepted", result)
                if logger.isEnabledFor(logging.DEBUG):
                    logger.debug(
                        "decided %s: %s",
                        type(command).__struct_config__.tag,
                        ", ".join(str(type(e).__struct_config__.tag) for e in result) or "nothing new",
                        extra=about(command.correlation_id, command.org_id),
                    )
            for event in [*result, *decide_auto_topup(wallet, now, command.command_id)]:
                self._apply(event)
                outputs += self._emit(event)
            # Money an expired grant kept for a hold that just resolved breaks now, before the next
            # command in this batch could reserve it.
            outputs += self._expire_freed_grants(wallet, now)
        return outputs

    def _read(self, records: list[Record], partition_times: dict[int, datetime]) -> tuple[list[bytes], list[datetime]]:
        """The commands of a poll and when the log took each, never earlier in a partition than what
        was decided before it (a topic created with CreateTime carries the producers' clocks)."""
        values: list[bytes] = []
        appended: list[datetime] = []
        for record in records:
            taken = datetime.fromtimestamp(record.timestamp_ms / 1000, UTC)
            at = max(taken, partition_times.get(record.partition, epoch))
            partition_times[record.partition] = at
            values.append(record.value)
            appended.append(at)
        return values, appended

    def _expire_freed_grants(self, wallet: Wallet, now: datetime) -> list[Outgoing]:
        outputs: list[Outgoing] = []
        for grant in list(wallet.grants.values()):
            if grant.expired and grant.remaining_micros > 0:
                for event in decide_grant_expiry(wallet, grant.grant_id, now):
                    self._apply(event)
                    outputs += self._emit(event)
        return outputs

    def _gather(self, processor: Processor, records: list[Record]) -> list[Record]:
        """``records`` and those that follow within ``ledger_linger_ms``, while no request waits on
        any of them (``awaited``) and the batch is not full: one transaction for what would be
        several. A rebalance on the way ends the gathering and drops what came before it from the
        partitions this ledger lost (their new owner reads them from the committed positions; the
        processor does not commit them); what it kept is decided after the rebuild, as read."""
        linger_s = self._settings.ledger_linger_ms / 1000
        batch_max = self._settings.batch_records_max
        if not records or linger_s <= 0 or self._rebuild_needed or any(awaited(r.value) for r in records):
            return records
        deadline = time.monotonic() + linger_s
        while len(records) < batch_max and (left_s := deadline - time.monotonic()) > 0:
            more = processor.poll(batch_max - len(records), max(1, int(left_s * 1000)))
            if self._rebuild_needed:
                return [r for r in records if r.partition in self._owned] + more
            records += more
            if any(awaited(r.value) for r in more):
                break
        return records

    def run(self, stop: threading.Event, ready: threading.Event | None = None) -> None:
        processor = self._log.processor(
            [topics.COMMANDS],
            group=self.group,
            transactional_id=f"tollgate-ledger-{self._settings.instance_id}",
            on_assigned=self._on_assigned,
        )
        next_pricing_check = 0.0
        next_storage_check = 0.0
        # How far each owned partition's commands are read, in the log's time (see expire_due).
        partition_times: dict[int, datetime] = {}
        gauges = Every(gauges_refresh_s)
        try:
            while not stop.is_set():
                records = processor.poll(self._settings.batch_records_max, self._settings.poll_wait_ms)
                records = self._gather(processor, records)
                if self._owned and not self._rebuild_needed:
                    self._lag.tick(processor.lags)
                if gauges.due():
                    self.refresh_gauges()
                if time.monotonic() >= next_pricing_check:
                    # New versions only matter to captures of holds that name them, and an unknown
                    # version makes decide_batch catch up at once; so a periodic look is enough.
                    self._price_feed.poll()
                    next_pricing_check = time.monotonic() + pricing_check_interval_s
                if self._rebuild_needed:
                    self.rebuild(self._rebuild_needed)
                    self._rebuild_needed = set()
                if ready is not None and self._owned:
                    ready.set()
                outputs = self.decide_batch(*self._read(records, partition_times)) if records else []
                if len(records) < self._settings.batch_records_max:
                    # Caught up with every partition for now: the log's time is the clock's.
                    for partition in self._owned:
                        partition_times[partition] = max(partition_times.get(partition, epoch), self._clock())
                outputs += self.expire_due(self._clock(), partition_times)
                if time.monotonic() >= next_storage_check and not self._rebuild_needed:
                    outputs += self.charge_storage(self._clock(), partition_times)
                    next_storage_check = time.monotonic() + storage_check_interval_s
                outputs += self.checkpoints(self._clock())
                if not records and not outputs:
                    continue
                try:
                    processor.commit_transaction(outputs)
                except Exception:
                    logger.exception("ledger transaction failed; aborting and rebuilding owned partitions")
                    processor.abort_transaction()
                    self.rebuild(self._owned)
        finally:
            processor.close()
            self._price_feed.close()
