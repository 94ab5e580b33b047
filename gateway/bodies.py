"""Response bodies more than one route context shows."""

from __future__ import annotations

from typing import Any

from gateway.core import GatewayCore
from ledger.money import micros_to_decimal
from ledger.wallet import Grant
from schemas.moments import iso_or_none


def balance_card(core: GatewayCore, org_id: str) -> dict[str, Any]:
    """The balance, split into available, held and by grant (burn order first)."""
    wallet = core.balances.get(org_id)
    grants = sorted(wallet.grants.values(), key=Grant.burn_key)
    # Charges this instance answered with and the ledger has not recorded yet (gateway/pending.py).
    pending = core.pending.of(org_id)
    balance = wallet.balance_micros - pending.charged
    # Held: what requests in flight hold. Gateways' slices (quota leases, gateway/quota.py) are
    # available to requests, through those gateways, and shown apart as reserved_by_gateways.
    sliced = wallet.sliced_micros - pending.sliced
    held = wallet.holds_micros - pending.held
    topup = wallet.auto_topup
    return {
        "amount": micros_to_decimal(balance),
        "amount_micros": balance,
        "available": micros_to_decimal(balance - held),
        "available_micros": balance - held,
        "held": micros_to_decimal(held),
        "held_micros": held,
        "reserved_by_gateways_micros": sliced,
        # Of held: the intervals running GPU instances hold (ledger/resources.py).
        "held_by_resources_micros": sum(r.reserved_micros for r in wallet.resources.values() if r.running),
        "credit_limit_micros": wallet.credit_limit_micros,
        "spendable_micros": balance - held + wallet.credit_limit_micros,
        "currency": "USD",
        "grants": [
            {
                "id": grant.grant_id,
                "kind": grant.kind,
                "amount_micros": grant.amount_micros,
                "remaining_micros": grant.remaining_micros,
                "expires_at": iso_or_none(grant.expires_at),
                "priority": grant.priority,
                "expired": grant.expired,
            }
            for grant in grants
            if grant.remaining_micros > 0
        ],
        "auto_topup_enabled": wallet.auto_topup is not None,
        # In credits as the reference shows them; the exact micros beside them. A top-up "to a target"
        # has no fixed amount (null), its target says what it tops up to.
        "auto_topup_threshold": micros_to_decimal(topup.threshold_micros) if topup else None,
        "auto_topup_amount": micros_to_decimal(topup.amount_micros) if topup and topup.amount_micros else None,
        "auto_topup_target": micros_to_decimal(topup.target_micros) if topup and topup.target_micros else None,
        "auto_topup_threshold_micros": wallet.auto_topup.threshold_micros if wallet.auto_topup else None,
        "auto_topup_amount_micros": wallet.auto_topup.amount_micros or None if wallet.auto_topup else None,
        "auto_topup_target_micros": wallet.auto_topup.target_micros or None if wallet.auto_topup else None,
        "updated_at": iso_or_none(core.balances.updated_at.get(org_id)),
    }
