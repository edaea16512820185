"""Run Alembic migrations programmatically (`moderation migrate`, `moderation up`), as the schema
owner (`MODERATION_MIGRATE_DATABASE_URL`, else `DATABASE_URL`), and give the services' LOGIN
role its password.

Services log in as `moderation_service` (created by migration 0005), which cannot change the
schema or the audit guards; only the owner migrates.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
import unicodedata

from alembic import command
from alembic.config import Config
from sqlalchemy import create_engine, pool, text

from moderation.settings import Settings

SERVICE_ROLE = "moderation_service"
_SCRAM_ITERATIONS = 4096  # PostgreSQL's own default (scram_iterations)


def alembic_config(settings: Settings) -> Config:
    cfg = Config()
    cfg.set_main_option("script_location", str(settings.migrations_dir))
    cfg.set_main_option("sqlalchemy.url", settings.migrate_db_url.replace("%", "%%"))
    return cfg


def upgrade(settings: Settings, revision: str = "head") -> None:
    """Migrate to `revision`; then, on PostgreSQL with `service_db_password` set, (re)set the
    service role's password (every run: rotating it is setting it and migrating again)."""
    if settings.migrate_db_url.startswith("sqlite"):
        settings.var_dir.mkdir(parents=True, exist_ok=True)
    command.upgrade(alembic_config(settings), revision)
    if settings.service_db_password and settings.migrate_db_url.startswith("postgresql"):
        set_service_password(settings.migrate_db_url, settings.service_db_password)


def set_service_password(url: str, password: str, role: str = SERVICE_ROLE) -> None:
    """Set `role`'s password as a SCRAM-SHA-256 verifier computed here, so the password itself
    never reaches the server (nor its statement log)."""
    engine = create_engine(url, poolclass=pool.NullPool)
    try:
        with engine.begin() as conn:
            exists = conn.execute(text("SELECT 1 FROM pg_roles WHERE rolname = :r"), {"r": role}).first()
            if exists is None:
                raise RuntimeError(f"role {role} does not exist: migrate as a role with CREATEROLE, or create it")
            name = conn.execute(text("SELECT quote_ident(:r)"), {"r": role}).scalar()
            # psycopg2 binds client-side, so a parameter works in this utility statement.
            conn.exec_driver_sql(f"ALTER ROLE {name} PASSWORD %(v)s", {"v": scram_verifier(password)})
    finally:
        engine.dispose()


def scram_verifier(password: str, salt: bytes | None = None, iterations: int = _SCRAM_ITERATIONS) -> str:
    """PostgreSQL's stored form of a SCRAM-SHA-256 password (RFC 5802/7677, as `\\password`
    builds it). The password is NFKC-normalised, the part of SASLprep that matters in practice."""
    salt = salt or secrets.token_bytes(16)
    salted = hashlib.pbkdf2_hmac("sha256", unicodedata.normalize("NFKC", password).encode(), salt, iterations)
    client_key = hmac.new(salted, b"Client Key", hashlib.sha256).digest()
    stored_key = hashlib.sha256(client_key).digest()
    server_key = hmac.new(salted, b"Server Key", hashlib.sha256).digest()

    def b64(b: bytes) -> str:
        return base64.b64encode(b).decode()

    return f"SCRAM-SHA-256${iterations}:{b64(salt)}${b64(stored_key)}:{b64(server_key)}"
