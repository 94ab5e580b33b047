"""Events: the immutable facts on the log.

Every event is a frozen, keyword-only msgspec Struct in one tagged union. The tag (`type` on the
wire) carries a version suffix so that an old shape can be upcast when read. JSON on the wire, so
that kafka-console-consumer and friends can read the log as it is.

Schema evolution rules: new fields get defaults; a field never changes type; a renamed field keeps
its wire name (``msgspec.field(name=...)``).
"""

from __future__ import annotations

from datetime import datetime
from typing import Literal

import msgspec

from schemas.prices import PriceBook, Route
from schemas.units import Units


class Event(msgspec.Struct, frozen=True, kw_only=True, tag_field="type"):
    """The envelope every event shares."""

    event_id: str
    occurred_at: datetime
    org_id: str
    correlation_id: str = ""
    causation_id: str = ""


# --- tenants (written by the gateway's admin API) -------------------------------------------------


class OrganizationCreated(Event, frozen=True, kw_only=True, tag="organization.created.v1"):
    name: str
    plan: str


class ApiTokenCreated(Event, frozen=True, kw_only=True, tag="api_token.created.v1"):
    token_id: str
    name: str
    scopes: tuple[str, ...]
    secret_sha256: str
    secret_prefix: str
    expires_at: datetime | None = None
    # Per-key rate limits on top of the organization's (kind -> per minute; absent: the org's only).
    rate_limits: dict[str, int] = msgspec.field(default_factory=dict)


# --- requests (written by the gateway) --------------------------------------------------------------


class RequestAccepted(Event, frozen=True, kw_only=True, tag="request.accepted.v1"):
    request_id: str
    token_id: str
    endpoint: str
    model: str
    hold_micros: int


class RequestRejected(Event, frozen=True, kw_only=True, tag="request.rejected.v1"):
    request_id: str
    token_id: str
    endpoint: str
    model: str
    status_code: int
    code: str


class IdempotentReplyRecorded(Event, frozen=True, kw_only=True, tag="idempotent_reply.recorded.v1"):
    """The first answer to a request sent with an Idempotency-Key; ``org_id`` is the key's scope."""

    key_sha256: str
    fingerprint: str
    status_code: int
    body: msgspec.Raw  # a JSON answer as it was sent (null when the answer is not JSON)
    headers: dict[str, str]
    body_base64: str = ""  # an answer that is not JSON (audio, CSV), base64


class IdempotencyKeyClaimed(Event, frozen=True, kw_only=True, tag="idempotency_key.claimed.v1"):
    """A request with an Idempotency-Key began (``org_id`` is the key's scope): a retry on any instance
    knows an earlier attempt may have run, and which request it was."""

    key_sha256: str
    fingerprint: str
    request_id: str


class PriceBookPublished(Event, frozen=True, kw_only=True, tag="price_book.published.v1"):
    """A new price book version; it prices every hold placed after it (``org_id`` is "platform")."""

    book: PriceBook


# --- ledger (written only by the ledger role) ------------------------------------------------------


class LedgerFact(Event, frozen=True, kw_only=True):
    """An event on tollgate.ledger. ``prev_hash`` chains each partition: the sha256 (hex) of the
    previous record's bytes in the partition (64 zeros for the first), so that altering, removing,
    inserting or reordering any event breaks a link an auditor can find (ledger/audit.py)."""

    prev_hash: str = ""


class ChainCheckpoint(LedgerFact, frozen=True, kw_only=True, tag="chain.checkpoint.v1"):
    """The ledger's Ed25519 signature over a partition's chain: ``count`` records precede this one
    and the last of them hashes to ``head`` (= this record's ``prev_hash``). ``org_id`` is only the
    key that places it in its partition."""

    partition: int
    count: int
    head: str
    key_id: str
    signature: str


class CreditsGranted(LedgerFact, frozen=True, kw_only=True, tag="credits.granted.v1"):
    grant_id: str
    amount_micros: int
    kind: Literal["paid", "promo"]
    expires_at: datetime | None = None
    priority: int = 0
    reference: str = ""


