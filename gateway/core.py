"""What a gateway instance knows and does, apart from HTTP: the read models it folds from the log
(tenants, balances, jobs, price books, idempotent replies, rate-limit windows), its producer, and the
small use cases that append an event and wait until this instance has folded it (create an
organization, issue a token, run a ledger command). Metering requests is ``gateway/metering.py``;
turning events back into answers is ``gateway/waiters.py``.

Two followers read the log: one folds tenants, ledger, idempotency and pricing events from the
beginning (so every instance authenticates and shows balances from the same facts), the other job
events (finished jobs stay visible for their retention after a restart).
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import secrets
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any, TypeAlias

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from litestar.di import NamedDependency

from eventlog import EventLog, Outgoing, topics
from eventlog.metrics import Metrics
from eventlog.read import Follower
from eventlog.settings import Settings
from gateway import deferred
from gateway.blobs import BlobStore, DirectoryBlobStore
from gateway.chainwatch import ChainWatch
from gateway.jwks import JwksKeys
from gateway.media_urls import MediaStore
from gateway.metering import AttemptForgotten, Metering
from gateway.pending import PendingCharges
from gateway.quota import Quota
from gateway.ratelimit import RateLimiter
from gateway.waiters import Seen, Waiters, keys_of
from ledger.chain import load_public_key
from ledger.pricing import PriceBook, PriceBooks
from ledger.wallet import HoldStatus
from projections.agents import AgentStepsView, CasolaAgentsView
from projections.batches import BatchesView
from projections.content_filters import ContentFilterView
from projections.files import FilesView
from projections.jobs import JobsView
from projections.library_shares import LibrarySharesView
from projections.playground import PlaygroundView
from projections.replies import IdempotencyView
from projections.usage import UsageStore
from projections.views import ApiToken, BalancesView, TenantsView
from schemas.codec import decode_event, encode
from schemas.commands import CancelJob, LedgerCommand
from schemas.events import (
    ApiTokenCreated,
    CommandRejected,
    Event,
    HoldReleased,
    JobCancelRequested,
    OrganizationCreated,
    PriceBookPublished,
    RequestRejected,
)
from schemas.ids import new_id
from schemas.moments import utc_now
from workers.metering import FileContents

logger = logging.getLogger(__name__)

token_secret_prefix = "tg_"
catch_up_wait_s_max = 120.0
cancel_wait_s = 30.0  # DELETE /v1/jobs/{id} waits this long for the ledger, then answers 504


def hash_secret(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def _ledger_public_key(settings: Settings) -> Ed25519PublicKey | None:
    """The key that verifies the ledger's checkpoints, when this gateway has it (as /v1/audit/public-key)."""
    path = settings.signing_key_path
    try:
        return load_public_key(path.read_bytes()) if path.exists() else None
    except ValueError:
        logger.warning("%s is not an Ed25519 key: the usage page cannot verify checkpoints", path)
        return None


class StoredFileContents:
    """A chat request's ``file_id`` read from the files API's store (``workers/metering.py`` inlines it)."""

    def __init__(self, files: FilesView, blobs: BlobStore) -> None:
        self._files = files
        self._blobs = blobs

    def read(self, org_id: str, file_id: str, bytes_max: int) -> tuple[str, bytes] | None:
        # Files are bounded by the upload's body limit; the caller checks its own budget.
        record = self._files.get(org_id, file_id)
        if record is None:
            return None
        data = self._blobs.get(record.blob_key)
        return None if data is None else (record.filename, data)


