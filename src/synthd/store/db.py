"""Database engine and sessions: SQLite in ``$SYNTHD_HOME`` (WAL) by default, or any SQLAlchemy URL
through ``SYNTHD_DATABASE_URL``. The schema is created and upgraded by Alembic migrations."""

from pathlib import Path

from alembic import command
from alembic.config import Config
from sqlalchemy import Engine, create_engine, event
from sqlalchemy.orm import Session, sessionmaker

MIGRATIONS = Path(__file__).parent / "migrations"


def database_url(home: Path, override: str | None) -> str:
    """``override`` if given, else ``sqlite:///$SYNTHD_HOME/synthd.db``."""
    return override or f"sqlite:///{home / 'synthd.db'}"


def make_engine(url: str) -> Engine:
    """An engine; SQLite gets WAL, a busy timeout and foreign keys (several processes write)."""
    if url.startswith("sqlite"):
        engine = create_engine(url, connect_args={"timeout": 30, "check_same_thread": False})

        @event.listens_for(engine, "connect")
        def _sqlite_pragmas(connection, _record) -> None:
            cursor = connection.cursor()
            cursor.execute("PRAGMA journal_mode=WAL")
            cursor.execute("PRAGMA foreign_keys=ON")
            cursor.execute("PRAGMA busy_timeout=30000")
            cursor.close()

        return engine
    return create_engine(url, pool_pre_ping=True)


def upgrade_schema(url: str) -> None:
    """Apply every Alembic migration up to ``head``."""
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    config.set_main_option("sqlalchemy.url", url)
    command.upgrade(config, "head")


def open_database(home: Path, override: str | None = None) -> sessionmaker[Session]:
    """Create ``home``, migrate the schema and return a session factory."""
    home.mkdir(parents=True, exist_ok=True)
    url = database_url(home, override)
    upgrade_schema(url)
    return sessionmaker(make_engine(url), expire_on_commit=False)