class GrantExpired(LedgerFact, frozen=True, kw_only=True, tag="grant.expired.v1"):
    """The unused remainder of a grant, moved to breakage at (or after) its expiry."""

    grant_id: str
    amount_micros: int


class CreditsRefunded(LedgerFact, frozen=True, kw_only=True, tag="credits.refunded.v1"):
    """Money given back for a charge; ``reference`` is the hold (request) id it corrects."""

    refund_id: str
    amount_micros: int
    reason: str
    reference: str


class CreditsAdjusted(LedgerFact, frozen=True, kw_only=True, tag="credits.adjusted.v1"):
    """A signed correction with a reason; the original events are never changed."""

    adjustment_id: str
    amount_micros: int
    reason: str
    reference: str = ""


class CreditLimitSet(LedgerFact, frozen=True, kw_only=True, tag="credit_limit.set.v1"):
    limit_micros: int


class AutoTopUpConfigured(LedgerFact, frozen=True, kw_only=True, tag="auto_topup.configured.v1"):
    """When the balance falls below ``threshold_micros``, top up by ``amount_micros``, or up to
    ``target_micros`` when that is set. ``enabled`` false turns it off."""

    enabled: bool
    threshold_micros: int
    amount_micros: int = 0
    target_micros: int = 0


class AutoTopUpTriggered(LedgerFact, frozen=True, kw_only=True, tag="auto_topup.triggered.v1"):
    """The balance crossed the threshold; the paid grant with ``grant_id`` follows in the same decision."""

    topup_id: str
    grant_id: str
    amount_micros: int
    balance_micros: int


class CommandRejected(LedgerFact, frozen=True, kw_only=True, tag="command.rejected.v1"):
    """A ledger command refused for a business reason; ``causation_id`` is the command id."""

    command_type: str
    code: str


class GrantBurn(msgspec.Struct, frozen=True, kw_only=True):
    grant_id: str
    amount_micros: int


class HoldPlaced(LedgerFact, frozen=True, kw_only=True, tag="hold.placed.v1"):
    hold_id: str
    request_id: str
    job_id: str
    token_id: str
    model: str
    endpoint: str
    amount_micros: int
    expires_at: datetime
    price_version: str = ""  # the price book version that will price the capture
    pool: str = ""  # the worker pool its job runs in (where the ledger sends stop signals)
    attempts_max: int = 3  # runs of its job the ledger allows before it dead-letters the job
    # The slice it was carved from (its amount was reserved already, by the slice); "" for a hold
    # placed against the wallet. Its job was dispatched by the gateway that holds the slice.
    slice_id: str = ""
    # Where the request came from ("": api) and what that names (JobSpec.source, source_id).
    source: str = ""
    source_id: str = ""


class HoldRejected(LedgerFact, frozen=True, kw_only=True, tag="hold.rejected.v1"):
    hold_id: str
    request_id: str
    token_id: str
    model: str
    endpoint: str
    code: str
    requested_micros: int
    available_micros: int
    # Where the request came from ("": api) and what that names (JobSpec.source, source_id).
    source: str = ""
    source_id: str = ""


class HoldCaptured(LedgerFact, frozen=True, kw_only=True, tag="hold.captured.v1"):
    """The charge. ``amount_micros`` is what the organization paid; the rest of the hold is released."""

    hold_id: str
    request_id: str
    job_id: str
    token_id: str
    model: str
    endpoint: str
    amount_micros: int
    released_micros: int
    priced_micros: int
    price_version: str
    units: Units
    latency_ms: int = 0
    # Which grants paid, in burn order; any rest of amount_micros came from the credit limit.
    grant_burns: tuple[GrantBurn, ...] = ()
    # The open slice the released rest went back to ("": back to the wallet).
    slice_id: str = ""
    # ``model`` is the model that served and priced the job; when a fallback served it, this is the
    # model the hold was placed for ("" otherwise).
    requested_model: str = ""
    # Where the request came from ("": api) and what that names (JobSpec.source, source_id).
    source: str = ""
    source_id: str = ""


