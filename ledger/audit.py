"""Audit: prove every balance from the ledger topic alone.

``Auditor`` is fed the ledger records of each partition in offset order (any interleaving of
partitions). It checks the hash chain and the signed checkpoints (``ledger/chain.py``), re-derives
every wallet with the ledger's own ``evolve`` and the double-entry book, checks that the book sums to
zero and that every capture is exactly its priced usage under the price book version its hold named.
Every problem becomes a ``Finding`` naming the record; the first one is what ``tollgate audit verify``
reports. IO (reading the log, asking the gateway) lives in ``ledger/audit_cli.py``.

The ledger signs a checkpoint at least every ``checkpoint_records_max`` records of a partition, so a
longer run without a valid one (``unsigned_records_max``), in the middle or at the tail, is a finding
too: it is what rewriting the chain after a forged record and deleting the checkpoints it broke
leaves behind. What no log alone can show is the tail of a partition cut off together with its last
checkpoints; comparing with the live balances (``audit verify --gateway``) does.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime

import msgspec
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from eventlog import Record
from ledger.accounts import Book, held_account, wallet_account
from ledger.chain import ChainHead, key_id_of, signature_valid
from ledger.pricing import PriceBooks, price_micros
from ledger.resources import charge_problem
from ledger.wallet import HoldStatus, Wallet, evolve
from schemas.codec import decode_event
from schemas.events import (
    ChainCheckpoint,
    Event,
    HoldCaptured,
    LedgerFact,
    PlanRenewed,
    PlanSubscribed,
    ResourceCharged,
    ResourceEvent,
    ResourceStarted,
)

findings_max = 1000  # a broken log can break every later link; the first ones are what matter


@dataclass(frozen=True, slots=True)
class Finding:
    partition: int
    offset: int
    event_id: str
    kind: str
    message: str

    def __str__(self) -> str:
        return (
            f"partition {self.partition} offset {self.offset} event {self.event_id or '?'}: {self.kind}: {self.message}"
        )


@dataclass(slots=True)
class PartitionAudit:
    records: int = 0
    checkpoints: int = 0
    signed_records: int = 0  # records covered by the last valid checkpoint
    unsigned_run: int = 0  # records since the last valid checkpoint (that checkpoint not counted)
    unsigned_run_max: int = 0  # the longest such run in the partition so far
    run_start: tuple[int, str] = (0, "")  # (offset, event id) of the first record of the current run


@dataclass(slots=True)
class Auditor:
    public_keys: list[Ed25519PublicKey] | None  # every key the ledger signed with (rotation); None: skip signatures
    prices: PriceBooks
    until: datetime | None = None  # fold only events that occurred at or before this moment
    # The longest run of records a partition may hold without a valid checkpoint (the ledger's
    # checkpoint_records_max); None: not checked. Needs public_keys (validity is the signature's).
    unsigned_records_max: int | None = None
    wallets: dict[str, Wallet] = field(default_factory=dict)
    book: Book = field(default_factory=Book)
    partitions: dict[int, PartitionAudit] = field(default_factory=dict)
    findings: list[Finding] = field(default_factory=list)
    captures_checked: int = 0
    time_charges_checked: int = 0  # resource starts and intervals, plan months (ledger/resources.py)
    _chains: dict[int, ChainHead] = field(default_factory=dict)
    _previous: dict[int, tuple[int, str]] = field(default_factory=dict)  # partition -> (offset, event id)

    @property
    def ok(self) -> bool:
        return not self.findings

    def _find(self, record: Record, event_id: str, kind: str, message: str) -> None:
        if len(self.findings) < findings_max:
            self.findings.append(Finding(record.partition, record.offset, event_id, kind, message))

    def feed(self, records: Iterable[Record]) -> None:
        for record in records:
            self._feed_one(record)

    def _feed_one(self, record: Record) -> None:
        audit = self.partitions.setdefault(record.partition, PartitionAudit())
        audit.records += 1
        chain = self._chains.setdefault(record.partition, ChainHead())
        try:
            event = decode_event(record.value)
        except msgspec.DecodeError as error:
            self._find(record, "", "undecodable", f"the record is not an event: {error}")
            chain.advance(record.value, "")
            self._previous[record.partition] = (record.offset, "?")
            self._extend_unsigned_run(record, "?", audit)
            return
        if not isinstance(event, LedgerFact):
            self._find(record, event.event_id, "foreign_event", f"{type(event).__name__} does not belong on the ledger")
        elif event.prev_hash != chain.head:
            before = self._previous.get(record.partition)
            follows = f"event {before[1]} at offset {before[0]}" if before is not None else "the start of the partition"
            self._find(
                record,
                event.event_id,
                "broken_chain",
                f"links to {event.prev_hash[:12] or 'nothing'} but follows {follows} (hash {chain.head[:12]}): "
                "that event was altered, or events were removed, inserted or moved between the two",
            )
        if isinstance(event, ChainCheckpoint) and self._check_checkpoint(record, event, chain, audit):
            self._end_unsigned_run(record.partition, audit, record.offset)
        else:
            self._extend_unsigned_run(record, event.event_id, audit)
        chain.advance(record.value, event.org_id)
        self._previous[record.partition] = (record.offset, event.event_id)
        if self.until is None or event.occurred_at <= self.until:
            self._fold(record, event)

    def _check_checkpoint(
        self, record: Record, checkpoint: ChainCheckpoint, chain: ChainHead, audit: PartitionAudit
    ) -> bool:
        """Whether ``checkpoint`` signs the chain as it stands, with one of the ledger's keys."""
        audit.checkpoints += 1
        if (checkpoint.partition, checkpoint.count, checkpoint.head) != (record.partition, chain.count, chain.head):
            self._find(
                record,
                checkpoint.event_id,
                "checkpoint_mismatch",
                f"signs {checkpoint.count} records ending in {checkpoint.head[:12]}, but {chain.count} records "
                f"ending in {chain.head[:12]} precede it",
            )
            return False
        if self.public_keys is None:
            return False
        key = next((k for k in self.public_keys if key_id_of(k) == checkpoint.key_id), None)
        if key is None or not signature_valid(
            key, checkpoint.partition, checkpoint.count, checkpoint.head, checkpoint.signature
        ):
            self._find(record, checkpoint.event_id, "bad_signature", "the checkpoint is not signed by the ledger's key")
            return False
        audit.signed_records = chain.count
        return True

    def _extend_unsigned_run(self, record: Record, event_id: str, audit: PartitionAudit) -> None:
        if audit.unsigned_run == 0:
            audit.run_start = (record.offset, event_id)
        audit.unsigned_run += 1
        audit.unsigned_run_max = max(audit.unsigned_run_max, audit.unsigned_run)

    def _end_unsigned_run(self, partition: int, audit: PartitionAudit, closed_at: int | None) -> None:
        """A valid checkpoint (at offset ``closed_at``) or the end of the partition (None) closes the
        run. Too long a run is a finding named by its first record: a forged record lies at or after it."""
        bound = self.unsigned_records_max
        if bound is not None and self.public_keys is not None and audit.unsigned_run > bound:
            offset, event_id = audit.run_start
            until = "the end of the partition" if closed_at is None else f"the checkpoint at offset {closed_at}"
            if len(self.findings) < findings_max:
                self.findings.append(
                    Finding(
                        partition,
                        offset,
                        event_id,
                        "unsigned_run",
                        f"{audit.unsigned_run} records from here to {until} carry no valid signed checkpoint, "
                        f"but the ledger signs one at least every {bound}: checkpoints were removed (how a "
                        "rewritten chain hides) or the ledger did not write this log",
                    )
                )
        audit.unsigned_run = 0

    def _fold(self, record: Record, event: Event) -> None:
        if isinstance(event, ChainCheckpoint):
            return
        wallet = self.wallets.get(event.org_id)
        if wallet is None:
            wallet = self.wallets[event.org_id] = Wallet(org_id=event.org_id)
        if isinstance(event, HoldCaptured):
            self._check_capture(record, wallet, event)
        elif isinstance(event, ResourceEvent):
            if isinstance(event, (ResourceStarted, ResourceCharged, PlanSubscribed, PlanRenewed)):
                self.time_charges_checked += 1
            problem = charge_problem(wallet, event, self.prices)
            if problem is not None:
                self._find(record, event.event_id, "resource_charge_mismatch", problem)
        try:
            evolve(wallet, event)
            self.book.apply(event)
        except (AssertionError, KeyError) as error:
            self._find(record, event.event_id, "impossible_event", f"{type(event).__name__} cannot follow: {error!r}")

    def _check_capture(self, record: Record, wallet: Wallet, captured: HoldCaptured) -> None:
        self.captures_checked += 1
        hold = wallet.holds.get(captured.hold_id)
        book = self.prices.at_version(captured.price_version)
        price = book.model(captured.model) if book is not None else None
        if hold is None or price is None:
            self._find(record, captured.event_id, "capture_unpriceable", "no hold or no price for this capture")
            return
        served_by_fallback = captured.requested_model not in ("", hold.model)
        if book is None or not book.may_serve(hold.model, captured.model) or served_by_fallback:
            self._find(
                record,
                captured.event_id,
                "capture_model_mismatch",
                f"charged at {captured.model}, which may not serve the hold's model {hold.model}",
            )
            return
        priced = price_micros(price, captured.units)
        charged = min(priced, hold.amount_micros)
        if (captured.priced_micros, captured.amount_micros, captured.released_micros) != (
            priced,
            charged,
            hold.amount_micros - charged,
        ):
            self._find(
                record,
                captured.event_id,
                "capture_mismatch",
                f"charged {captured.amount_micros} (priced {captured.priced_micros}) but the usage prices at "
                f"{priced} and the hold was {hold.amount_micros}",
            )

    def merge(self, other: Auditor) -> None:
        """Take in what another auditor found over other partitions of the same log (a parallel
        verify): partitions hold whole organizations, so wallets never overlap, and books add up."""
        assert not self.partitions.keys() & other.partitions.keys(), "each partition is audited once"
        assert not self.wallets.keys() & other.wallets.keys(), "an organization lives in one partition"
        self.wallets.update(other.wallets)
        for account, amount in other.book.balances.items():
            self.book.balances[account] += amount
        self.partitions.update(other.partitions)
        self._chains.update(other._chains)
        self._previous.update(other._previous)
        self.findings.extend(other.findings[: findings_max - len(self.findings)])
        self.captures_checked += other.captures_checked
        self.time_charges_checked += other.time_charges_checked

    def drop_resolved_holds(self) -> None:
        """Forget holds that are captured or released: a finished fold reports balances, and resolved
        holds are most of an auditor's memory (and of what a parallel verify sends back)."""
        for wallet in self.wallets.values():
            wallet.holds = {hold_id: hold for hold_id, hold in wallet.holds.items() if hold.status is HoldStatus.open}

    def finish(self) -> None:
        """Checks that need the whole log: no partition ends in too long an unsigned run, and the book
        sums to zero."""
        for partition, audit in sorted(self.partitions.items()):
            tail = audit.unsigned_run
            self._end_unsigned_run(partition, audit, None)
            audit.unsigned_run = tail  # still the tail: unsigned_records() reports it
        # The first finding is the first by partition and offset, however partitions interleaved
        # (Kafka delivers them mixed; a parallel verify reads them apart).
        self.findings.sort(key=lambda finding: (finding.partition, finding.offset))
        if self.book.total_micros() != 0:
            self.findings.append(
                Finding(-1, -1, "", "unbalanced_book", f"the accounts sum to {self.book.total_micros()}, not 0")
            )

    def balance(self, org_id: str) -> dict[str, int]:
        wallet = self.wallets.get(org_id) or Wallet(org_id=org_id)
        # As the balance API shows it: held is what requests in flight hold; gateways' slices are
        # available to requests (through those gateways), and shown apart.
        return {
            "amount_micros": wallet.balance_micros,
            "available_micros": wallet.balance_micros - wallet.holds_micros,
            "held_micros": wallet.holds_micros,
            "sliced_micros": wallet.sliced_micros,
            "captured_micros": wallet.captured_micros,
            "book_wallet_micros": self.book.balance(wallet_account(org_id)),
            "book_held_micros": self.book.balance(held_account(org_id)),
        }

    def unsigned_records(self) -> int:
        """Records after each partition's last valid checkpoint: protected by the chain, not yet signed."""
        return sum(audit.unsigned_run for audit in self.partitions.values())
