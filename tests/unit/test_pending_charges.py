"""Read-your-writes on one gateway instance: the balance card it shows right after its answer (or its
dispatch) is the card the ledger's events will make, before they arrive (gateway/pending.py)."""

from __future__ import annotations

from gateway.pending import Overlay, PendingCharges
from ledger.wallet import Wallet, decide, evolve
from projections.views import BalancesView
from schemas.commands import AnyCommand
from schemas.events import Event, HoldCaptured
from tests.unit.test_wallet import book, capture, carved, grant, hold, now, org, slice_of


def decided(wallet: Wallet, command: AnyCommand) -> list[Event]:
    outcome = decide(wallet, command, now, book)
    assert isinstance(outcome, list), outcome
    return outcome


class Instance:
    """The ledger's wallet, and one gateway's view that folds its events only when told to."""

    def __init__(self) -> None:
        self.ledger = Wallet(org_id=org)
        self.view = BalancesView()
        self.pending = PendingCharges(self.view)

    def ledger_decides(self, command: AnyCommand) -> list[Event]:
        events = decided(self.ledger, command)
        for event in events:
            evolve(self.ledger, event)
        return events

    def fold(self, events: list[Event]) -> None:
        for event in events:
            self.pending.apply(event)

    def card(self) -> tuple[int, int, int]:
        """(balance, held, reserved by gateways) as the instance shows them."""
        wallet = self.view.get(org)
        overlay: Overlay = self.pending.of(org)
        return (
            wallet.balance_micros - overlay.charged,
            wallet.holds_micros - overlay.held,
            wallet.sliced_micros - overlay.sliced,
        )

    def truth(self) -> tuple[int, int, int]:
        return (self.ledger.balance_micros, self.ledger.holds_micros, self.ledger.sliced_micros)


def test_a_hold_dispatched_against_a_slice_is_held_before_the_ledger_carves_it() -> None:
    instance = Instance()
    instance.fold(instance.ledger_decides(grant(1_000_000)))
    instance.fold(instance.ledger_decides(slice_of(400_000)))
    assert instance.card() == instance.truth() == (1_000_000, 0, 400_000)

    instance.pending.carving(org, "h1", 5_000)  # dispatched; its PlaceHold is on the way
    placed = instance.ledger_decides(carved(5_000))
    assert instance.card() == instance.truth() == (1_000_000, 5_000, 395_000)
    instance.fold(placed)
    assert instance.card() == instance.truth()

    captured = instance.ledger_decides(capture("h1"))
    charge = next(e for e in captured if isinstance(e, HoldCaptured)).amount_micros
    instance.pending.answered(org, "h1", 5_000, charge, carved=True)
    assert instance.card() == instance.truth() == (1_000_000 - charge, 0, 400_000 - charge)
    instance.fold(captured)
    assert instance.card() == instance.truth()


def test_an_answer_that_comes_before_the_hold_is_carved_shows_only_its_charge() -> None:
    instance = Instance()
    instance.fold(instance.ledger_decides(grant(1_000_000)))
    instance.fold(instance.ledger_decides(slice_of(400_000)))
    instance.pending.carving(org, "h1", 5_000)
    events = instance.ledger_decides(carved(5_000)) + instance.ledger_decides(capture("h1"))
    charge = next(e for e in events if isinstance(e, HoldCaptured)).amount_micros
    instance.pending.answered(org, "h1", 5_000, charge, carved=True)
    assert instance.card() == instance.truth() == (1_000_000 - charge, 0, 400_000 - charge)
    for event in events:
        instance.fold([event])
        assert instance.card() == instance.truth()


def test_a_hold_through_the_ledger_shows_once_placed_and_its_charge_once_answered() -> None:
    instance = Instance()
    instance.fold(instance.ledger_decides(grant(1_000_000)))
    instance.fold(instance.ledger_decides(hold(5_000)))  # the gateway waits for this one
    assert instance.card() == instance.truth() == (1_000_000, 5_000, 0)
    captured = instance.ledger_decides(capture("h1"))
    charge = next(e for e in captured if isinstance(e, HoldCaptured)).amount_micros
    instance.pending.answered(org, "h1", 5_000, charge, carved=False)
    assert instance.card() == instance.truth() == (1_000_000 - charge, 0, 0)
    instance.fold(captured)
    assert instance.card() == instance.truth()
    assert instance.pending.of(org) == Overlay()