class HoldReleased(LedgerFact, frozen=True, kw_only=True, tag="hold.released.v1"):
    hold_id: str
    request_id: str
    token_id: str
    model: str
    endpoint: str
    amount_micros: int
    reason: str
    slice_id: str = ""  # the open slice the amount went back to ("": back to the wallet)
    # Where the request came from ("": api) and what that names (JobSpec.source, source_id).
    source: str = ""
    source_id: str = ""


class SliceGranted(LedgerFact, frozen=True, kw_only=True, tag="slice.granted.v1"):
    """A slice of the organization's balance reserved for one gateway instance, which places holds
    against it in memory (the ledger carves each one out when its PlaceHold arrives) until it returns
    the slice or it expires (quota leases, as in RFC 8506's credit control)."""

    slice_id: str
    instance_id: str
    amount_micros: int
    expires_at: datetime


class SliceReturned(LedgerFact, frozen=True, kw_only=True, tag="slice.returned.v1"):
    """What was left of a slice goes back to the wallet: returned by its gateway, or expired."""

    slice_id: str
    instance_id: str
    amount_micros: int
    reason: str  # returned, expired


class FileStored(LedgerFact, frozen=True, kw_only=True, tag="file.stored.v1"):
    """A file's metadata (its bytes are in the blob store under ``blob_key``): the files API lists
    these, and the ledger meters storage (byte-days) from them."""

    file_id: str
    filename: str
    purpose: str
    bytes: int
    sha256: str
    blob_key: str
    token_id: str = ""


class FileDeleted(LedgerFact, frozen=True, kw_only=True, tag="file.deleted.v1"):
    file_id: str
    bytes: int


# --- jobs (queued by the ledger with its hold; the rest by workers) --------------------------------


class JobQueued(Event, frozen=True, kw_only=True, tag="job.queued.v1"):
    job_id: str
    request_id: str
    hold_id: str
    token_id: str
    model: str
    endpoint: str
    pool: str
    payload: msgspec.Raw
    accepted_at: datetime
    attempts_max: int = 3
    stream: bool = False  # the client reads progress as it happens: report output at every progress point
    fallbacks: tuple[Route, ...] = ()  # where the worker turns when the model's upstream fails, in order
    context_length: int = 0  # the model's context window in tokens (0: not checked)


class JobLeased(LedgerFact, frozen=True, kw_only=True, tag="job.leased.v1"):
    """A worker runs (or still runs) the job: the hold now expires at ``lease_expires_at`` unless renewed.
    ``attempt`` counts distinct runs (``run_id``); a heartbeat of the same run renews with the same attempt."""

    hold_id: str
    job_id: str
    request_id: str
    worker_id: str
    run_id: str
    attempt: int
    lease_expires_at: datetime


class JobLeaseLost(LedgerFact, frozen=True, kw_only=True, tag="job.lease_lost.v1"):
    """A lease ran out without a heartbeat (a dead or stuck worker). The log redelivers the job to the
    pool; the hold waits for another run until ``expires_at``."""

    hold_id: str
    job_id: str
    request_id: str
    attempt: int
    expires_at: datetime


class JobCancelRequested(LedgerFact, frozen=True, kw_only=True, tag="job.cancel_requested.v1"):
    """Written to the ledger and to the job's dispatch topic: a running job stops at its next progress
    point and is charged for the work done; a job not yet started is released at once."""

    hold_id: str
    job_id: str
    request_id: str
    pool: str
    reason: str


class JobDeadLettered(LedgerFact, frozen=True, kw_only=True, tag="job.dead_lettered.v1"):
    """The job used up its attempts; its hold is released in the same decision. Also sent to the
    dispatch topic so that a worker still running it stops."""

    hold_id: str
    job_id: str
    request_id: str
    pool: str
    attempts: int
    code: str


