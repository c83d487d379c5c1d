"""The Alembic migrations and the ORM tables describe the same schema, and the schema module that
Alembic's ``env.py`` targets holds every table."""

import subprocess
import sys
from pathlib import Path

from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext

from synthd.store.db import make_engine, upgrade_schema
from synthd.store.schema import metadata


def test_migrations_build_exactly_the_orm_schema(tmp_path: Path) -> None:
    """Autogenerate finds nothing to write after ``upgrade head`` on a fresh database: no table,
    column, index, type or server default differs."""
    url = f"sqlite:///{tmp_path / 'synthd.db'}"
    upgrade_schema(url)
    with make_engine(url).connect() as connection:
        context = MigrationContext.configure(connection, opts={"compare_type": True, "compare_server_default": True})
        assert compare_metadata(context, metadata) == []
    assert set(metadata.tables) == {
        "files",
        "fine_tuning_jobs",
        "fine_tuning_events",
        "fine_tuning_checkpoints",
        "models",
        "api_keys",
        "batches",
        "batch_results",
    }


WALK_STORE = """
import importlib, pkgutil
import synthd.store
from synthd.store.schema import metadata
seen = set(metadata.tables)
for module in pkgutil.walk_packages(synthd.store.__path__, "synthd.store."):
    if ".migrations" not in module.name:
        importlib.import_module(module.name)
print(sorted(set(metadata.tables) - seen))
"""


def test_schema_module_imports_every_table_module() -> None:
    """Importing every module of ``synthd.store`` adds no table that ``synthd.store.schema`` lacks
    (in a fresh interpreter: this one may have imported them all already)."""
    result = subprocess.run([sys.executable, "-c", WALK_STORE], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "[]"
