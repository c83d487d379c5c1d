"""API keys in the database: only a SHA-256 digest of each secret is stored, never the secret.

A key's secret is 32 random bytes (``secrets.token_urlsafe``), so a plain SHA-256 digest is enough
to make a stolen table useless (the reasoning GitHub and Stripe tokens follow: a slow password hash
protects low-entropy secrets, not random ones) and lets a request's key be found by an indexed
lookup of its digest.
"""

from sqlalchemy import Boolean, Integer, String, func, select
from sqlalchemy.orm import Mapped, Session, mapped_column, sessionmaker

from synthd.store.base import Base


class ApiKey(Base):
    """An API key (``key-…``) of a project.

    ``secret_sha256`` is the hex digest of the secret; ``hint`` its last four characters (what
    ``synthd keys list`` shows); ``rpm`` / ``tpm`` the per-key request and token limits per minute
    (None: unlimited); ``revoked_at`` (Unix seconds) ends its use.
    """

    __tablename__ = "api_keys"

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    project: Mapped[str] = mapped_column(String(64), index=True)
    is_admin: Mapped[bool] = mapped_column(Boolean, default=False)
    secret_sha256: Mapped[str] = mapped_column(String(64), unique=True)
    hint: Mapped[str] = mapped_column(String(16))
    rpm: Mapped[int | None] = mapped_column(Integer, nullable=True)
    tpm: Mapped[int | None] = mapped_column(Integer, nullable=True)
    created_at: Mapped[int] = mapped_column(Integer)
    revoked_at: Mapped[int | None] = mapped_column(Integer, nullable=True)


class KeyStore:
    """Reads and writes ``api_keys``; each method is one short transaction.

    Args:
        sessions: the database's session factory (``synthd.store.db.open_database``).
    """

    def __init__(self, sessions: sessionmaker[Session]) -> None:
        self.sessions = sessions

    def add(self, key: ApiKey) -> ApiKey:
        """Insert a key."""
        with self.sessions.begin() as session:
            session.add(key)
        return key

    def by_digest(self, secret_sha256: str) -> ApiKey | None:
        """The key with this secret digest (revoked or not), or None."""
        with self.sessions.begin() as session:
            return session.scalar(select(ApiKey).where(ApiKey.secret_sha256 == secret_sha256))

    def get(self, key_id: str) -> ApiKey | None:
        """A key by id, or None."""
        with self.sessions.begin() as session:
            return session.get(ApiKey, key_id)

    def list(self) -> list[ApiKey]:
        """Every key, oldest first."""
        with self.sessions.begin() as session:
            return list(session.scalars(select(ApiKey).order_by(ApiKey.created_at, ApiKey.id)))

    def count(self) -> int:
        """How many keys were ever created (revoked ones included)."""
        with self.sessions.begin() as session:
            return session.scalar(select(func.count()).select_from(ApiKey)) or 0

    def revoke(self, key_id: str, at: int) -> ApiKey | None:
        """Set ``revoked_at`` (kept if already revoked); the key, or None if unknown."""
        with self.sessions.begin() as session:
            key = session.get(ApiKey, key_id)
            if key is not None and key.revoked_at is None:
                key.revoked_at = at
            return key