class JobProgressed(Event, frozen=True, kw_only=True, tag="job.progressed.v1"):
    """A progress point: ``progress_milli`` of 1000, the output produced since the last point
    (``delta``, text for streams) and the units measured so far. ``part`` says what the delta extends
    (workers/backends.py ``JobContext.progress``): "" the answer's text, "reasoning" the model's
    thinking, "reasoning_signature" the signature of that thinking, "item" one whole output item (a tool
    call, a web search) as JSON in the endpoint's own shape."""

    job_id: str
    request_id: str
    attempt: int
    sequence: int
    progress_milli: int
    delta: str = ""
    units: Units = msgspec.field(default_factory=Units)
    served_model: str = ""  # the model producing the output ("": the job's model)
    fallback_depth: int = 0  # fallbacks tried before it
    part: str = ""


class JobRetryScheduled(Event, frozen=True, kw_only=True, tag="job.retry_scheduled.v1"):
    job_id: str
    request_id: str
    attempt: int  # the attempt that failed
    code: str
    message: str
    backoff_ms: int


class JobCancelled(Event, frozen=True, kw_only=True, tag="job.cancelled.v1"):
    """The worker stopped the job on request; ``units`` is the work done, which is what it charges."""

    job_id: str
    request_id: str
    model: str
    units: Units
    partial_result: msgspec.Raw = msgspec.field(default_factory=lambda: msgspec.Raw(b"null"))
    reason: str = ""
    served_model: str = ""  # the model that did the work ("": the job's model)
    fallback_depth: int = 0
    counted_by: str = ""  # how the tokens were counted (see JobCompleted)


class JobStarted(Event, frozen=True, kw_only=True, tag="job.started.v1"):
    job_id: str
    request_id: str
    worker_id: str
    attempt: int


class UsageRecorded(Event, frozen=True, kw_only=True, tag="usage.recorded.v1"):
    job_id: str
    request_id: str
    model: str
    units: Units


class JobCompleted(Event, frozen=True, kw_only=True, tag="job.completed.v1"):
    job_id: str
    request_id: str
    model: str
    result: msgspec.Raw
    units: Units
    duration_ms: int
    # The model that served the job ("": the job's model) and how many fallbacks were tried before it.
    served_model: str = ""
    fallback_depth: int = 0
    # How the worker measured the tokens: "upstream" (the server's usage), "logprobs" (one per listed
    # token, prompt by tokenizer), "tokenizer" (the model's own tokenizer); "" for simulated work.
    counted_by: str = ""


class JobFailed(Event, frozen=True, kw_only=True, tag="job.failed.v1"):
    job_id: str
    request_id: str
    model: str
    code: str
    message: str
    attempt: int = 1
    retryable: bool = False


# --- tenants and rate limits (issue 5; appended, the union order above is unchanged) --------------


class ApiTokenRevoked(Event, frozen=True, kw_only=True, tag="api_token.revoked.v1"):
    token_id: str
    revoked_by: str = ""


class ApiTokenUsed(Event, frozen=True, kw_only=True, tag="api_token.used.v1"):
    """A key was used; written at most once per ``token_last_used_interval_s`` per key and instance."""

    token_id: str


class OrganizationPlanChanged(Event, frozen=True, kw_only=True, tag="organization.plan_changed.v1"):
    plan: str


class OrganizationLimitsSet(Event, frozen=True, kw_only=True, tag="organization.limits_set.v1"):
    """Per-organization overrides of the plan's limits (kind -> per minute); replaces earlier ones."""

    rate_limits: dict[str, int]


class ApiTokenLimitsSet(Event, frozen=True, kw_only=True, tag="api_token.limits_set.v1"):
    """A key's own limits (kind -> per minute), replacing those it was created with."""

    token_id: str
    rate_limits: dict[str, int]


class RequestAdmitted(Event, frozen=True, kw_only=True, tag="request.admitted.v1"):
    """A request passed the rate limits; every gateway instance counts these in its shared windows.
    ``amounts`` is what it counts against each kind of limit (``requests``/``jobs``: 1, ``tokens``: estimate)."""

    request_id: str
    token_id: str
    endpoint: str
    amounts: dict[str, int]
    instance_id: str = ""


