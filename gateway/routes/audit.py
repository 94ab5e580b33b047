"""Audit endpoints: the ledger's public key (to verify checkpoints) and a balance as of a past moment."""

from __future__ import annotations

import asyncio
from typing import Any

from litestar import Request, Response, get
from litestar.params import FromPath

from eventlog import partition_for, topics
from eventlog.read import read_topic
from gateway.core import Core
from gateway.errors import ApiError
from gateway.http import json_response, moment_param
from ledger.audit import Auditor
from ledger.chain import load_public_key, public_key_jwk, public_key_pem
from ledger.money import micros_to_decimal


@get("/v1/audit/public-key", operation_id="getLedgerPublicKey", opt={"scope": "public", "rate": "none"})
async def ledger_public_key(core: Core) -> Response[bytes]:
    """The key that signs the ledger's chain checkpoints, as a JWK set and as PEM."""
    path = core.settings.signing_key_path
    if not path.exists():
        raise ApiError(404, "This gateway has no ledger key configured (TOLLGATE_LEDGER_SIGNING_KEY_FILE).")
    public_key = load_public_key(path.read_bytes())
    return json_response({"keys": [public_key_jwk(public_key)], "pem": public_key_pem(public_key)})


@get("/v1/organizations/{org_id:str}/balance-at", operation_id="getOrganizationBalanceAt", opt={"scope": "admin:read"})
async def balance_at(request: Request[Any, Any, Any], core: Core, org_id: FromPath[str]) -> Response[bytes]:
    """The balance as of ``at``, derived from the organization's ledger partition (read to its end)."""
    at = moment_param(request, "at")
    if at is None:
        raise ApiError(
            400,
            "Give 'at' as an ISO 8601 moment, e.g. 2026-11-01T00:00:00Z.",
            code="missing_required_parameter",
            param="at",
        )
    partition = partition_for(org_id.encode(), core.log.partitions)

    def derive() -> Auditor:
        auditor = Auditor(public_keys=None, prices=core.prices, until=at)
        for batch in read_topic(core.log, topics.LEDGER, partitions=[partition], quiet=True):
            auditor.feed(record for record in batch if record.key == org_id.encode())
        return auditor

    derived = (await asyncio.to_thread(derive)).balance(org_id)
    return json_response(
        {
            "org_id": org_id,
            "at": at.isoformat().replace("+00:00", "Z"),
            "amount": micros_to_decimal(derived["amount_micros"]),
            **{k: v for k, v in derived.items() if not k.startswith("book_")},
        }
    )


route_handlers = [ledger_public_key, balance_at]
