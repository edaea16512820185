"""Relational schema: the system of record (SQLAlchemy 2 Core tables).

Works on PostgreSQL (production, tests) and SQLite (embedded default). Postgres-only
guards (append-only trigger, restricted role) live in the Alembic migration.
"""

from __future__ import annotations

from datetime import UTC, datetime

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    Column,
    DateTime,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    UniqueConstraint,
    text,
)

NAMING = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}
metadata = MetaData(naming_convention=NAMING)

# SQLite only autoincrements INTEGER PRIMARY KEY.
BigId = BigInteger().with_variant(Integer(), "sqlite")


def utcnow() -> datetime:
    return datetime.now(UTC)


def as_utc(value: datetime) -> datetime:
    """An aware UTC datetime; SQLite hands back naive datetimes, which are UTC here."""
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def iso(value: datetime | None) -> str | None:
    """ISO-8601 in UTC."""
    return None if value is None else as_utc(value).isoformat()


def timestamp(name: str, **kw: object) -> Column[datetime]:
    return Column(name, DateTime(timezone=True), **kw)  # type: ignore[arg-type]


tenants = Table(
    "tenants",
    metadata,
    Column("id", String(64), primary_key=True),
    Column("name", String(200), nullable=False),
    Column("default_policy", String(64), nullable=True),
    # The tenant's webhook signing secret (HMAC needs it in the clear), random and its own from
    # creation; the previous one still signs, beside it, for a grace period after a rotation.
    Column("callback_secret", String(80), nullable=False),
    Column("callback_secret_prev", String(80), nullable=True),
    timestamp("callback_secret_rotated_at", nullable=True),
    # Its callback receivers' rules: plain http allowed, and the private networks (JSON list of
    # CIDR strings) a receiver may resolve to; everything else non-public is refused.
    Column("callback_allow_http", Boolean, nullable=False, default=False),
    Column("callback_private_networks", JSON, nullable=False, default=lambda: []),
    timestamp("created_at", nullable=False, default=utcnow),
    # Policies a submission may name (JSON list; the tenant's default is always allowed).
    # NULL: every policy the deployment ships (tenants made before allow-lists existed).
    Column("allowed_policies", JSON, nullable=True),
)

api_keys = Table(
    "api_keys",
    metadata,
    Column("id", String(32), primary_key=True),
    Column("tenant_id", String(64), ForeignKey("tenants.id"), nullable=False, index=True),
    Column("key_hash", String(64), nullable=False, unique=True),
    Column("prefix", String(24), nullable=False),
    Column("roles", JSON, nullable=False),
    Column("label", String(200), nullable=True),
    timestamp("created_at", nullable=False, default=utcnow),
    # In the future: a rotated key still valid until then (the grace period).
    timestamp("revoked_at", nullable=True),
    # Written behind, at most once a minute per key and process (moderation.access.auth).
    timestamp("last_used_at", nullable=True),
)

# One row, bumped in the transaction of every change that must reach the in-process key caches
# (revocation, rotation, a tenant's policies): each process polls it at most every
# key_revocation_poll_s and drops its caches when it moved.
access_epoch = Table(
    "access_epoch",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=False),
    Column("epoch", BigInteger, nullable=False),
    timestamp("changed_at", nullable=False),
)

# The web console's sessions (moderation.access.sessions): the SHA-256 of the cookie's token,
# the key it was made with (its roles are read from the key on every request), the CSRF token
# of its forms and the claim tokens of the tasks it holds.
web_sessions = Table(
    "web_sessions",
    metadata,
    Column("token_hash", String(64), primary_key=True),
    Column("tenant_id", String(64), nullable=False),
    Column("key_id", String(32), nullable=False),
    Column("csrf", String(64), nullable=False),
    Column("claims", JSON, nullable=False),
    timestamp("created_at", nullable=False),
    timestamp("expires_at", nullable=False),
    timestamp("revoked_at", nullable=True),
    Index("ix_web_sessions_key", "key_id"),
)