class RequestThrottled(Event, frozen=True, kw_only=True, tag="request.throttled.v1"):
    """A request refused with 429; ``kind`` and ``scope`` name the limit that refused it."""

    request_id: str
    token_id: str
    endpoint: str
    kind: str
    scope: str
    limit: int
    retry_after_ms: int
    instance_id: str = ""


# --- batches (written by the gateway running them, on tollgate.jobs) --------------------------------


class BatchCreated(Event, frozen=True, kw_only=True, tag="batch.created.v1"):
    batch_id: str
    token_id: str
    endpoint: str
    input_file_id: str
    completion_window: str
    total: int  # lines in the input file (those refused at once count as failed)
    failed: int = 0  # lines refused before running (their errors are in the error file)
    expires_at: datetime
    metadata: dict[str, str] = msgspec.field(default_factory=dict)
    instance_id: str = ""  # the gateway instance that runs it (and resumes it after a restart)
    reserved: str = ""  # the slice reserved for its worst case, its lines' holds carved from it


class BatchProgressed(Event, frozen=True, kw_only=True, tag="batch.progressed.v1"):
    batch_id: str
    completed: int
    failed: int


class BatchCancelRequested(Event, frozen=True, kw_only=True, tag="batch.cancel_requested.v1"):
    batch_id: str


class BatchEnded(Event, frozen=True, kw_only=True, tag="batch.ended.v1"):
    batch_id: str
    status: Literal["completed", "cancelled", "failed", "expired"]
    completed: int
    failed: int
    output_file_id: str = ""
    error_file_id: str = ""
    error_code: str = ""
    error_message: str = ""


# --- time-metered resources and monthly plans (issue 18; decided in ledger/resources.py) ----------


class ResourceStarted(LedgerFact, frozen=True, kw_only=True, tag="resource.started.v1"):
    """A resource (a GPU instance of ``resource_class``) starts a run, and its first interval is held
    (``reserved_micros``). It costs ``hourly_micros`` per unit (``quantity`` GPUs) per hour, billed by
    the second from ``occurred_at``; the ledger charges it every ``interval_s`` (``ResourceCharged``)."""

    resource_id: str
    token_id: str
    kind: str  # "gpu"
    resource_class: str
    quantity: int
    hourly_micros: int
    interval_s: int
    reserved_micros: int
    price_version: str
    run: int = 1  # the resource's how-manieth run (a stopped instance may be started again)
    label: str = ""
    image: str = ""
    disk_gb: int = 0


class ResourceCharged(LedgerFact, frozen=True, kw_only=True, tag="resource.charged.v1"):
    """The seconds ``from_s``..``to_s`` of a run (counted from its start) are charged: ``amount_micros``
    = cost(to_s) - cost(from_s), out of the interval's reservation (``released_micros`` of it goes
    back). ``next_reserved_micros`` holds the next interval; 0 with ``ended`` the run stops here
    (``stopped`` by its owner, ``insufficient_credits`` when the balance cannot cover the next one)."""

    resource_id: str
    token_id: str
    kind: str
    resource_class: str
    quantity: int
    run: int
    from_s: int
    to_s: int
    amount_micros: int
    released_micros: int
    next_reserved_micros: int
    price_version: str
    grant_burns: tuple[GrantBurn, ...] = ()
    ended: str = ""


class ResourceBalanceLow(LedgerFact, frozen=True, kw_only=True, tag="resource.balance_low.v1"):
    """A warning: after the interval just reserved, the balance cannot cover another one, so the run
    stops at ``stops_at`` unless credits arrive (once per run)."""

    resource_id: str
    run: int
    spendable_micros: int
    interval_micros: int
    stops_at: datetime


