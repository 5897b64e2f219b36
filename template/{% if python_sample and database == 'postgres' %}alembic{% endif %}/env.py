"""How alembic reaches the database: DATABASE_URL from the environment, one transaction for
all pending migrations, and an advisory lock so two deploys never migrate at once."""

from __future__ import annotations

import os
from logging.config import fileConfig

from alembic import context
from sqlalchemy import create_engine, pool, text

if context.config.config_file_name is not None:
    fileConfig(context.config.config_file_name)


def database_url() -> str:
    """DATABASE_URL with psycopg (version 3) as SQLAlchemy's driver."""
    url = os.environ["DATABASE_URL"]
    scheme, _, rest = url.partition("://")
    return f"postgresql+psycopg://{rest}" if scheme in ("postgres", "postgresql") else url


def run_migrations_online() -> None:
    # UTF-8 text whatever the database's encoding, as the app connects (app/main.py).
    engine = create_engine(
        database_url(), poolclass=pool.NullPool, connect_args={"client_encoding": "utf8"}
    )
    with engine.connect() as connection:
        context.configure(connection=connection, transactional_ddl=True)
        with context.begin_transaction():
            # Held until the transaction ends: a second deploy waits, then finds nothing to do.
            connection.execute(text("SELECT pg_advisory_xact_lock(hashtext('alembic_version'))"))
            context.run_migrations()


if context.is_offline_mode():
    raise SystemExit("Run migrations against the database: alembic upgrade head (no --sql).")
run_migrations_online()
