"""The one settings object: every process builds it once at start-up from the environment.

`DATABASE_URL` and `REDIS_URL` are read without a prefix (the names platforms already use);
everything else is `MODERATION_*`. Unset URLs select the embedded default: SQLite under
`var/` and kombu's filesystem transport as the Celery broker.
"""

from __future__ import annotations

from functools import cached_property
from pathlib import Path
from typing import Any, Literal

from pydantic import AliasChoices, Field, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

PACKAGE_DIR = Path(__file__).resolve().parent


def data_dir(name: str) -> Path:
    """A data folder that ships with the code (`policies`, `migrations`): inside the installed
    package for a wheel (copied to `moderation/_data/` at build time), else the source
    checkout's top-level folder."""
    shipped = PACKAGE_DIR / "_data" / name
    return shipped if shipped.is_dir() else PACKAGE_DIR.parent / name


def default_var_dir() -> Path:
    """Where the embedded default keeps its database, broker and blobs: `var/` of the source
    checkout (so the API, workers and beat started from anywhere share it), or `var/` under the
    working directory for an installed wheel (it has no checkout)."""
    installed = (PACKAGE_DIR / "_data").is_dir()
    return (Path.cwd() if installed else PACKAGE_DIR.parent) / "var"


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="MODERATION_", extra="ignore")

    database_url: str | None = Field(
        default=None, validation_alias=AliasChoices("DATABASE_URL", "MODERATION_DATABASE_URL")
    )
    redis_url: str | None = Field(default=None, validation_alias=AliasChoices("REDIS_URL", "MODERATION_REDIS_URL"))
    # A broker other than Redis (e.g. RabbitMQ); defaults to REDIS_URL, then the embedded broker.
    broker_url: str | None = None
    # Migrations run as the schema owner (this URL; unset: DATABASE_URL), services as the LOGIN
    # role `moderation_service`, a member of `moderation_app`, which may only insert and read
    # audit rows. Each `moderation migrate` sets that role's password from service_db_password
    # (sent as a SCRAM verifier, never in the clear); unset: the operator sets it.
    migrate_database_url: str | None = None
    service_db_password: str | None = None

    var_dir: Path = Field(default_factory=default_var_dir)
    # Where the originals live (moderation.intake.blobs): `file:///dir` on one host (or a shared
    # POSIX filesystem), `s3://bucket/prefix` across hosts. Unset: blob_dir, else var_dir/blobs.
    # S3 credentials come from the standard chain (AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY, a
    # profile, an instance or pod role); s3_endpoint_url names a non-AWS server (MinIO, Ceph).
    blob_url: str | None = None
    blob_dir: Path | None = None
    blob_fsync: bool = True
    s3_endpoint_url: str | None = None
    s3_region: str = "us-east-1"
    s3_timeout_s: float = 10.0  # connect and read, per attempt
    s3_max_attempts: int = 3  # botocore's standard retry mode, per call (then the task retries)
    policies_dir: Path = Field(default_factory=lambda: data_dir("policies"))
    migrations_dir: Path = Field(default_factory=lambda: data_dir("migrations"))
    # The lite analyzer's data: lexicon, exemplars, calibration, nudity mapping.
    lite_dir: Path = Field(default_factory=lambda: data_dir("policies") / "lite")
    default_policy: str = "default"

    # Input limits (checked before anything is stored or queued).
    max_upload_bytes: int = 20 * 1024 * 1024
    max_pixels: int = 50_000_000
    max_frames: int = 500
    max_total_pixels: int = 400_000_000  # width * height * frames, the decompression-bomb guard
    # Decoding: one image may take at most max_decode_bytes (estimated from its header: pixels x
    # bytes per pixel of its mode, plus the RGB copy), and all the decodes a process runs at once
    # at most decode_memory_budget (a decode waits for its share; 503 after decode_wait_s).
    max_decode_bytes: int = 512 * 1024 * 1024
    decode_memory_budget: int = 512 * 1024 * 1024
    decode_wait_s: float = 30.0
    hash_side: int = 128  # JPEGs are decoded (draft mode) at the smallest DCT scale >= this side
    bank_cache_ttl_s: float = 5.0  # new bank entries apply within this time
    bank_max_distance: int = 31  # PDQ bits: a candidate match
    bank_decisive_distance: int = 10  # PDQ bits: a copy, decided without models (beyond: near match)

    # Reliability.
    max_attempts: int = 5
    stale_after_s: float = 60.0  # a submission without progress for this long is re-enqueued
    reconcile_interval_s: float = 15.0
    # Hard time limits of the tasks (a stage past its limit is killed, counted as an attempt, and
    # retried or sent to review). Redis redelivers a task not acknowledged within the visibility
    # timeout, so that is derived from them: twice the longest (or visibility_timeout_s if larger).
    ingest_time_limit_s: float = 120.0
    analyze_time_limit_s: float = 300.0  # one analyzer stage: a VLM micro-batch included
    decide_time_limit_s: float = 60.0
    visibility_timeout_s: int = 0
    reconcile_batch: int = 500

    # Queue-side ingest (`moderation ingest serve`): the broker platforms publish to, on accounts
    # of their own (RabbitMQ: amqp://gateway:…@host/moderation-ingest; Redis: its ACL'd instance).
    # Never the internal broker's connection.
    ingest_url: str | None = None
    ingest_prefetch: int = 16
    ingest_max_deliveries: int = 5  # a message no gateway finished this often is dead-lettered (poison)

    # The verdict cache: its own Redis database or instance (memory-bounded, `allkeys-lru`), never
    # the broker's; values carry an HMAC with `cache_key`. Without both, each process keeps its
    # own in-memory cache. Entries are per tenant unless the deployment opts into sharing them
    # (one tenant's uploads then show as `cached` in another's decisions).
    cache_url: str | None = None
    cache_key: str | None = None
    cache_shared_across_tenants: bool = False
    cache_max_items: int = 100_000  # the in-process store's bound

    # Ingest publishes from concurrent requests are grouped into one message (see IngestBatcher).
    ingest_batch_max: int = 32
    ingest_batch_linger_s: float = 0.05
    ingest_batch_min_rate: float = 50.0  # below this many submissions/s, no grouping (no added latency)

    # Celery task events (what Flower shows live); Flower switches them on when it connects.
    task_events: bool = False

    # Webhooks: POST the decision to the submission's callback_url, signed with HMAC-SHA256 by
    # the tenant's own secret. Attempts back off exponentially (x4 from callback_backoff_s,
    # capped): with the defaults the last of 10 attempts comes about 3 hours after the decision,
    # then the dead-letter table. Which receivers a tenant may use (plain http, private
    # networks) is the tenant's setting (`moderation callbacks receivers`), never a deployment's.
    callback_secret_grace_s: float = 86_400.0  # after a rotation, the old secret signs too for this long
    # Private networks a tenant's admin may open for its receivers through the API (JSON list of
    # CIDRs; empty: none, the operator sets them with `moderation callbacks receivers`).
    callback_tenant_networks: list[str] = Field(default_factory=list)
    callback_timeout_s: float = 10.0  # each phase; the whole request is bounded by 3x this
    callback_max_attempts: int = 10
    callback_backoff_s: float = 2.0
    callback_backoff_max_s: float = 3600.0
    callback_ca_bundle: str | None = None  # PEM file of CAs for receivers' certificates (default: certifi)
    callback_concurrency: int = 16  # threads of the callbacks worker that `moderation up` starts

    # Abuse limits: 429 with Retry-After. Token buckets per API key and per client address (in
    # Redis, REDIS_URL or ratelimit_url, shared by API replicas; in-process when embedded), a
    # stricter one per address for unknown keys, and per tenant for `high` priority.
    # `rate_limit_tenants` gives a tenant its own per-key rate: {"acme": 1000}.
    rate_limit: bool = True
    ratelimit_url: str | None = None
    rate_limit_key_per_s: float = 1000.0
    rate_limit_key_burst: float = 2000.0
    rate_limit_ip_per_s: float = 2000.0
    rate_limit_ip_burst: float = 4000.0
    rate_limit_auth_failures_per_s: float = 1.0
    rate_limit_auth_failures_burst: float = 20.0
    rate_limit_tenants: dict[str, float] = Field(default_factory=dict)
    high_priority_per_s: float = 10.0
    high_priority_burst: float = 100.0
    # Proxies whose X-Forwarded-For the API believes (comma-separated addresses, "*" for any):
    # unset, none, and the client address is the connection's.
    forwarded_allow_ips: str | None = None
    # /metrics answers only with `Authorization: Bearer <metrics_token>` when set.
    metrics_token: str | None = None
    # /readyz and the /metrics gauges read the database and broker at most this often.
    probe_cache_s: float = 2.0
    # /readyz answers 503 when work has waited longer than this and no worker finished a task in it.
    progress_stale_s: float = 120.0

    # Auth. Keys and tenants are cached per process; a revocation, rotation or tenant change
    # bumps a counter that each process reads at most every key_revocation_poll_s, dropping
    # its caches when it moved (so a revoked key fails everywhere within that time).
    key_cache_ttl_s: float = 30.0
    key_revocation_poll_s: float = 0.5
    key_last_used_every_s: float = 60.0  # api_keys.last_used_at: written behind, this often per key

    # Signed audit checkpoints (moderation.audit.checkpoint): the Ed25519 private key (PEM) that
    # `moderation audit checkpoint` and the beat task sign with (keep it off the database host),
    # the public key (PEM) that verify accepts, a folder outside the database where beat also
    # writes each checkpoint, and how often beat makes one per tenant.
    audit_signing_key: Path | None = None
    audit_verify_key: Path | None = None
    audit_checkpoint_dir: Path | None = None
    audit_checkpoint_interval_s: float = 86_400.0

    # Human review. A claim is a lease of review_lease_s (heartbeat extends it; an expired lease
    # returns the task to its queue). Appeals may be filed for appeal_window_days after the
    # decision (the DSA asks for at least six months) and are due within appeal_sla from the
    # policy. golden_rate: the share of `next` answers that are golden items. A moderator's
    # reveals of graphic originals past exposure_budget_per_hour make `next` serve non-graphic
    # tasks first and the console suggest a break.
    review_lease_s: float = 600.0
    appeal_window_days: int = Field(default=183, ge=183)
    golden_rate: float = Field(default=0.02, ge=0, le=1)
    exposure_budget_per_hour: int = Field(default=30, ge=0)
    review_upkeep_interval_s: float = 60.0  # beat: expired leases back to their queues, SLA ageing
    review_safe_side: int = 256  # the long side of the blurred, greyscale derivative
    # The console's session: how long a sign-in lasts, idle or not.
    web_session_s: float = 8 * 3600.0

    # Workers load (and run once) the analyzers of their queues before taking tasks.
    warmup: bool = True

    # VLM stage. `vlm=true` turns on the policy stages marked `requires: vlm` (set it where GPU
    # workers or a vLLM server run); the rest configures the engine, and a policy stage's
    # `options` override these per policy.
    vlm: bool = False
    vlm_engine: Literal["transformers", "openai"] = "transformers"
    vlm_model: str = "zai-org/GLM-4.6V-Flash"  # hub id (local cache) or a local checkpoint path
    # A platform's own fine-tune: a PEFT (LoRA) adapter folder loaded over vlm_model by the
    # transformers engine, or, with the openai engine, the name a vLLM server serves it under
    # (`--lora-modules NAME=PATH`). Part of the model's identity and of the verdict-cache key.
    vlm_adapter: str | None = None
    vlm_device: str = "auto"  # auto | cuda | cuda:N | cpu (`moderation worker --device cpu`)
    vlm_dtype: str = "auto"  # auto: bfloat16 on CUDA, float32 on the CPU
    vlm_image_side: int = 672  # long side of the image fed to the model: the speed/quality trade-off
    # In-process engine: compute the policy's system turn once and share its KV cache across a
    # batch (prefill then pays only for the image and the caption). Same outputs; off for A/B.
    vlm_prefix_cache: bool = True
    # generated: the score the model wrote; logprob: its expectation under the model's token
    # probabilities where the engine returns them (moderation/analyzers/vlm/logprob.py).
    vlm_score_method: Literal["generated", "logprob"] = "generated"
    vlm_max_new_tokens: int = 768  # 13 categories with one-line rationales need ~400-500
    vlm_batch_max: int = 16  # micro-batch: up to this many images per model call...
    vlm_batch_wait_ms: float = 50.0  # ...or what arrived this long after the first
    vlm_base_url: str | None = None  # openai engine: e.g. http://vllm:8000/v1
    vlm_api_key: str | None = None
    vlm_concurrency: int = 16
    vlm_timeout_s: float = 60.0  # openai engine: per request attempt
    vlm_retries: int = 2

    # The CLI as a client of a running API (`moderation submit|scan`), and the GPUs a scheduler
    # (Slurm, Kubernetes) allotted to this job, which `moderation worker --gpus` keeps to.
    client_api_key: str | None = Field(default=None, validation_alias=AliasChoices("MODERATION_API_KEY"))
    cuda_visible_devices: str | None = Field(default=None, validation_alias=AliasChoices("CUDA_VISIBLE_DEVICES"))

    @field_validator("rate_limit_tenants")
    @classmethod
    def _positive_rates(cls, value: dict[str, float]) -> dict[str, float]:
        bad = sorted(t for t, rate in value.items() if not rate > 0)
        if bad:
            raise ValueError(f"a tenant's rate is a positive number of requests/s: {bad}")
        return value

    @field_validator(
        "migrate_database_url",
        "service_db_password",
        "audit_signing_key",
        "audit_verify_key",
        "audit_checkpoint_dir",
        "vlm_adapter",
        "blob_url",
        "s3_endpoint_url",
        mode="before",
    )
    @classmethod
    def _empty_is_unset(cls, value: Any) -> Any:
        # `VAR=` (compose's `${VAR:-}`) means unset, not the path "." or an empty password.
        return None if value == "" else value

    @property
    def features(self) -> frozenset[str]:
        """Deployment features that policy stages can `require`."""
        return frozenset({"vlm"}) if self.vlm else frozenset()

    @cached_property
    def embedded(self) -> bool:
        return self.database_url is None

    @property
    def db_url(self) -> str:
        if self.database_url:
            return _sqlalchemy_url(self.database_url)
        return f"sqlite:///{self.var_dir / 'moderation.db'}"

    @property
    def migrate_db_url(self) -> str:
        """Where migrations run: the owner's URL when set, else the services' one."""
        return _sqlalchemy_url(self.migrate_database_url) if self.migrate_database_url else self.db_url

    @property
    def task_time_limits(self) -> dict[str, float]:
        """The hard time limit of each kind of task, in seconds (callbacks: one attempt's deadline)."""
        return {
            "ingest": self.ingest_time_limit_s,
            "analyze": self.analyze_time_limit_s,
            "decide": self.decide_time_limit_s,
            "callback": self.callback_timeout_s * 3 + 10,
        }

    @property
    def redelivery_after_s(self) -> int:
        """The broker's visibility timeout: at least twice the longest task time limit, so a task
        still running is never handed to a second worker."""
        return max(self.visibility_timeout_s, int(2 * max(self.task_time_limits.values())) + 1)

    @property
    def celery_broker_url(self) -> str:
        if self.broker_url:
            return self.broker_url
        if self.redis_url:
            return self.redis_url
        return "filesystem://"

    @property
    def embedded_broker(self) -> bool:
        return self.celery_broker_url.startswith("filesystem://")

    @property
    def broker_dir(self) -> Path:
        return self.var_dir / "broker"

    @property
    def blobs(self) -> Path:
        """The blob directory of the default filesystem store."""
        return self.blob_dir or self.var_dir / "blobs"

    @property
    def blob_store_url(self) -> str:
        return self.blob_url or self.blobs.resolve().as_uri()


def _sqlalchemy_url(url: str) -> str:
    if url.startswith("postgres://"):
        url = "postgresql://" + url[len("postgres://") :]
    if url.startswith("postgresql://"):
        url = "postgresql+psycopg2://" + url[len("postgresql://") :]
    return url


def default(name: str) -> Any:
    """The default of setting `name`, for code that takes the same option without Settings
    (the VLM engines' constructors): one source of defaults."""
    return Settings.model_fields[name].default
