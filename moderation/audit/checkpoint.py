"""Signed checkpoints of the audit chains: the anchor outside the database.

A checkpoint is `(tenant, seq, head hash, time)` signed with an Ed25519 key that the database
never holds (`MODERATION_AUDIT_SIGNING_KEY`, a PEM private key). Because each `row_hash`
commits to every row before it, a checkpoint at seq N pins the tenant's whole chain up to N:
verifying against it (with the public key, `MODERATION_AUDIT_VERIFY_KEY`) checks that the
signature is good and made by that key, that the row at N still has the signed hash, and that
the chain from the start to the head verifies. A chain that someone with database superuser
rights deleted and replayed with recomputed hashes fails the second check; rows removed below
N fail it too. Rows after the last checkpoint are anchored by nothing but the chain itself.

Checkpoints are written to a file (`moderation audit checkpoint --out`), to the folder
`MODERATION_AUDIT_CHECKPOINT_DIR` when set, and to `audit_checkpoints` (append-only for the
services) so the API can verify against a stored id; the copies outside the database are the
ones that survive its superuser.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import logging
import os
import re
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any
from urllib.parse import quote

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from sqlalchemy import Connection, Engine, insert, select

from moderation.audit.chain import GENESIS, VerifyResult, canonical, tenants, verify
from moderation.db.tables import as_utc, audit_checkpoints, audit_events, utcnow
from moderation.errors import ModerationError
from moderation.settings import Settings

log = logging.getLogger(__name__)

CHECKPOINT_TYPE = "moderation.audit.checkpoint/v1"
SIGNING_KEY_FILE = "audit-signing-key.pem"
VERIFY_KEY_FILE = "audit-verify-key.pem"
_HEX64 = re.compile(r"[0-9a-f]{64}")
_MAX_REFERENCE = 4096  # a checkpoint file is ~400 bytes; its base64url ~550


class KeyFileError(Exception):
    """A key file that is missing, unreadable or not an Ed25519 key."""


class ChainNotVerified(Exception):
    """The chain (or its agreement with the last stored checkpoint) does not verify: it is not
    signed, so a checkpoint never launders damage."""

    def __init__(self, tenant_id: str, first_break: dict[str, Any] | None) -> None:
        super().__init__(f"audit chain of {tenant_id} does not verify: {first_break}")
        self.tenant_id = tenant_id
        self.first_break = first_break


# ---------------------------------------------------------------- keys


def key_id(public_key: Ed25519PublicKey) -> str:
    """The key's fingerprint: sha256 of its 32 raw bytes, hex."""
    raw = public_key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return hashlib.sha256(raw).hexdigest()


