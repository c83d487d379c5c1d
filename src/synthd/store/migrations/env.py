"""Alembic environment: runs migrations against the URL set by ``synthd.store.db``; its target is the
whole schema (``synthd.store.schema``: every table module), so autogenerate sees every table."""

from alembic import context
from sqlalchemy import engine_from_config, pool

from synthd.store.schema import metadata

config = context.config
target_metadata = metadata

connectable = engine_from_config(
    config.get_section(config.config_ini_section, {}), prefix="sqlalchemy.", poolclass=pool.NullPool
)
with connectable.connect() as connection:
    context.configure(
        connection=connection, target_metadata=target_metadata, render_as_batch=True, compare_server_default=True
    )
    with context.begin_transaction():
        context.run_migrations()