class ResourceDestroyed(LedgerFact, frozen=True, kw_only=True, tag="resource.destroyed.v1"):
    """A stopped resource is destroyed by its owner: it never starts again (a running one is destroyed
    by its last charge, ``ResourceCharged.ended`` "destroyed")."""

    resource_id: str


class PlanSubscribed(LedgerFact, frozen=True, kw_only=True, tag="plan.subscribed.v1"):
    """A monthly plan accepted and its first period charged (``amount_micros``)."""

    subscription_id: str
    token_id: str
    kind: str  # "hosted_agent"
    plan_slug: str
    amount_micros: int
    period_start: datetime
    period_end: datetime
    price_version: str
    grant_burns: tuple[GrantBurn, ...] = ()
    name: str = ""
    agent_type: str = ""
    default_provider: str = ""


class PlanRenewed(LedgerFact, frozen=True, kw_only=True, tag="plan.renewed.v1"):
    """The next period of a plan charged at its end (``period`` counts from 1, the first)."""

    subscription_id: str
    token_id: str
    kind: str
    plan_slug: str
    period: int
    amount_micros: int
    period_start: datetime
    period_end: datetime
    price_version: str
    grant_burns: tuple[GrantBurn, ...] = ()


class PlanCancelled(LedgerFact, frozen=True, kw_only=True, tag="plan.cancelled.v1"):
    """No renewal: the plan runs to the end of the period paid for."""

    subscription_id: str
    reason: str


class PlanEnded(LedgerFact, frozen=True, kw_only=True, tag="plan.ended.v1"):
    """The period paid for is over and nothing renews it (``cancelled``, ``insufficient_credits``)."""

    subscription_id: str
    reason: str


class HostedAgentChanged(Event, frozen=True, kw_only=True, tag="hosted_agent.changed.v1"):
    """A hosted agent renamed, or its runtime started, stopped or restarted by its owner: on the tenants
    topic (no money moves; its plan bills monthly whatever its runtime does). "" leaves a field as it was."""

    instance_id: str
    name: str = ""
    runtime: str = ""  # running, stopped


# --- saved Playground conversations and content-filter policies (issue 18; tenants topic) ---------


class PlaygroundConversationSaved(Event, frozen=True, kw_only=True, tag="playground.conversation_saved.v1"):
    """A chat completion sent with ``X-Playground-Conversation`` was answered and its exchange saved: the
    conversation's messages (the request's and the answer's) are in the blob store under ``blob_key``;
    this is its summary as ``GET /v1/playground/conversations`` lists it. No money moves."""

    conversation_id: str
    model: str
    title: str
    message_count: int
    blob_key: str
    token_id: str = ""  # the request whose answer was saved is the correlation_id


class ContentFilterPolicySet(Event, frozen=True, kw_only=True, tag="content_filter_policy.set.v1"):
    """An organization's content-filter policy (Casola's ``/api/organizations/{id}/content-filter-policy``)
    created or changed: the whole policy after the change. ``deleted`` goes back to the platform's
    default (no policy of its own)."""

    action: str = ""  # block, flag, log or off
    deleted: bool = False
    token_id: str = ""


class LibraryShareChanged(Event, frozen=True, kw_only=True, tag="library_share.changed.v1"):
    """A library item (a finished job's result) shared by link, or its link deleted (Casola's
    ``/api/library/items/{id}/share``). The result as shared is in the blob store under ``blob_key``;
    the link's token is derived from ``share_id`` with the gateway's secret, never stored."""

    item_id: str
    share_id: str
    blob_key: str = ""
    deleted: bool = False
    token_id: str = ""


# --- Casola's agents (POST /api/agents; gateway/routes/casola_agents.py), on tollgate.jobs -------------


class AgentCreated(Event, frozen=True, kw_only=True, tag="agent.created.v1"):
    """An agent: a name and its DAG of nodes (as the client sent it, checked), per organization."""

    agent_id: str
    token_id: str
    name: str
    dag: msgspec.Raw


