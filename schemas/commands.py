"""Commands to the ledger role. Imperative names; each carries an id that makes it idempotent."""

from __future__ import annotations

from datetime import datetime
from typing import Literal

import msgspec

from schemas.prices import Route
from schemas.units import Units


class Command(msgspec.Struct, frozen=True, kw_only=True, tag_field="type"):
    command_id: str
    org_id: str
    issued_at: datetime
    correlation_id: str = ""


class GrantCredits(Command, frozen=True, kw_only=True, tag="grant_credits.v1"):
    grant_id: str
    amount_micros: int
    kind: Literal["paid", "promo"]
    expires_at: datetime | None = None
    priority: int = 0
    reference: str = ""


class RefundCredits(Command, frozen=True, kw_only=True, tag="refund_credits.v1"):
    refund_id: str
    amount_micros: int
    reason: str
    reference: str  # the hold (request) id whose charge this refunds


class AdjustCredits(Command, frozen=True, kw_only=True, tag="adjust_credits.v1"):
    adjustment_id: str
    amount_micros: int  # signed
    reason: str
    reference: str = ""


class SetCreditLimit(Command, frozen=True, kw_only=True, tag="set_credit_limit.v1"):
    limit_micros: int


class ConfigureAutoTopUp(Command, frozen=True, kw_only=True, tag="configure_auto_topup.v1"):
    enabled: bool
    threshold_micros: int
    amount_micros: int = 0
    target_micros: int = 0


class JobSpec(msgspec.Struct, frozen=True, kw_only=True):
    """What to run once the hold is placed; the ledger queues it in the same transaction."""

    job_id: str
    token_id: str
    model: str
    endpoint: str
    pool: str
    payload: msgspec.Raw
    attempts_max: int = 3
    stream: bool = False
    # The gateway dispatched the job itself (against its slice): the ledger records the hold and
    # does not queue the job again.
    dispatched: bool = False
    # Where the worker turns when the model's upstream fails, in order (the price book's fallbacks).
    fallbacks: tuple[Route, ...] = ()
    # The model's context window in tokens (0: not checked): a prompt and output limit that do not fit
    # fail the job (nothing charged), as a real server refuses them.
    context_length: int = 0
    # Where the request came from, as EmpirioLabs' usage events name it ("": a direct API request;
    # "playground": a chat saved as a Playground conversation; "hosted_agents": a hosted agent's message),
    # and what it names (the conversation's or the agent's id). Carried by the hold to its usage row.
    source: str = ""
    source_id: str = ""


class PlaceHold(Command, frozen=True, kw_only=True, tag="place_hold.v1"):
    hold_id: str
    request_id: str
    amount_micros: int
    ttl_s: int
    job: JobSpec
    price_version: str = ""
    slice_id: str = ""  # carve the hold out of this slice (if it is open and covers it), else the wallet


class GrantSlice(Command, frozen=True, kw_only=True, tag="grant_slice.v1"):
    """A gateway instance asks for a slice of the balance to place holds against in memory."""

    slice_id: str
    instance_id: str
    amount_micros: int  # asked for: the ledger grants at most its share of what is spendable
    ttl_s: int
    minimum_micros: int = 1  # less than this is no use to the gateway: refused instead
    # All of amount_micros or nothing, not limited to the gateway's share: a batch's reservation for
    # its worst case, which its lines' holds are carved from (gateway/batches.py).
    whole: bool = False


class ReturnSlice(Command, frozen=True, kw_only=True, tag="return_slice.v1"):
    slice_id: str


class CaptureHold(Command, frozen=True, kw_only=True, tag="capture_hold.v1"):
    hold_id: str
    job_id: str
    units: Units
    latency_ms: int = 0
    # The model that served the job when a fallback did ("": the hold's model). It prices the
    # capture, from the hold's price book version, which must list it as a fallback of the hold's.
    model: str = ""


class ReleaseHold(Command, frozen=True, kw_only=True, tag="release_hold.v1"):
    hold_id: str
    reason: str


class StartJob(Command, frozen=True, kw_only=True, tag="start_job.v1"):
    """A worker starts (new ``run_id``) or still runs (same ``run_id``: a heartbeat) the hold's job."""

    hold_id: str
    job_id: str
    run_id: str
    worker_id: str
    lease_s: int


class CancelJob(Command, frozen=True, kw_only=True, tag="cancel_job.v1"):
    hold_id: str
    job_id: str
    reason: str


class StoreFile(Command, frozen=True, kw_only=True, tag="store_file.v1"):
    """Record a file whose bytes the gateway put in the blob store; refused past ``limit_bytes`` of
    the organization's storage (the ledger, one writer per organization, keeps the count exact)."""

    file_id: str
    filename: str
    purpose: str
    bytes: int
    sha256: str
    blob_key: str
    limit_bytes: int
    token_id: str = ""


class DeleteFile(Command, frozen=True, kw_only=True, tag="delete_file.v1"):
    file_id: str


# --- time-metered resources and monthly plans (issue 18; decided in ledger/resources.py) ----------


class StartResource(Command, frozen=True, kw_only=True, tag="start_resource.v1"):
    """Start a run of a resource (a new one, or a stopped one again): refused with
    ``insufficient_credits`` unless the balance covers its first interval."""

    resource_id: str
    token_id: str
    kind: str  # "gpu"
    resource_class: str
    quantity: int
    interval_s: int
    price_version: str = ""
    label: str = ""
    image: str = ""
    disk_gb: int = 0


class StopResource(Command, frozen=True, kw_only=True, tag="stop_resource.v1"):
    """Its owner stops a running resource: charged to the second, the rest of the interval released."""

    resource_id: str
    reason: str = "stopped"


class SubscribePlan(Command, frozen=True, kw_only=True, tag="subscribe_plan.v1"):
    subscription_id: str
    token_id: str
    kind: str  # "hosted_agent"
    plan_slug: str
    price_version: str = ""
    name: str = ""
    agent_type: str = ""
    default_provider: str = ""


class CancelPlan(Command, frozen=True, kw_only=True, tag="cancel_plan.v1"):
    subscription_id: str
    reason: str = "cancelled"


ResourceCommand = StartResource | StopResource | SubscribePlan | CancelPlan


AnyCommand = (
    GrantCredits
    | RefundCredits
    | AdjustCredits
    | SetCreditLimit
    | ConfigureAutoTopUp
    | PlaceHold
    | CaptureHold
    | ReleaseHold
    | StartJob
    | CancelJob
    | GrantSlice
    | ReturnSlice
    | ResourceCommand
)

# Files are the ledger's too (storage is metered from them), decided apart from the wallet (ledger/storage.py).
FileCommand = StoreFile | DeleteFile
LedgerCommand = AnyCommand | FileCommand