# Queue-side ingest: a platform's broker account (RabbitMQ user, or Redis ACL user) and the
# tenant whose submissions it may publish. The broker authenticates the account; the gateway
# maps it to the tenant. `secret` signs Redis messages (HMAC; RabbitMQ vouches for its users).
ingest_accounts = Table(
    "ingest_accounts",
    metadata,
    Column("account", String(64), primary_key=True),
    Column("tenant_id", String(64), ForeignKey("tenants.id"), nullable=False, index=True),
    Column("transport", String(8), nullable=False),
    Column("secret", String(80), nullable=True),
    timestamp("created_at", nullable=False, default=utcnow),
    timestamp("revoked_at", nullable=True),
)

submissions = Table(
    "submissions",
    metadata,
    Column("id", String(32), primary_key=True),
    Column("tenant_id", String(64), ForeignKey("tenants.id"), nullable=False),
    Column("external_id", String(256), nullable=True),
    Column("idempotency_key", String(256), nullable=True),
    Column("source", String(8), nullable=False, default="http"),
    Column("sha256", String(64), nullable=False),
    Column("phash", String(16), nullable=True),
    Column("pdq", String(64), nullable=True),
    Column("pdq_quality", Integer, nullable=True),
    Column("format", String(8), nullable=False),
    Column("width", Integer, nullable=False),
    Column("height", Integer, nullable=False),
    Column("frames", Integer, nullable=False, default=1),
    Column("byte_size", Integer, nullable=False),
    Column("caption", Text, nullable=True),
    Column("uploader_id", String(256), nullable=True),
    Column("callback_url", Text, nullable=True),
    Column("priority", String(8), nullable=False, default="normal"),
    Column("policy_id", String(64), nullable=False),
    Column("status", String(16), nullable=False),
    Column("attempts", Integer, nullable=False, default=0),
    Column("last_error", Text, nullable=True),
    Column("request_ip", String(64), nullable=True),
    Column("api_key_id", String(32), nullable=True),
    timestamp("created_at", nullable=False, default=utcnow),
    timestamp("updated_at", nullable=False, default=utcnow),
    timestamp("decided_at", nullable=True),
    UniqueConstraint("tenant_id", "external_id", name="uq_submissions_tenant_external"),
    UniqueConstraint("tenant_id", "idempotency_key", name="uq_submissions_tenant_idem"),
    Index("ix_submissions_status_updated", "status", "updated_at"),
    Index("ix_submissions_tenant_created", "tenant_id", "created_at"),
    # The blobs a tenant may name on the queue (its own uploads), and its history of one image.
    Index("ix_submissions_tenant_sha256", "tenant_id", "sha256"),
    # An uploader's recent submissions (the review case shows them).
    Index("ix_submissions_tenant_uploader", "tenant_id", "uploader_id", "created_at"),
)

findings = Table(
    "findings",
    metadata,
    Column("id", BigId, primary_key=True, autoincrement=True),
    Column("submission_id", String(32), ForeignKey("submissions.id"), nullable=False, index=True),
    Column("stage", String(32), nullable=False),
    Column("analyzer", String(64), nullable=False),
    Column("analyzer_version", String(64), nullable=False),
    Column("body", JSON, nullable=False),
    timestamp("created_at", nullable=False, default=utcnow),
    UniqueConstraint("submission_id", "stage", "analyzer", name="uq_findings_sub_stage_analyzer"),
)

AUTOMATED = "automated"  # the dedupe key of the automated decision (human ones are keyed by their task)

decisions = Table(
    "decisions",
    metadata,
    Column("id", BigId, primary_key=True, autoincrement=True),
    Column("submission_id", String(32), ForeignKey("submissions.id"), nullable=False),
    # One automated decision per submission ("automated"); human ones are keyed by their task.
    Column("dedupe_key", String(64), nullable=False),
    Column("action", String(16), nullable=False),
    Column("categories", JSON, nullable=False),
    Column("reasons", JSON, nullable=False),
    Column("policy_id", String(64), nullable=False),
    Column("policy_version", String(64), nullable=False),
    Column("automated", Boolean, nullable=False),
    Column("attempt", Integer, nullable=False, default=1),
    Column("reviewer_id", String(64), nullable=True),
    timestamp("decided_at", nullable=False, default=utcnow),
    UniqueConstraint("submission_id", "dedupe_key", name="uq_decisions_sub_key"),
    # Auditors' searches and exports by time.
    Index("ix_decisions_decided_at", "decided_at"),
    # Who decided what (the appeal's conflict-of-interest rule reads it on every `next`).
    Index(
        "ix_decisions_reviewer",
        "reviewer_id",
        postgresql_where=text("reviewer_id IS NOT NULL"),
        sqlite_where=text("reviewer_id IS NOT NULL"),
    ),
)