class AgentRunUpdated(Event, frozen=True, kw_only=True, tag="agent.run_updated.v1"):
    """A run of an agent as its runner sees it now: the whole snapshot (status, every node's state and
    result, the cost of its charged sub-jobs); the last one stands. No money moves here: each sub-job
    is a metered request of its own, held and charged by the ledger."""

    run_id: str
    agent_id: str
    input_params: msgspec.Raw
    status: Literal["pending", "running", "completed", "failed", "cancelled"]
    nodes: msgspec.Raw = msgspec.field(default_factory=lambda: msgspec.Raw(b"{}"))
    cost_micros: int = 0
    error: msgspec.Raw = msgspec.field(default_factory=lambda: msgspec.Raw(b"null"))
    instance_id: str = ""  # the gateway instance that runs it


# --- hosted agents' configuration (issue 18; tenants topic; gateway/routes/hosted_agents.py) ---------


class HostedAgentConfigured(Event, frozen=True, kw_only=True, tag="hosted_agent.configured.v1"):
    """A hosted agent's configuration changed by its owner: no money moves (its plan covers it).
    ``change`` says what (``projections/hosted_agents.py`` folds each): ``model``, ``access``,
    ``integration_saved``, ``integration_removed``, ``channel_behavior``, ``skill_added``,
    ``skill_removed``, ``mcp_added``, ``mcp_removed``; ``key`` names the integration kind, the skill
    ref or the connector; ``settings`` is the JSON object of the new values. Never a secret: a
    credential is kept as its last four characters at most (no agent runtime runs to use it)."""

    instance_id: str
    change: str
    key: str = ""
    settings: msgspec.Raw = msgspec.field(default_factory=lambda: msgspec.Raw(b"{}"))
    token_id: str = ""


ResourceEvent = (
    ResourceStarted
    | ResourceCharged
    | ResourceBalanceLow
    | ResourceDestroyed
    | PlanSubscribed
    | PlanRenewed
    | PlanCancelled
    | PlanEnded
)


AnyEvent = (
    ChainCheckpoint
    | OrganizationCreated
    | ApiTokenCreated
    | RequestAccepted
    | RequestRejected
    | IdempotentReplyRecorded
    | IdempotencyKeyClaimed
    | PriceBookPublished
    | CreditsGranted
    | GrantExpired
    | CreditsRefunded
    | CreditsAdjusted
    | CreditLimitSet
    | AutoTopUpConfigured
    | AutoTopUpTriggered
    | CommandRejected
    | HoldPlaced
    | HoldRejected
    | HoldCaptured
    | HoldReleased
    | JobQueued
    | JobStarted
    | UsageRecorded
    | JobCompleted
    | JobFailed
    | JobLeased
    | JobLeaseLost
    | JobCancelRequested
    | JobDeadLettered
    | JobProgressed
    | JobRetryScheduled
    | JobCancelled
    | ApiTokenRevoked
    | ApiTokenUsed
    | OrganizationPlanChanged
    | OrganizationLimitsSet
    | RequestAdmitted
    | RequestThrottled
    | ApiTokenLimitsSet
    | SliceGranted
    | SliceReturned
    | FileStored
    | FileDeleted
    | BatchCreated
    | BatchProgressed
    | BatchCancelRequested
    | BatchEnded
    | ResourceEvent
    | HostedAgentChanged
    | PlaygroundConversationSaved
    | ContentFilterPolicySet
    | LibraryShareChanged
    | AgentCreated
    | AgentRunUpdated
    | HostedAgentConfigured
)

LedgerEvent = (
    CreditsGranted
    | GrantExpired
    | CreditsRefunded
    | CreditsAdjusted
    | CreditLimitSet
    | AutoTopUpConfigured
    | AutoTopUpTriggered
    | CommandRejected
    | HoldPlaced
    | HoldRejected
    | HoldCaptured
    | HoldReleased
    | JobLeased
    | JobLeaseLost
    | JobCancelRequested
    | JobDeadLettered
    | ChainCheckpoint
    | SliceGranted
    | SliceReturned
    | FileStored
    | FileDeleted
    | ResourceEvent
)
