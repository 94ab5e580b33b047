"""The built-in price book is a version like any published one, and a version never changes: a hold
names the version it was priced by, and `audit verify` re-prices every charge by that name. So the
book's models and prices change only together with its version."""

from __future__ import annotations

import hashlib

import msgspec

from ledger.pricing import default_price_book

# The sha256 of each built-in version's JSON. A new version adds its line; an old line stays, so that
# a version's content is on record.
pinned = {
    "2026-12-03": "375db0b3435f43e36e17ff9191df7407e5f6d634802b55562306177314e16573",
}


def test_the_built_in_book_changes_only_with_its_version() -> None:
    book = default_price_book()
    digest = hashlib.sha256(msgspec.json.encode(book)).hexdigest()
    assert pinned.get(book.version) == digest, (
        f"the built-in price book changed under version {book.version!r}: give it a new version "
        f"(ledger/pricing.py built_in_price_version) and pin {digest} for it here"
    )