# Human review: one task per submission and reason (the automated decision's, an appeal's, a
# golden item served to one moderator). A claim is a lease: `claimed_by` holds it until
# `lease_until` with a token only its holder knows (`claim_token_hash`); an expired lease is open.
review_tasks = Table(
    "review_tasks",
    metadata,
    Column("id", String(32), primary_key=True),
    Column("submission_id", String(32), ForeignKey("submissions.id"), nullable=False),
    Column("tenant_id", String(64), nullable=False),
    Column("dedupe_key", String(64), nullable=False),
    Column("kind", String(16), nullable=False, default="review"),  # review | qa | appeal | escalation
    Column("queue", String(32), nullable=False, default="default"),
    Column("reason", String(64), nullable=False),
    Column("status", String(16), nullable=False, default="open"),  # open | claimed | done
    Column("priority", Integer, nullable=False, default=5),  # lower is served first
    # Child-safety material: only `restricted_reviewer` keys see the task, whatever queue it moves to.
    Column("restricted", Boolean, nullable=False, default=False),
    # Scores at or above review_at in a graphic category: reveals count against the exposure budget.
    Column("graphic", Boolean, nullable=False, default=False),
    Column("category", String(32), nullable=True),  # the worst category of the automated decision
    Column("policy_id", String(64), nullable=True),
    Column("appeal_id", String(32), nullable=True),
    Column("golden", Boolean, nullable=False, default=False),  # never shown as such to moderators
    Column("claimed_by", String(64), nullable=True),
    Column("claim_token_hash", String(64), nullable=True),
    timestamp("claimed_at", nullable=True),
    timestamp("lease_until", nullable=True),
    timestamp("created_at", nullable=False, default=utcnow),
    timestamp("due_at", nullable=True),
    Column("breached", Boolean, nullable=False, default=False),  # counted once when past due_at
    Column("decided_by", String(64), nullable=True),
    timestamp("closed_at", nullable=True),
    UniqueConstraint("submission_id", "dedupe_key", name="uq_review_tasks_sub_key"),
    Index("ix_review_tasks_open", "tenant_id", "status", "queue", "created_at"),
    Index("ix_review_tasks_next", "tenant_id", "status", "priority", "due_at"),
    Index(
        "ix_review_tasks_decided_by",
        "decided_by",
        postgresql_where=text("decided_by IS NOT NULL"),
        sqlite_where=text("decided_by IS NOT NULL"),
    ),
)

# Appeals (DSA Art. 20): filed by the platform for its user against the current decision;
# one open at a time per submission; decided by someone who never decided the submission.
appeals = Table(
    "appeals",
    metadata,
    Column("id", String(32), primary_key=True),
    Column("tenant_id", String(64), nullable=False),
    Column("submission_id", String(32), ForeignKey("submissions.id"), nullable=False),
    Column("decision_id", BigInteger, nullable=False),  # the decision appealed against
    Column("statement", Text, nullable=False),
    Column("appellant_id", String(256), nullable=True),
    Column("status", String(16), nullable=False, default="open"),  # open | decided
    Column("outcome", String(16), nullable=True),  # upheld | reversed | modified
    Column("task_id", String(32), nullable=True),
    Column("filed_by", String(64), nullable=True),  # the platform's key id
    timestamp("created_at", nullable=False, default=utcnow),
    timestamp("due_at", nullable=False),
    timestamp("decided_at", nullable=True),
    Column("decided_by", String(64), nullable=True),
    Index("ix_appeals_submission", "submission_id"),
    Index(
        "uq_appeals_open_per_submission",
        "submission_id",
        unique=True,
        postgresql_where=text("status = 'open'"),
        sqlite_where=text("status = 'open'"),
    ),
)

