"""The price books a role prices with, kept current from ``tollgate.pricing``: the one follower of
price book versions that the ledger role, the projector and the auditor share (the gateway folds the
same events in its history follower, through ``PriceBooks.apply``)."""

from __future__ import annotations

import time

from eventlog import Consumer, EventLog, topics
from eventlog.read import read_topic
from ledger.pricing import PriceBook, PriceBooks, default_price_book
from schemas.codec import decode_event

catch_up_wait_s_max = 5.0  # how long a lookup waits for a version it does not know yet


class PriceFeed:
    """Every published version (the built-in book first), from a consumer of ``tollgate.pricing``."""

    def __init__(
        self, log: EventLog, client_id: str, batch_records_max: int = 500, books: PriceBooks | None = None
    ) -> None:
        self.books = books if books is not None else PriceBooks(default_price_book())
        self._log = log
        self._client_id = client_id
        self._batch_records_max = batch_records_max
        self._consumer: Consumer | None = None

    def poll(self, until_caught_up: bool = False) -> bool:
        """Fold newly published versions; True when one was added. Every read is bounded; waiting
        for the end of the topic is bounded by ``catch_up_wait_s_max``."""
        if self._consumer is None:
            self._consumer = self._log.consumer([topics.PRICING], client_id=self._client_id)
        added = False
        deadline = time.monotonic() + catch_up_wait_s_max
        while True:
            for record in self._consumer.poll(self._batch_records_max, 0):
                added = self.books.apply(decode_event(record.value)) or added
            if not until_caught_up or self._consumer.caught_up() or time.monotonic() > deadline:
                return added

    def at_version(self, version: str) -> PriceBook | None:
        """The book of ``version``, reading the topic to its end first when it is not known yet."""
        book = self.books.at_version(version)
        if book is None:
            self.poll(until_caught_up=True)
            book = self.books.at_version(version)
        return book

    def close(self) -> None:
        if self._consumer is not None:
            self._consumer.close()
            self._consumer = None


def load_price_books(log: EventLog) -> PriceBooks:
    """Every version on the log, read once to its end (audits and replays)."""
    books = PriceBooks(default_price_book())
    for batch in read_topic(log, topics.PRICING, quiet=True):
        for record in batch:
            books.apply(decode_event(record.value))
    return books