class GatewayCore:
    def __init__(
        self,
        log: EventLog,
        settings: Settings,
        prices: PriceBooks,
        usage_store: UsageStore | None,
        admin_token: str,
        metrics: Metrics | None = None,
    ) -> None:
        self.log = log
        self.metrics = metrics or Metrics()
        self.metrics_collector: object | None = None  # gateway/observe.py registers it once
        self.chain_watch = ChainWatch(_ledger_public_key(settings))
        self.settings = settings
        self.prices = prices
        self._logged_price_versions: set[str] = set()
        self.usage_store = usage_store
        self.admin_token = admin_token
        self.tenants = TenantsView()
        self.balances = BalancesView()
        self.pending = PendingCharges(self.balances)
        self.idempotency = IdempotencyView()
        self.waiters = Waiters()
        self.jobs = JobsView(timedelta(seconds=settings.job_retention_s))
        self._producer = log.producer(f"tollgate-gateway-{settings.instance_id}")
        self._followers: list[Follower] = []
        self.quota = Quota(settings, self._producer.send)
        self.metering = Metering(
            settings, self._producer, self.waiters, self.quota, self.pending, self.metrics, earlier=self.earlier_attempt
        )
        # --- issue 5: service-token keys, shared rate-limit windows, last-used bookkeeping ---
        self.jwks = JwksKeys(settings)
        self.limiter = RateLimiter(settings, self.tenants)
        self.token_used_sent: dict[str, float] = {}
        # Uploaded files (/v1/files): their metadata folded from the ledger, their bytes in a blob store.
        self.stored_files = FilesView()
        # Saved Playground conversations (/v1/playground/conversations): summaries folded from the tenants
        # topic, their messages in the blob store.
        self.playground = PlaygroundView()
        # Organizations' content-filter policies (Casola's /api/organizations/{id}/content-filter-policy).
        self.content_filters = ContentFilterView()
        # Library share links (Casola's /api/library/items/{id}/share): the shared results in the blob store.
        self.library_shares = LibrarySharesView()
        self.blobs: BlobStore = DirectoryBlobStore(Path(settings.files_dir or settings.data_dir / "files"))
        # Results answered as signed URLs (response_format=url): in the same store, signed with a key
        # derived from the admin secret (instances sharing it verify each other's URLs; none: this one only).
        media_secret = admin_token.encode() or secrets.token_bytes(32)
        self.media = MediaStore(self.blobs, media_secret, settings.media_url_ttl_s)
        # A share link's token is its share id signed with a key of the same secret (never on the log).
        self.share_link_key = hashlib.sha256(b"tollgate share links v1\n" + media_secret).digest()
        # Batches (/v1/batches): their state folded from tollgate.jobs; this instance's runner (gateway/batches.py).
        self.batches = BatchesView()
        self.batch_runner: Any = None
        # Agents: EmpirioLabs' tasks' steps, Casola's agents and runs (folded from tollgate.jobs); the
        # runner of this instance's Casola runs (gateway/routes/casola_agents.py).
        self.agent_steps = AgentStepsView()
        self.casola_agents = CasolaAgentsView()
        self.agent_runner: Any = None
        # Where a chat request's file_id parts are read from: the files API's store.
        self.files: FileContents = StoredFileContents(self.stored_files, self.blobs)

    # --- following the log ---

    def start(self) -> None:
        history = self.log.consumer(
            [topics.TENANTS, topics.LEDGER, topics.IDEMPOTENCY, topics.PRICING],
            client_id=f"tollgate-gateway-history-{self.settings.instance_id}",
        )
        jobs = self.log.consumer(
            # From the beginning: finished jobs stay visible for the retention window after a restart
            # (the topic's own retention bounds this read).
            [topics.JOBS],
            client_id=f"tollgate-gateway-jobs-{self.settings.instance_id}",
        )
        batch, wait_ms = self.settings.batch_records_max, self.settings.poll_wait_ms
        lag = self.metrics.lag_reporter
        history_follower = Follower(
            history,
            self._fold_history,
            "follow-history",
            batch,
            wait_ms,
            lag("gateway", "history"),
            observe=self.chain_watch.observe,  # the ledger's chain, checked as it is folded
        )
        jobs_follower = Follower(jobs, self._fold_jobs, "follow-jobs", batch, wait_ms, lag("gateway", "jobs"))
        self._followers = [history_follower, jobs_follower]
        for follower in self._followers:
            follower.start()
        if not history_follower.wait_caught_up(catch_up_wait_s_max):
            raise RuntimeError("the gateway could not read the log to its end; is the broker reachable?")
        # Slices an earlier run of this instance left open: their holds may still be on the way, so
        # this run returns them and asks for fresh ones.
        self.quota.return_all()
        self.limiter.start(self.log, catch_up_wait_s_max, self.metrics.lag_reporter("gateway", "limits"))
        built_in = self.prices.at_version(self.prices.versions()[0])
        if built_in is not None and built_in.version not in self._logged_price_versions:
            # Price book versions are events: put the built-in one on the log for auditors. Racing
            # gateways may both do so; readers keep the first of a version.
            self._producer.send([self._price_book_record(built_in)])

    def _fold_history(self, event: Event) -> None:
        """Tenants, ledger, idempotency and pricing, from the beginning: every instance authenticates
        and shows balances from the same facts."""
        self.jobs.apply(event)
        self.tenants.apply(event)
        self.stored_files.apply(event)
        self.playground.apply(event)
        self.content_filters.apply(event)
        self.library_shares.apply(event)
        self.pending.apply(event)  # the balances view, and the answered charges it now holds
        self.quota.apply(event)  # this instance's slices, and the rests their holds give back
        self.idempotency.apply(event)
        self.limiter.apply(event)  # tokens of charges, for tokens-per-minute
        if isinstance(event, PriceBookPublished):
            self.prices.apply(event)
            self._logged_price_versions.add(event.book.version)
        self._offer(event)

    def earlier_attempt(self, org_id: str, request_id: str, job_id: str) -> Seen | None:
        """What the log says of an earlier attempt of this request (a retry with its Idempotency-Key):
        the events that decide its answer, {} while none has come, None when no attempt is known."""
        known = self.jobs.outcome_of(request_id, job_id)
        if known is not None:
            return known
        hold = self.balances.get(org_id).holds.get(request_id)
        if hold is None:
            return None
        if hold.status is HoldStatus.open:
            return {}
        raise AttemptForgotten(request_id)  # its hold settled, and its job is past its retention

    def _fold_jobs(self, event: Event) -> None:
        self.jobs.apply(event)
        self.batches.apply(event)
        self.agent_steps.apply(event)
        self.casola_agents.apply(event)
        self._offer(event)

    def _offer(self, event: Event) -> None:
        for key in keys_of(event):
            self.waiters.offer(key, event)

    def _price_book_record(self, book: PriceBook) -> Outgoing:
        event = PriceBookPublished(event_id=new_id("evt"), occurred_at=utc_now(), org_id="platform", book=book)
        return Outgoing(topics.PRICING, "platform", encode(event))

    async def publish_price_book(self, book: PriceBook) -> None:
        record = self._price_book_record(book)
        event_id = decode_event(record.value).event_id
        await self._append_and_wait(event_id, [record], 30)

    def stop(self) -> None:
        self.quota.return_all()  # what is left of this instance's slices is spendable again at once
        self.limiter.stop()
        for follower in self._followers:
            follower.stop()
        self._producer.flush(5)
        self._producer.close()

    # --- use cases ---

    def authenticate(self, secret: str) -> ApiToken | None:
        return self.tenants.tokens_by_secret_sha256.get(hash_secret(secret))

    async def _append_and_wait(self, key: str, records: list[Outgoing], timeout_s: float) -> Seen:
        future = self.waiters.expect(key, lambda seen: bool(seen))
        try:
            self._producer.send(records)
            return await asyncio.wait_for(future, timeout_s)
        finally:
            self.waiters.forget(key, future)

    async def create_organization(self, name: str, plan: str) -> OrganizationCreated:
        org_id = new_id("org")
        event = OrganizationCreated(event_id=new_id("evt"), occurred_at=utc_now(), org_id=org_id, name=name, plan=plan)
        await self._append_and_wait(event.event_id, [Outgoing(topics.TENANTS, org_id, encode(event))], 30)
        return event

    def send(self, records: list[Outgoing]) -> None:
        """Append without waiting (rate-limit and last-used events)."""
        self._producer.send(records)

    def send_with_request(self, records: list[Outgoing]) -> None:
        """Append with the request's next append (its hold), or when its response starts; outside a
        request, at once (``gateway/deferred.py``)."""
        if not deferred.defer(records):
            self._producer.send(records)

    async def record_job_event(self, event: Event) -> None:
        """Append an event to tollgate.jobs (a batch's) and wait until this instance has folded it."""
        await self._append_and_wait(event.event_id, [Outgoing(topics.JOBS, event.org_id, encode(event))], 30)

    async def record_tenant_event(self, event: Event) -> None:
        """Append a tenants event and wait until this instance has folded it."""
        await self._append_and_wait(event.event_id, [Outgoing(topics.TENANTS, event.org_id, encode(event))], 30)

    async def create_token(
        self,
        org_id: str,
        name: str,
        scopes: list[str],
        expires_at: datetime | None = None,
        rate_limits: dict[str, int] | None = None,
    ) -> tuple[ApiTokenCreated, str]:
        secret = token_secret_prefix + secrets.token_urlsafe(32)
        event = ApiTokenCreated(
            event_id=new_id("evt"),
            occurred_at=utc_now(),
            org_id=org_id,
            token_id=new_id("tok"),
            name=name,
            scopes=tuple(scopes),
            secret_sha256=hash_secret(secret),
            secret_prefix=secret[:8],
            expires_at=expires_at,
            rate_limits=rate_limits or {},
        )
        await self._append_and_wait(event.event_id, [Outgoing(topics.TENANTS, org_id, encode(event))], 30)
        return event, secret

    async def ledger_command(self, command: LedgerCommand) -> Event:
        """Send a command to the ledger; its outcome: the first event it caused, or CommandRejected."""
        seen = await self._append_and_wait(
            command.command_id, [Outgoing(topics.COMMANDS, command.org_id, encode(command))], 30
        )
        return next(iter(seen.values()))

    @staticmethod
    def _cancel_command(org_id: str, hold_id: str, job_id: str, reason: str) -> CancelJob:
        # One id per hold: a second cancel (a retry, or a disconnect after a DELETE) is a duplicate.
        return CancelJob(
            command_id=f"cancel:{hold_id}",
            org_id=org_id,
            issued_at=utc_now(),
            correlation_id=hold_id,
            hold_id=hold_id,
            job_id=job_id,
            reason=reason,
        )

    def cancel_job_soon(self, org_id: str, hold_id: str, job_id: str, reason: str) -> None:
        """Ask the ledger to cancel without waiting for its answer (a stream whose client left)."""
        command = self._cancel_command(org_id, hold_id, job_id, reason)
        self._producer.send([Outgoing(topics.COMMANDS, org_id, encode(command))])

    async def cancel_job(self, org_id: str, hold_id: str, job_id: str) -> Seen:
        """Cancel and wait for the ledger's answer: the release of a job not started yet, the request
        to stop a running one, or a refusal."""
        command = self._cancel_command(org_id, hold_id, job_id, "client_request")

        def answered(seen: Seen) -> bool:
            if CommandRejected in seen or HoldReleased in seen:
                return True
            hold = self.balances.get(org_id).holds.get(hold_id)
            return JobCancelRequested in seen and hold is not None and hold.leased

        future = self.waiters.expect(command.command_id, answered)
        try:
            self._producer.send([Outgoing(topics.COMMANDS, org_id, encode(command))])
            return await asyncio.wait_for(future, cancel_wait_s)
        finally:
            self.waiters.forget(command.command_id, future)

    def record_rejection(
        self, token: ApiToken, request_id: str, endpoint: str, model: str, status: int, code: str
    ) -> None:
        event = RequestRejected(
            event_id=new_id("evt"),
            occurred_at=utc_now(),
            org_id=token.org_id,
            correlation_id=request_id,
            request_id=request_id,
            token_id=token.token_id,
            endpoint=endpoint,
            model=model,
            status_code=status,
            code=code,
        )
        self._producer.send([Outgoing(topics.REQUESTS, token.org_id, encode(event))])


# A handler's ``core`` parameter: the gateway's core, provided by the app (``gateway.app.provide_core``).
Core: TypeAlias = NamedDependency[GatewayCore]