# Golden items: decided submissions an admin marked with the action expected of a reviewer;
# served to moderators like any task, their answers measure agreement.
golden_items = Table(
    "golden_items",
    metadata,
    Column("tenant_id", String(64), primary_key=True),
    Column("submission_id", String(32), ForeignKey("submissions.id"), primary_key=True),
    Column("expected_action", String(16), nullable=False),
    Column("created_by", String(64), nullable=False),
    timestamp("created_at", nullable=False, default=utcnow),
)

golden_answers = Table(
    "golden_answers",
    metadata,
    Column("id", BigId, primary_key=True, autoincrement=True),
    Column("tenant_id", String(64), nullable=False),
    Column("task_id", String(32), nullable=False, unique=True),
    Column("submission_id", String(32), nullable=False),
    Column("moderator", String(64), nullable=False),
    Column("expected_action", String(16), nullable=False),
    Column("given_action", String(16), nullable=False),
    Column("agreed", Boolean, nullable=False),
    timestamp("answered_at", nullable=False),
    Index("ix_golden_answers_moderator", "tenant_id", "moderator"),
)

# Every reveal of an original image to a moderator (also an audit event): the exposure budget
# counts the graphic ones per moderator and hour.
media_reveals = Table(
    "media_reveals",
    metadata,
    Column("id", BigId, primary_key=True, autoincrement=True),
    Column("tenant_id", String(64), nullable=False),
    Column("moderator", String(64), nullable=False),
    Column("task_id", String(32), nullable=False),
    Column("submission_id", String(32), nullable=False),
    Column("graphic", Boolean, nullable=False),
    timestamp("revealed_at", nullable=False),
    Index("ix_media_reveals_moderator_time", "tenant_id", "moderator", "revealed_at"),
)

audit_events = Table(
    "audit_events",
    metadata,
    Column("id", BigId, primary_key=True, autoincrement=True),
    Column("tenant_id", String(64), nullable=False),
    Column("seq", BigInteger, nullable=False),
    timestamp("occurred_at", nullable=False),
    Column("action", String(32), nullable=False),
    Column("submission_id", String(32), nullable=True),
    Column("category", String(32), nullable=True),
    Column("automated", Boolean, nullable=True),
    Column("actor", String(128), nullable=False),
    # Canonical JSON (sorted keys, compact); row_hash = sha256(prev_hash + "\n" + body).
    Column("body", Text, nullable=False),
    Column("prev_hash", String(64), nullable=False),
    Column("row_hash", String(64), nullable=False),
    UniqueConstraint("tenant_id", "seq", name="uq_audit_events_tenant_seq"),
    Index("ix_audit_events_submission", "submission_id"),
    Index("ix_audit_events_tenant_time", "tenant_id", "occurred_at"),
)

# The chain head per tenant: the lock that serialises appends and the tail that verify checks
# (a deleted tail would otherwise leave a valid but shorter chain).
audit_heads = Table(
    "audit_heads",
    metadata,
    Column("tenant_id", String(64), primary_key=True),
    Column("seq", BigInteger, nullable=False),
    Column("last_hash", String(64), nullable=False),
)

# Signed checkpoints of the chains (moderation.audit.checkpoint): Ed25519 over (tenant, seq,
# head hash, time), made with a key the database never holds. A copy here for the API; the
# anchor that survives a database superuser is the copy kept outside (file, checkpoint dir).
audit_checkpoints = Table(
    "audit_checkpoints",
    metadata,
    Column("id", BigId, primary_key=True, autoincrement=True),
    Column("tenant_id", String(64), nullable=False),
    Column("seq", BigInteger, nullable=False),
    Column("head_hash", String(64), nullable=False),
    timestamp("signed_at", nullable=False),
    Column("key_id", String(64), nullable=False),  # sha256 of the raw public key, hex
    Column("signature", String(128), nullable=False),  # base64url, unpadded
    Index("ix_audit_checkpoints_tenant_seq", "tenant_id", "seq"),
)

