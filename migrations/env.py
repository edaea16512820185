"""Alembic environment: imports only the metadata; the URL comes from Settings."""

from __future__ import annotations

from alembic import context
from sqlalchemy import engine_from_config, pool

from moderation.db.tables import metadata
from moderation.settings import Settings

config = context.config
if not config.get_main_option("sqlalchemy.url"):
    # The owner's URL (MODERATION_MIGRATE_DATABASE_URL) where set: services log in as a role that cannot migrate.
    config.set_main_option("sqlalchemy.url", Settings().migrate_db_url.replace("%", "%%"))


def run_offline() -> None:
    context.configure(
        url=config.get_main_option("sqlalchemy.url"), target_metadata=metadata, literal_binds=True, render_as_batch=True
    )
    with context.begin_transaction():
        context.run_migrations()


def run_online() -> None:
    connectable = config.attributes.get("connection")
    if connectable is None:
        engine = engine_from_config(
            config.get_section(config.config_ini_section, {}), prefix="sqlalchemy.", poolclass=pool.NullPool
        )
        with engine.connect() as connection:
            _run(connection)
    else:
        _run(connectable)


def _run(connection: object) -> None:
    context.configure(connection=connection, target_metadata=metadata, render_as_batch=True)
    with context.begin_transaction():
        context.run_migrations()


if context.is_offline_mode():
    run_offline()
else:
    run_online()
