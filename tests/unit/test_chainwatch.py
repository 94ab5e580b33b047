"""The usage page's audit status (gateway/chainwatch.py): records are verified only once a checkpoint
with a valid signature covers them and every link up to it held; a broken link or a forged
checkpoint is named, never counted as verified."""

from __future__ import annotations

from datetime import UTC, datetime

import msgspec
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from eventlog import Record, topics
from gateway.chainwatch import ChainWatch
from ledger.chain import ChainHead, Signer, genesis_hash
from schemas.codec import encode
from schemas.events import CreditsGranted, LedgerFact

now = datetime(2026, 12, 1, tzinfo=UTC)


class Partition:
    """Ledger records of one partition, chained as the ledger appends them."""

    def __init__(self, watch: ChainWatch, signer: Signer) -> None:
        self.watch, self.signer, self.chain, self.offset = watch, signer, ChainHead(), 0

    def append(self, event: LedgerFact, prev_hash: str | None = None) -> None:
        linked = msgspec.structs.replace(event, prev_hash=self.chain.head if prev_hash is None else prev_hash)
        value = encode(linked)
        self.watch.observe(Record(topics.LEDGER, 0, self.offset, b"org_a", value, 0), linked)
        self.chain.advance(value, "org_a")
        self.offset += 1

    def grant(self, n: int, prev_hash: str | None = None) -> None:
        grant = CreditsGranted(
            event_id=f"evt_{n}", occurred_at=now, org_id="org_a", grant_id=f"g{n}", amount_micros=n, kind="paid"
        )
        self.append(grant, prev_hash)

    def checkpoint(self, signer: Signer | None = None) -> None:
        self.append((signer or self.signer).checkpoint(0, self.chain, now))


def test_records_are_verified_once_a_signed_checkpoint_covers_them() -> None:
    signer = Signer(Ed25519PrivateKey.generate())
    watch = ChainWatch(signer.key.public_key())
    ledger = Partition(watch, signer)
    for n in range(3):
        ledger.grant(n)
    assert watch.partition(0).verified_records == 0 and watch.partition(0).unsigned_records == 3
    ledger.checkpoint()
    ledger.grant(3)
    chain = watch.partition(0)
    assert (chain.records, chain.verified_records, chain.unsigned_records) == (5, 3, 1)
    assert chain.last_checkpoint_at == now and chain.broken_at_offset is None and chain.bad_signatures == 0


def test_a_checkpoint_signed_by_another_key_verifies_nothing() -> None:
    signer = Signer(Ed25519PrivateKey.generate())
    watch = ChainWatch(signer.key.public_key())
    ledger = Partition(watch, signer)
    ledger.grant(0)
    ledger.checkpoint(Signer(Ed25519PrivateKey.generate()))
    chain = watch.partition(0)
    assert chain.verified_records == 0 and chain.bad_signatures == 1 and chain.last_checkpoint_at is None


def test_a_broken_link_is_named_and_no_later_checkpoint_verifies_past_it() -> None:
    signer = Signer(Ed25519PrivateKey.generate())
    watch = ChainWatch(signer.key.public_key())
    ledger = Partition(watch, signer)
    ledger.grant(0)
    ledger.grant(1, prev_hash=genesis_hash)  # as if a record before it had been removed
    ledger.checkpoint()  # signed over the chain as it stands: the link still does not hold
    chain = watch.partition(0)
    assert chain.broken_at_offset == 1 and chain.verified_records == 0


def test_without_the_public_key_links_are_checked_and_nothing_is_verified() -> None:
    signer = Signer(Ed25519PrivateKey.generate())
    watch = ChainWatch(None)
    ledger = Partition(watch, signer)
    ledger.grant(0)
    ledger.checkpoint()
    chain = watch.partition(0)
    assert chain.records == 2 and chain.verified_records == 0 and chain.broken_at_offset is None
