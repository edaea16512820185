"""Alembic migrations build exactly the schema of moderation/db/tables.py, and go back down."""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import Any

import pytest
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import create_engine, inspect

from moderation.db.migrate import alembic_config
from moderation.db.tables import metadata
from moderation.settings import Settings
from tests.support.services import scratch_database

pytestmark = pytest.mark.services


@pytest.fixture
def empty_db() -> Iterator[str]:
    with scratch_database(f"moderation_migrations_{os.getpid()}") as url:
        yield url


def diff(url: str) -> list[Any]:
    engine = create_engine(url)
    try:
        with engine.connect() as conn:
            return list(compare_metadata(MigrationContext.configure(conn), metadata))
    finally:
        engine.dispose()


def tables(url: str) -> set[str]:
    engine = create_engine(url)
    try:
        return set(inspect(engine).get_table_names())
    finally:
        engine.dispose()


def test_migrations_match_the_models_and_downgrade(empty_db: str) -> None:
    settings = Settings(database_url=empty_db)
    url, cfg = settings.db_url, alembic_config(settings)
    command.upgrade(cfg, "head")
    assert diff(url) == []
    assert "callback_deliveries" in tables(url)
    command.downgrade(cfg, "base")
    assert tables(url) <= {"alembic_version"}
    command.upgrade(cfg, "head")
    assert diff(url) == []