def write_keypair(folder: Path) -> tuple[Path, Path, str]:
    """A new Ed25519 key pair as PEM files in `folder` (the private one mode 0600). Returns the
    two paths and the key id. Raises FileExistsError rather than overwrite a key."""
    folder.mkdir(parents=True, exist_ok=True)
    private_path, public_path = folder / SIGNING_KEY_FILE, folder / VERIFY_KEY_FILE
    for p in (private_path, public_path):
        if p.exists():
            raise FileExistsError(f"{p} exists: keys are never overwritten")
    key = Ed25519PrivateKey.generate()
    private_pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    fd = os.open(private_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(private_pem)
    public_path.write_bytes(
        key.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    )
    return private_path, public_path, key_id(key.public_key())


def load_signing_key(path: Path) -> Ed25519PrivateKey:
    """Raises KeyFileError when the file is missing or not an unencrypted Ed25519 private key."""
    try:
        key = serialization.load_pem_private_key(path.read_bytes(), password=None)
    except (OSError, ValueError, TypeError) as exc:
        raise KeyFileError(f"cannot load the signing key {path}: {exc}") from exc
    if not isinstance(key, Ed25519PrivateKey):
        raise KeyFileError(f"{path} is not an Ed25519 private key")
    return key


def load_verify_key(path: Path) -> Ed25519PublicKey:
    """Raises KeyFileError when the file is missing or not an Ed25519 public key."""
    try:
        key = serialization.load_pem_public_key(path.read_bytes())
    except (OSError, ValueError, TypeError) as exc:
        raise KeyFileError(f"cannot load the verify key {path}: {exc}") from exc
    if not isinstance(key, Ed25519PublicKey):
        raise KeyFileError(f"{path} is not an Ed25519 public key")
    return key


# ---------------------------------------------------------------- the checkpoint


@dataclass(frozen=True)
class Checkpoint:
    tenant_id: str
    seq: int
    head_hash: str
    signed_at: datetime
    key_id: str
    signature: str  # base64url, unpadded
    id: int | None = None  # the stored copy's id (not signed)

    def payload(self) -> bytes:
        """The signed bytes: canonical JSON, with a type that keeps them from meaning anything else."""
        return canonical(
            {
                "type": CHECKPOINT_TYPE,
                "tenant_id": self.tenant_id,
                "seq": self.seq,
                "head_hash": self.head_hash,
                "signed_at": as_utc(self.signed_at).isoformat(),
                "key_id": self.key_id,
            }
        ).encode()

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {**json.loads(self.payload()), "signature": self.signature}
        if self.id is not None:
            out["id"] = self.id
        return out

    @classmethod
    def from_json(cls, data: Any) -> Checkpoint:
        """Raises ValueError naming the first field that is missing or malformed."""
        if not isinstance(data, dict):
            raise ValueError("a checkpoint is a JSON object")
        if data.get("type") != CHECKPOINT_TYPE:
            raise ValueError(f"type is not {CHECKPOINT_TYPE}")
        tenant_id, seq, head_hash = data.get("tenant_id"), data.get("seq"), data.get("head_hash")
        if not isinstance(tenant_id, str) or not 0 < len(tenant_id) <= 64:
            raise ValueError("tenant_id")
        if not isinstance(seq, int) or isinstance(seq, bool) or not 0 <= seq < 2**63:
            raise ValueError("seq")
        if not isinstance(head_hash, str) or not _HEX64.fullmatch(head_hash):
            raise ValueError("head_hash")
        kid, signature, signed_at = data.get("key_id"), data.get("signature"), data.get("signed_at")
        if not isinstance(kid, str) or not _HEX64.fullmatch(kid):
            raise ValueError("key_id")
        if not isinstance(signature, str) or len(_unb64(signature)) != 64:
            raise ValueError("signature")
        try:
            when = datetime.fromisoformat(str(signed_at))
            if when.tzinfo is None:
                raise ValueError("signed_at has no time zone")
            when = as_utc(when)  # a time at the calendar's edge overflows here
        except (ValueError, OverflowError) as exc:
            raise ValueError("signed_at") from exc
        raw_id = data.get("id")
        stored = raw_id if isinstance(raw_id, int) and not isinstance(raw_id, bool) else None
        return cls(tenant_id, seq, head_hash, when, kid, signature, stored)


def _b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    try:
        return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
    except (binascii.Error, ValueError) as exc:
        raise ValueError("not base64url") from exc


def sign(key: Ed25519PrivateKey, tenant_id: str, seq: int, head_hash: str, at: datetime | None = None) -> Checkpoint:
    unsigned = Checkpoint(tenant_id, seq, head_hash, as_utc(at or utcnow()), key_id(key.public_key()), "")
    return Checkpoint(
        unsigned.tenant_id,
        unsigned.seq,
        unsigned.head_hash,
        unsigned.signed_at,
        unsigned.key_id,
        _b64(key.sign(unsigned.payload())),
    )


def signature_problem(cp: Checkpoint, public_key: Ed25519PublicKey) -> str | None:
    """Why `cp` was not signed by `public_key`, or None when it was."""
    expected = key_id(public_key)
    if cp.key_id != expected:
        return f"signed by another key (key id {cp.key_id}), not the configured verify key ({expected})"
    try:
        public_key.verify(_unb64(cp.signature), cp.payload())
    except (InvalidSignature, ValueError):
        return "the signature does not verify with the configured verify key (checkpoint forged or altered)"
    return None


# ---------------------------------------------------------------- verify against a checkpoint


@dataclass
class CheckpointResult:
    """The chain's own verification plus its agreement with a checkpoint."""

    chain: VerifyResult
    checkpoint: Checkpoint
    problem: str | None  # why the checkpoint does not hold (None: it holds)
    row_id: int | None = None

    @property
    def ok(self) -> bool:
        return self.chain.ok and self.problem is None

    def to_json(self) -> dict[str, Any]:
        out = self.chain.to_json()
        out["ok"] = self.ok
        if out["first_break"] is None and self.problem is not None:
            out["first_break"] = {"seq": self.checkpoint.seq, "id": self.row_id, "reason": self.problem}
        out["checkpoint"] = {**self.checkpoint.to_json(), "ok": self.problem is None, "reason": self.problem}
        return out


NO_VERIFY_KEY = "no verify key configured (MODERATION_AUDIT_VERIFY_KEY)"


def verify_against(
    conn: Connection,
    tenant_id: str,
    cp: Checkpoint,
    public_key: Ed25519PublicKey | None,
    no_key_reason: str = NO_VERIFY_KEY,
) -> CheckpointResult:
    """Does the tenant's log still extend `cp`? Checks, reporting the first that fails: the
    checkpoint is this tenant's, it is signed by `public_key` (None: no usable verify key, which
    never verifies), the row at its seq has its hash; and, always, the whole chain."""
    chain = verify(conn, tenant_id)
    if cp.tenant_id != tenant_id:
        return CheckpointResult(chain, cp, f"the checkpoint is for another tenant ({cp.tenant_id})")
    if public_key is None:
        return CheckpointResult(chain, cp, no_key_reason)
    problem = signature_problem(cp, public_key)
    if problem:
        return CheckpointResult(chain, cp, problem)
    if cp.seq == 0:
        ok = cp.head_hash == GENESIS
        return CheckpointResult(chain, cp, None if ok else "a checkpoint at seq 0 must hold the genesis hash")
    row = conn.execute(
        select(audit_events.c.id, audit_events.c.row_hash).where(
            audit_events.c.tenant_id == tenant_id, audit_events.c.seq == cp.seq
        )
    ).first()
    if row is None:
        return CheckpointResult(
            chain, cp, f"no event at the checkpoint's seq {cp.seq}: the chain was truncated below the checkpoint"
        )
    if row.row_hash != cp.head_hash:
        return CheckpointResult(
            chain,
            cp,
            f"event {cp.seq} differs from the signed checkpoint: the chain up to it was rewritten",
            int(row.id),
        )
    return CheckpointResult(chain, cp, None, int(row.id))


def verify_with_settings(conn: Connection, tenant_id: str, cp: Checkpoint, settings: Settings) -> CheckpointResult:
    """verify_against with the configured verify key; an unset or unreadable key verifies nothing."""
    if settings.audit_verify_key is None:
        return verify_against(conn, tenant_id, cp, None)
    try:
        key = load_verify_key(settings.audit_verify_key)
    except KeyFileError as exc:
        log.error("%s", exc)
        return verify_against(conn, tenant_id, cp, None, "the configured verify key cannot be loaded (see the log)")
    return verify_against(conn, tenant_id, cp, key)


# ---------------------------------------------------------------- reading checkpoints


def parse_file(data: bytes) -> Checkpoint:
    """A checkpoint file's content. Raises ModerationError INVALID_REQUEST."""
    try:
        return Checkpoint.from_json(json.loads(data))
    except ValueError as exc:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
        raise ModerationError("INVALID_REQUEST", f"not a checkpoint: {exc}") from exc


def resolve(conn: Connection, tenant_id: str, reference: str) -> Checkpoint:
    """What `GET /v1/audit/verify?checkpoint=` names: a stored checkpoint's id (digits; another
    tenant's answers like a missing one) or the base64url of a checkpoint file.
    Raises ModerationError NOT_FOUND or INVALID_REQUEST."""
    if reference.isascii() and reference.isdigit():
        found = stored(conn, tenant_id, int(reference)) if len(reference) <= 18 else None
        if found is None:
            raise ModerationError("NOT_FOUND", "No such checkpoint for this tenant.")
        return found
    if len(reference) > _MAX_REFERENCE:
        raise ModerationError("INVALID_REQUEST", "checkpoint: too long")
    try:
        raw = _unb64(reference.strip())
    except ValueError as exc:
        raise ModerationError("INVALID_REQUEST", "checkpoint: neither a stored id nor base64url") from exc
    return parse_file(raw)


def stored(conn: Connection, tenant_id: str, checkpoint_id: int) -> Checkpoint | None:
    row = conn.execute(
        select(audit_checkpoints).where(
            audit_checkpoints.c.id == checkpoint_id, audit_checkpoints.c.tenant_id == tenant_id
        )
    ).first()
    return None if row is None else _from_row(row)


def latest_stored(conn: Connection, tenant_id: str, public_key: Ed25519PublicKey, scan: int = 20) -> Checkpoint | None:
    """The newest stored checkpoint of the tenant signed by `public_key` (rows with another key
    or a bad signature — anyone with the service role can insert rows — are skipped)."""
    rows = conn.execute(
        select(audit_checkpoints)
        .where(audit_checkpoints.c.tenant_id == tenant_id, audit_checkpoints.c.key_id == key_id(public_key))
        .order_by(audit_checkpoints.c.seq.desc(), audit_checkpoints.c.id.desc())
        .limit(scan)
    ).all()
    for row in rows:
        cp = _from_row(row)
        if signature_problem(cp, public_key) is None:
            return cp
    return None


def _from_row(row: Any) -> Checkpoint:
    return Checkpoint(
        row.tenant_id, int(row.seq), row.head_hash, as_utc(row.signed_at), row.key_id, row.signature, int(row.id)
    )


# ---------------------------------------------------------------- making checkpoints


def create(conn: Connection, tenant_id: str, key: Ed25519PrivateKey) -> Checkpoint:
    """Sign the tenant's current head and store the checkpoint (in the caller's transaction).

    Only a chain that verifies, and still extends the newest stored checkpoint of this key, is
    signed: otherwise raises ChainNotVerified (signing would anchor the damage)."""
    chain = verify(conn, tenant_id)
    if not chain.ok or chain.head is None:
        raise ChainNotVerified(tenant_id, chain.first_break or {"reason": "the tenant has no chain"})
    previous = latest_stored(conn, tenant_id, key.public_key())
    if previous is not None:
        against = verify_against(conn, tenant_id, previous, key.public_key())
        if not against.ok:
            raise ChainNotVerified(tenant_id, against.to_json()["first_break"])
    cp = sign(key, tenant_id, int(chain.head["seq"]), str(chain.head["last_hash"]))
    inserted = conn.execute(
        insert(audit_checkpoints).values(
            tenant_id=cp.tenant_id,
            seq=cp.seq,
            head_hash=cp.head_hash,
            signed_at=cp.signed_at,
            key_id=cp.key_id,
            signature=cp.signature,
        )
    )
    assert inserted.inserted_primary_key is not None
    new_id = inserted.inserted_primary_key[0]
    return Checkpoint(cp.tenant_id, cp.seq, cp.head_hash, cp.signed_at, cp.key_id, cp.signature, int(new_id))


def write_file(cp: Checkpoint, path: Path) -> None:
    """Write the checkpoint as JSON (atomically: a reader never sees half a file)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(cp.to_json(), indent=2, sort_keys=True) + "\n", encoding="utf-8")
    os.replace(tmp, path)


def archive_path(folder: Path, cp: Checkpoint) -> Path:
    """Where the beat task files a checkpoint: one folder per tenant (its id made path-safe)."""
    stamp = as_utc(cp.signed_at).strftime("%Y%m%dT%H%M%SZ")
    return folder / quote(cp.tenant_id, safe="") / f"{cp.seq:012d}-{stamp}.json"


def checkpoint_all(engine: Engine, settings: Settings) -> dict[str, Any]:
    """The beat task: a checkpoint per tenant, stored and (with MODERATION_AUDIT_CHECKPOINT_DIR)
    filed outside the database. A chain that does not verify is logged as an error, not signed."""
    if settings.audit_signing_key is None:
        return {"signed": 0, "skipped": "no signing key configured (MODERATION_AUDIT_SIGNING_KEY)"}
    key = load_signing_key(settings.audit_signing_key)
    with engine.connect() as conn:
        names = tenants(conn)
    signed, broken = 0, []
    for tenant_id in names:
        try:
            with engine.begin() as conn:
                cp = create(conn, tenant_id, key)
        except ChainNotVerified as exc:
            log.error("audit checkpoint refused: %s", exc)
            broken.append(tenant_id)
            continue
        if settings.audit_checkpoint_dir is not None:
            write_file(cp, archive_path(settings.audit_checkpoint_dir, cp))
        signed += 1
    return {"signed": signed, "broken": broken}
