"""Every setting in one place: a type, an environment variable, a default and one line of why.

Limits follow the unit-last naming of the style guide (``hold_ttl_s``, ``batch_records_max``).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path


def _env(name: str, default: str) -> str:
    return os.environ.get(name, default)


@dataclass(frozen=True, kw_only=True)
class Settings:
    # Where the log lives: a Kafka bootstrap address, or empty for the embedded log in data_dir.
    kafka_bootstrap: str = field(default_factory=lambda: _env("TOLLGATE_KAFKA_BOOTSTRAP", ""))
    # Embedded log, embedded ClickHouse and demo files live here.
    data_dir: Path = field(default_factory=lambda: Path(_env("TOLLGATE_DATA_DIR", ".tollgate")))
    # A ClickHouse server (http://host:8123, or http://host:8123/database); empty uses the embedded
    # chdb engine in data_dir (one process only). `tollgate dev` runs its own server (below) instead.
    clickhouse_url: str = field(default_factory=lambda: _env("TOLLGATE_CLICKHOUSE_URL", ""))
    # How `tollgate dev` runs ClickHouse: "server" (a ClickHouse server as its child, in
    # data_dir/clickhouse-server, that SQL clients, the CLI and other roles reach by URL while dev
    # runs) or "embedded" (chdb inside the dev process, in data_dir/clickhouse: nothing else can read
    # it while dev runs; for machines where the server cannot start).
    dev_clickhouse: str = field(default_factory=lambda: _env("TOLLGATE_DEV_CLICKHOUSE", "server"))
    # Ports of dev's ClickHouse server on 127.0.0.1: HTTP (8123, ClickHouse's own, which SQL tools
    # assume) and native (0: any free port, printed in the banner); 0 picks a free port.
    dev_clickhouse_http_port: int = field(
        default_factory=lambda: int(_env("TOLLGATE_DEV_CLICKHOUSE_HTTP_PORT", "8123"))
    )
    dev_clickhouse_tcp_port: int = field(default_factory=lambda: int(_env("TOLLGATE_DEV_CLICKHOUSE_TCP_PORT", "0")))
    # The level of every logger in the process (ours, Litestar's, httpx's, kafka-python's): WARNING
    # keeps a role's output to what needs attention; INFO shows requests and group changes.
    log_level: str = field(default_factory=lambda: _env("TOLLGATE_LOG_LEVEL", "WARNING").upper())
    # The gateway's listening address.
    host: str = field(default_factory=lambda: _env("TOLLGATE_HOST", "127.0.0.1"))
    port: int = field(default_factory=lambda: int(_env("TOLLGATE_PORT", "8000")))
    # The secret for admin endpoints; `tollgate dev` generates one when empty.
    admin_token: str = field(default_factory=lambda: _env("TOLLGATE_ADMIN_TOKEN", ""))
    # Names this process in transactional ids and client ids; two live instances must differ.
    instance_id: str = field(default_factory=lambda: _env("TOLLGATE_INSTANCE_ID", "0"))
    # Model pools this worker serves (comma separated).
    worker_pools: tuple[str, ...] = field(
        default_factory=lambda: tuple(_env("TOLLGATE_WORKER_POOLS", "default").split(","))
    )
    # Simulated backend latency per job, to model GPU time in demos and benchmarks.
    sim_latency_ms: int = field(default_factory=lambda: int(_env("TOLLGATE_SIM_LATENCY_MS", "0")))
    # Simulated GPU time per generated token and per rendered second of video (streams and cancels
    # need jobs that take a while; 0 makes text jobs instant).
    sim_token_ms: int = field(default_factory=lambda: int(_env("TOLLGATE_SIM_TOKEN_MS", "0")))
    sim_video_second_ms: int = field(default_factory=lambda: int(_env("TOLLGATE_SIM_VIDEO_SECOND_MS", "50")))
    # The simulated backend's per-request ``sim`` field (injected failures, slower tokens) is for demos
    # and fault tests that the platform runs: off, a tenant's body with ``sim`` is a 400 and workers
    # ignore it (a tenant must not make jobs slow, which would hold a pool). `tollgate dev` turns it on
    # unless this is set.
    sim_knobs: bool = field(default_factory=lambda: _env("TOLLGATE_SIM_KNOBS", "").lower() in ("1", "true", "yes"))
    # A transcription's file_url is fetched by the gateway: off, an address that is private, loopback,
    # link-local or otherwise not public (checked on every address it resolves to, redirects included)
    # is a 400, so that a tenant cannot make the gateway read the platform's own network. `tollgate dev`
    # turns it on unless this is set (its demo runs on one machine).
    file_url_private_allowed: bool = field(
        default_factory=lambda: _env("TOLLGATE_FILE_URL_PRIVATE_ALLOWED", "").lower() in ("1", "true", "yes")
    )
    # Jobs one worker (per pool) runs at once. They wait on a model (an upstream server, simulated GPU
    # time) as tasks, not threads, so this is sized to the upstream's capacity, not the worker's cores.
    worker_jobs_in_flight_max: int = field(
        default_factory=lambda: int(_env("TOLLGATE_WORKER_JOBS_IN_FLIGHT_MAX", "256"))
    )
    # Of those, the most one organization runs at once (0: half of them, at least one), so that one
    # organization cannot take a pool: a freed slot goes to the organizations waiting in turn.
    worker_org_jobs_in_flight_max: int = field(
        default_factory=lambda: int(_env("TOLLGATE_WORKER_ORG_JOBS_IN_FLIGHT_MAX", "0"))
    )
    # A running job's lease: the worker renews it every third of this; a job whose lease runs out is
    # redelivered to another run (or dead-lettered after its attempts).
    job_lease_s: int = field(default_factory=lambda: int(_env("TOLLGATE_JOB_LEASE_S", "30")))
    # Runs of one job before it is dead-lettered (crashes and retryable failures both count).
    job_attempts_max: int = field(default_factory=lambda: int(_env("TOLLGATE_JOB_ATTEMPTS_MAX", "3")))
    # The first retry waits this long; each next one twice as long.
    job_retry_backoff_ms: int = field(default_factory=lambda: int(_env("TOLLGATE_JOB_RETRY_BACKOFF_MS", "200")))
    # Finished jobs stay visible in GET /v1/jobs at least this long.
    job_retention_s: int = field(default_factory=lambda: int(_env("TOLLGATE_JOB_RETENTION_S", "3600")))
    # The ledger's Ed25519 key for chain checkpoints (created when missing; empty: in data_dir). The
    # gateway publishes its public half at GET /v1/audit/public-key.
    ledger_signing_key_file: str = field(default_factory=lambda: _env("TOLLGATE_LEDGER_SIGNING_KEY_FILE", ""))
    # A signed checkpoint after this many ledger records in a partition, or this long after new ones.
    checkpoint_records_max: int = field(default_factory=lambda: int(_env("TOLLGATE_CHECKPOINT_RECORDS_MAX", "1000")))
    checkpoint_interval_s: float = field(default_factory=lambda: float(_env("TOLLGATE_CHECKPOINT_INTERVAL_S", "5")))
    # An OpenAI-compatible server the worker forwards to instead of simulating (vLLM, SGLang,
    # llama.cpp...): the upstream of every pool that TOLLGATE_UPSTREAMS does not name.
    upstream_url: str = field(default_factory=lambda: _env("TOLLGATE_UPSTREAM_URL", ""))
    upstream_api_key: str = field(default_factory=lambda: _env("TOLLGATE_UPSTREAM_API_KEY", ""))
    # Seconds an upstream may stay silent within an answer (between two tokens of a stream), and to connect.
    upstream_timeout_s: float = field(default_factory=lambda: float(_env("TOLLGATE_UPSTREAM_TIMEOUT_S", "120")))
    upstream_connect_timeout_s: float = field(
        default_factory=lambda: float(_env("TOLLGATE_UPSTREAM_CONNECT_TIMEOUT_S", "5"))
    )
    # Calls a worker role has in flight to one upstream at once (more wait for a slot): size it to what
    # the upstream serves in parallel, so that the upstream, not the worker, is the limit.
    upstream_calls_in_flight_max: int = field(
        default_factory=lambda: int(_env("TOLLGATE_UPSTREAM_CALLS_IN_FLIGHT_MAX", "256"))
    )
    # Ask streams for logprobs: one entry per generated token counts a stream's output exactly when
    # the upstream reports no usage in it (llama.cpp), and keeps a cancelled stream's count exact.
    upstream_stream_logprobs: bool = field(
        default_factory=lambda: _env("TOLLGATE_UPSTREAM_STREAM_LOGPROBS", "").lower() in ("1", "true", "yes")
    )
    # JSON {"<model>": "<tokenizer spec>"}: the model's own tokenizer counts what an upstream does not
    # report ("gguf:<path>", "tokenizer.json:<path>", "tiktoken:<encoding>"; workers/tokens.py).
    upstream_tokenizers: str = field(default_factory=lambda: _env("TOLLGATE_UPSTREAM_TOKENIZERS", ""))
    # JSON {"<pool>": {"url", "api_key"?, "timeout_s"?, "connect_timeout_s"?, "calls_in_flight_max"?,
    # "stream_logprobs"?, "tokenizers"?, "models"?}}: each pool's upstream (models: the upstream's
    # name for a price book model). Pools not named here use TOLLGATE_UPSTREAM_URL.
    upstreams: str = field(default_factory=lambda: _env("TOLLGATE_UPSTREAMS", ""))
    # Quota leases: the life of a slice of a balance the ledger grants a gateway instance, which
    # places holds against it in memory (gateway/quota.py); 0 sends every request through the ledger.
    quota_slice_ttl_s: int = field(default_factory=lambda: int(_env("TOLLGATE_QUOTA_SLICE_TTL_S", "30")))
    # The least and the most a slice asks for (its size follows the organization's recent spend).
    quota_slice_micros_min: int = field(default_factory=lambda: int(_env("TOLLGATE_QUOTA_SLICE_MICROS_MIN", "100000")))
    quota_slice_micros_max: int = field(
        default_factory=lambda: int(_env("TOLLGATE_QUOTA_SLICE_MICROS_MAX", "1000000000"))
    )
    # A time-metered resource (a GPU instance) is charged, and its next interval held, this often
    # (ledger/resources.py): it is stopped at most this long after its balance runs out of cover.
    resource_interval_s: int = field(default_factory=lambda: int(_env("TOLLGATE_RESOURCE_INTERVAL_S", "60")))
    # An unresolved hold expires after this; longer than any sync request may take.
    hold_ttl_s: int = field(default_factory=lambda: int(_env("TOLLGATE_HOLD_TTL_S", "900")))
    # How long a sync request waits for its job before answering 504 (the hold then resolves alone).
    request_wait_s_max: float = field(default_factory=lambda: float(_env("TOLLGATE_REQUEST_WAIT_S_MAX", "120")))
    # Records a role takes from the log per poll / per transaction.
    batch_records_max: int = field(default_factory=lambda: int(_env("TOLLGATE_BATCH_RECORDS_MAX", "500")))
    # How long a role's poll waits for records when there are none (a poll returns as soon as some
    # arrive): it bounds how late a loop notices a stop or a due expiry, and each empty wake costs CPU.
    poll_wait_ms: int = field(default_factory=lambda: int(_env("TOLLGATE_POLL_WAIT_MS", "500")))
    # The ledger gathers commands no request waits on (leases, outcomes, holds carved from slices)
    # this long before it decides and commits them: one transaction for several, its fixed cost (on
    # Kafka, five requests to the coordinator and a marker per partition) shared. A command someone
    # waits on ends the gathering at once. Captures reach the jobs view, other instances' balances and
    # usage this much later than the answer. 0: a transaction per poll.
    ledger_linger_ms: int = field(default_factory=lambda: int(_env("TOLLGATE_LEDGER_LINGER_MS", "50")))
    # No request waits on the projector (it inserts about once a second): it lets the broker hold a
    # fetch back up to this long to fill it. On Kafka, under load, that is a few fetches a second
    # instead of one per record written; a row may come this much later. 0: at once, as other readers.
    projector_fill_wait_ms: int = field(default_factory=lambda: int(_env("TOLLGATE_PROJECTOR_FILL_WAIT_MS", "500")))
    # The projector flushes to ClickHouse at this many rows, or once it has read all there is (or its
    # first row has waited sink_flush_wait_ms_max), but no sooner than sink_flush_interval_ms_min
    # after its last flush unless the batch is full: ClickHouse's advice is about one insert a second
    # (each makes a part in every table and view, and merging parts cost the server more CPU than
    # the inserts). A quiet stack's first row is flushed at once.
    sink_batch_rows_max: int = field(default_factory=lambda: int(_env("TOLLGATE_SINK_BATCH_ROWS_MAX", "5000")))
    sink_flush_wait_ms_max: int = field(default_factory=lambda: int(_env("TOLLGATE_SINK_FLUSH_WAIT_MS_MAX", "200")))
    sink_flush_interval_ms_min: int = field(
        default_factory=lambda: int(_env("TOLLGATE_SINK_FLUSH_INTERVAL_MS_MIN", "1000"))
    )
    # Origins a browser may call the API from (comma separated; "*" any): keys travel in the
    # Authorization header, never in cookies, so a page can only use a key it was given.
    cors_allow_origins: tuple[str, ...] = field(
        default_factory=lambda: tuple(
            o.strip() for o in _env("TOLLGATE_CORS_ALLOW_ORIGINS", "*").split(",") if o.strip()
        )
    )
    # Where uploaded files' bytes live (/v1/files): a directory every gateway instance reaches (empty:
    # data_dir/files). Production puts them in an object store behind the same interface (gateway/blobs.py).
    files_dir: str = field(default_factory=lambda: _env("TOLLGATE_FILES_DIR", ""))
    # How long a media URL (an image, video or audio result asked for as a URL) stays valid.
    media_url_ttl_s: int = field(default_factory=lambda: int(_env("TOLLGATE_MEDIA_URL_TTL_S", "3600")))
    # The most one organization may keep stored in files; an upload past it is refused (413).
    storage_bytes_max: int = field(
        default_factory=lambda: int(_env("TOLLGATE_STORAGE_BYTES_MAX", str(1024 * 1024 * 1024)))
    )
    # Largest request body the gateway reads (an uploaded file's size is bounded by it too).
    request_body_bytes_max: int = field(
        default_factory=lambda: int(_env("TOLLGATE_REQUEST_BODY_BYTES_MAX", str(4 * 1024 * 1024)))
    )
    # Requests a gateway keeps waiting at once; past it, new ones get 503 instead of queueing.
    inflight_requests_max: int = field(default_factory=lambda: int(_env("TOLLGATE_INFLIGHT_REQUESTS_MAX", "4096")))
    # Of those, the most one organization keeps waiting at once (0: half of them); past it, its new ones
    # get 429, so that one organization's slow requests cannot fill a gateway for every other.
    org_inflight_requests_max: int = field(default_factory=lambda: int(_env("TOLLGATE_ORG_INFLIGHT_REQUESTS_MAX", "0")))
    # Service tokens (JWTs, EdDSA): their JWKS by URL or file; neither set means JWTs are refused.
    jwks_url: str = field(default_factory=lambda: _env("TOLLGATE_JWKS_URL", ""))
    jwks_file: str = field(default_factory=lambda: _env("TOLLGATE_JWKS_FILE", ""))
    # The issuer and audience every service token must name.
    jwt_issuer: str = field(default_factory=lambda: _env("TOLLGATE_JWT_ISSUER", "tollgate"))
    jwt_audience: str = field(default_factory=lambda: _env("TOLLGATE_JWT_AUDIENCE", "tollgate"))
    # Clock skew allowed on exp/nbf/iat between the issuer and the gateway.
    jwt_leeway_s: int = field(default_factory=lambda: int(_env("TOLLGATE_JWT_LEEWAY_S", "30")))
    # An unknown key id refetches the JWKS, at most this often (a stream of forged kids cannot
    # hammer the issuer); the JWKS is also refetched when older than jwks_age_s_max (keys retire).
    jwks_refresh_s_min: float = field(default_factory=lambda: float(_env("TOLLGATE_JWKS_REFRESH_S_MIN", "10")))
    jwks_age_s_max: float = field(default_factory=lambda: float(_env("TOLLGATE_JWKS_AGE_S_MAX", "300")))
    jwks_fetch_timeout_s: float = field(default_factory=lambda: float(_env("TOLLGATE_JWKS_FETCH_TIMEOUT_S", "3")))
    # Per-IP safety net before authentication (reference: 5k requests / 10 min per IP); per instance.
    ip_requests_per_window_max: int = field(
        default_factory=lambda: int(_env("TOLLGATE_IP_REQUESTS_PER_WINDOW_MAX", "5000"))
    )
    ip_window_s: int = field(default_factory=lambda: int(_env("TOLLGATE_IP_WINDOW_S", "600")))
    # Addresses the per-IP net remembers; the least recent are forgotten first (bounded memory).
    ips_tracked_max: int = field(default_factory=lambda: int(_env("TOLLGATE_IPS_TRACKED_MAX", "100000")))
    # A key's last-used time goes to the log at most this often per key and instance.
    token_last_used_interval_s: int = field(
        default_factory=lambda: int(_env("TOLLGATE_TOKEN_LAST_USED_INTERVAL_S", "60"))
    )
    # --- seeing it (eventlog/metrics.py) ---
    # The ledger, worker and projector processes serve /metrics, /livez and /readyz on this port
    # (empty: no listener; 0: any free port, logged). The gateway serves them on its own port.
    metrics_port: str = field(default_factory=lambda: _env("TOLLGATE_METRICS_PORT", ""))
    metrics_host: str = field(default_factory=lambda: _env("TOLLGATE_METRICS_HOST", "127.0.0.1"))
    # A role is live while each of its loops turned within this (a stuck loop gets it restarted) ...
    live_stall_s_max: float = field(default_factory=lambda: float(_env("TOLLGATE_LIVE_STALL_S_MAX", "30")))
    # ... and ready while each of its consumers is at most this many records behind the log.
    ready_lag_records_max: int = field(default_factory=lambda: int(_env("TOLLGATE_READY_LAG_RECORDS_MAX", "1000")))
    # "json": one JSON object per log line (with role, request_id, org_id), for log pipelines; "text".
    log_format: str = field(default_factory=lambda: _env("TOLLGATE_LOG_FORMAT", "text"))

    @property
    def embedded(self) -> bool:
        return not self.kafka_bootstrap

    @property
    def signing_key_path(self) -> Path:
        if self.ledger_signing_key_file:
            return Path(self.ledger_signing_key_file)
        return self.data_dir / "ledger-signing-key.pem"