# What was sent to the DSA Transparency Database (`moderation audit submit-dsa`): it never takes a
# PUID twice and has no update, so each PUID is sent once; a statement it refused stays here
# with the database's message (the dead letter of statements).
dsa_ledger = Table(
    "dsa_ledger",
    metadata,
    Column("tenant_id", String(64), primary_key=True),
    Column("puid", String(500), primary_key=True),
    Column("submission_id", String(32), nullable=False),
    Column("decision_id", BigInteger, nullable=False),
    Column("status", String(16), nullable=False),  # sent | rejected
    Column("error", Text, nullable=True),
    Column("endpoint", String(500), nullable=False),
    timestamp("sent_at", nullable=False),
)

# Liveness by progress: when each worker process last finished a task (written behind, every few
# seconds, by the process itself). A worker that is up but consumes nothing shows here, not in `ps`.
worker_progress = Table(
    "worker_progress",
    metadata,
    Column("worker", String(200), primary_key=True),
    Column("queues", String(500), nullable=False),
    Column("tasks", BigInteger, nullable=False),
    timestamp("last_finished_at", nullable=False),
)

dead_letters = Table(
    "dead_letters",
    metadata,
    Column("id", BigId, primary_key=True, autoincrement=True),
    Column("submission_id", String(32), nullable=True, index=True),
    Column("task", String(64), nullable=False),
    Column("error", Text, nullable=False),
    Column("attempts", Integer, nullable=False),
    Column("payload", JSON, nullable=True),
    timestamp("created_at", nullable=False, default=utcnow),
)

# The webhook outbox: written in the decision's transaction, so that a decision is never
# without its callback (a worker killed after commit, or a broker that lost the message, leaves
# a pending row that the reconciler re-publishes). One row per decision (`event` = its dedupe key).
callback_deliveries = Table(
    "callback_deliveries",
    metadata,
    Column("id", String(32), primary_key=True),  # X-Moderation-Delivery: the receiver's dedupe key
    Column("submission_id", String(32), ForeignKey("submissions.id"), nullable=False),
    Column("tenant_id", String(64), nullable=False),
    Column("event", String(64), nullable=False),
    Column("url", Text, nullable=False),
    Column("status", String(16), nullable=False, default="pending"),  # pending | delivered | failed
    Column("attempts", Integer, nullable=False, default=0),
    Column("last_status", Integer, nullable=True),  # the receiver's last HTTP status
    Column("last_error", Text, nullable=True),
    timestamp("next_attempt_at", nullable=False),
    timestamp("created_at", nullable=False, default=utcnow),
    timestamp("delivered_at", nullable=True),
    UniqueConstraint("submission_id", "event", name="uq_callback_deliveries_sub_event"),
    Index("ix_callback_deliveries_due", "status", "next_attempt_at"),
)

banks = Table(
    "banks",
    metadata,
    Column("tenant_id", String(64), primary_key=True),
    Column("name", String(64), primary_key=True),
    Column("kind", String(8), nullable=False),  # "bad" | "good"
    Column("category", String(32), nullable=True),  # the policy category a match implies
    Column("description", Text, nullable=True),
    timestamp("created_at", nullable=False, default=utcnow),
)

bank_entries = Table(
    "bank_entries",
    metadata,
    Column("id", BigId, primary_key=True, autoincrement=True),
    Column("tenant_id", String(64), nullable=False),
    Column("bank", String(64), nullable=False),
    Column("kind", String(8), nullable=False),  # "bad" | "good"
    Column("label", String(200), nullable=True),
    Column("category", String(32), nullable=True),
    Column("pdq", String(64), nullable=True),
    Column("phash", String(16), nullable=True),
    Column("sha256", String(64), nullable=True),
    timestamp("created_at", nullable=False, default=utcnow),
    Index("ix_bank_entries_tenant", "tenant_id", "bank"),
    Index("ix_bank_entries_tenant_id", "tenant_id", "id"),
)
