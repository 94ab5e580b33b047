"""The ledger's tamper evidence as the gateway sees it: each partition's hash chain, checked link by
link as the gateway folds the ledger topic, and its signed checkpoints verified with the ledger's
public key. The usage page shows it as the audit status ("records verified by signature, last
checkpoint at ..."); ``tollgate audit verify`` remains the full audit (balances, charges, prices).

A record is *verified* once a checkpoint with a valid signature covers it and every link up to that
checkpoint held; records after the last checkpoint are chained but not yet signed."""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass
from datetime import datetime

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from eventlog import Record, topics
from ledger.chain import genesis_hash, record_hash, signature_valid
from schemas.events import ChainCheckpoint, Event, LedgerFact

logger = logging.getLogger(__name__)


@dataclass(slots=True)
class PartitionChain:
    records: int = 0
    head: str = genesis_hash
    verified_records: int = 0  # covered by the last checkpoint whose signature and links held
    last_checkpoint_at: datetime | None = None
    broken_at_offset: int | None = None  # the first record whose link did not hold
    bad_signatures: int = 0

    @property
    def unsigned_records(self) -> int:
        """Records since the last valid checkpoint (the checkpoint record itself is not counted)."""
        return max(self.records - self.verified_records - (1 if self.last_checkpoint_at else 0), 0)


class ChainWatch:
    def __init__(self, public_key: Ed25519PublicKey | None) -> None:
        self.public_key = public_key
        self.partitions: dict[int, PartitionChain] = {}
        self._lock = threading.Lock()

    def observe(self, record: Record, event: Event) -> None:
        """Every record of every topic the history follower reads; only the ledger's are chained."""
        if record.topic != topics.LEDGER:
            return
        with self._lock:
            chain = self.partitions.get(record.partition)
            if chain is None:
                chain = self.partitions[record.partition] = PartitionChain()
            linked = isinstance(event, LedgerFact) and event.prev_hash == chain.head
            if not linked and chain.broken_at_offset is None:
                chain.broken_at_offset = record.offset
                logger.error("the ledger chain of partition %d breaks at offset %d", record.partition, record.offset)
            if isinstance(event, ChainCheckpoint):
                self._checkpoint(record.partition, chain, event)
            chain.records += 1
            chain.head = record_hash(record.value)

    def _checkpoint(self, partition: int, chain: PartitionChain, checkpoint: ChainCheckpoint) -> None:
        where = (checkpoint.partition, checkpoint.count, checkpoint.head)
        covers = where == (partition, chain.records, chain.head)
        signed = self.public_key is not None and signature_valid(
            self.public_key, partition, checkpoint.count, checkpoint.head, checkpoint.signature
        )
        if covers and signed and chain.broken_at_offset is None:
            chain.verified_records = chain.records
            chain.last_checkpoint_at = checkpoint.occurred_at
        elif self.public_key is not None:
            chain.bad_signatures += 1

    def partition(self, partition: int) -> PartitionChain:
        with self._lock:
            found = self.partitions.get(partition, PartitionChain())
            return PartitionChain(
                found.records,
                found.head,
                found.verified_records,
                found.last_checkpoint_at,
                found.broken_at_offset,
                found.bad_signatures,
            )
