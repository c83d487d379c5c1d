"""API keys and projects: create, list, revoke (the ``synthd keys`` commands) and identify a request.

Authentication is on once the server has an admin key (``--api-key``) or any key was ever created
(revoking every key does not turn it off); from then on every route but ``/health`` needs
``Authorization: Bearer <key>``. Keys created while the server runs are seen by its next request.
"""

import hashlib
import hmac
import re
import secrets
from dataclasses import dataclass

from synthd.errors import InvalidRequest, NotFound, Unauthenticated
from synthd.services.projects import OPERATOR, Principal
from synthd.store.keys import ApiKey, KeyStore
from synthd.store.repository import new_id, now

KEY_PREFIX = "sk-synthd-"
SECRET_BYTES = 32
PROJECT_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")


@dataclass(frozen=True)
class Caller:
    """An identified request: its ``principal`` and its key's limits per minute (None: unlimited)."""

    principal: Principal
    rpm: int | None = None
    tpm: int | None = None


@dataclass(frozen=True)
class KeyInfo:
    """A key as listed: never its secret, only the secret's last four characters (``hint``)."""

    id: str
    project: str
    is_admin: bool
    hint: str
    rpm: int | None
    tpm: int | None
    created_at: int
    revoked_at: int | None


def _digest(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def _info(key: ApiKey) -> KeyInfo:
    return KeyInfo(key.id, key.project, key.is_admin, key.hint, key.rpm, key.tpm, key.created_at, key.revoked_at)


def bearer_token(authorization: str | None) -> str | None:
    """The token of an ``Authorization: Bearer <token>`` header value, or None."""
    scheme, _, token = (authorization or "").partition(" ")
    return (token.strip() or None) if scheme.lower() == "bearer" else None


class KeyService:
    """Keys of one server.

    Args:
        store: the key table. admin_key: the server's ``--api-key`` (an admin key outside the
            table, without a project), or None.
    """

    def __init__(self, store: KeyStore, admin_key: str | None = None) -> None:
        if admin_key is not None and not admin_key:
            raise InvalidRequest("The API key is empty; give a non-empty key or none.", param="api_key")
        self.store = store
        self._admin_digest = _digest(admin_key) if admin_key else None
        self._keys_exist = False

    def create(
        self, project: str, *, admin: bool = False, rpm: int | None = None, tpm: int | None = None
    ) -> tuple[KeyInfo, str]:
        """A new key of ``project``: its listing and its secret (shown once, never stored).

        Raises:
            InvalidRequest: a malformed project name, or a limit below 1.
        """
        if not PROJECT_PATTERN.fullmatch(project):
            raise InvalidRequest(
                f"Invalid project name '{project}': 1-64 letters, digits, '.', '_' or '-', "
                "starting with a letter or digit.",
                param="project",
            )
        for name, limit in (("rpm", rpm), ("tpm", tpm)):
            if limit is not None and limit < 1:
                raise InvalidRequest(f"--{name} must be at least 1.", param=name)
        secret = KEY_PREFIX + secrets.token_urlsafe(SECRET_BYTES)
        key = self.store.add(
            ApiKey(
                id=new_id("key"),
                project=project,
                is_admin=admin,
                secret_sha256=_digest(secret),
                hint=secret[-4:],
                rpm=rpm,
                tpm=tpm,
                created_at=now(),
            )
        )
        return _info(key), secret

    def list(self) -> list[KeyInfo]:
        """Every key, oldest first, revoked ones included."""
        return [_info(key) for key in self.store.list()]

    def revoke(self, key_id: str) -> KeyInfo:
        """Revoke a key: its next request is refused.

        Raises:
            NotFound: no key with this id.
        """
        key = self.store.revoke(key_id, now())
        if key is None:
            raise NotFound(f"No API key with id '{key_id}' (see 'synthd keys list').", param="key_id")
        return _info(key)

    def auth_enabled(self) -> bool:
        """Whether requests need a key: an admin key is set or a key was ever created. Blocking
        until the first key is seen (a database read), then remembered."""
        if self._admin_digest is not None or self._keys_exist:
            return True
        self._keys_exist = self.store.count() > 0
        return self._keys_exist

    def identify(self, authorization: str | None) -> Caller:
        """The caller of a request from its ``Authorization`` header value. Blocking (a database read).

        Raises:
            Unauthenticated: auth is on and the header holds no key, an unknown or a revoked one.
        """
        if not self.auth_enabled():
            return Caller(OPERATOR)
        token = bearer_token(authorization)
        if token is None:
            raise Unauthenticated(
                "You didn't provide an API key. Send it as 'Authorization: Bearer <key>'.", code="invalid_api_key"
            )
        digest = _digest(token)
        if self._admin_digest is not None and hmac.compare_digest(digest, self._admin_digest):
            return Caller(OPERATOR)
        key = self.store.by_digest(digest)
        if key is None or not hmac.compare_digest(key.secret_sha256, digest) or key.revoked_at is not None:
            raise Unauthenticated("Incorrect API key provided.", code="invalid_api_key")
        return Caller(Principal(key.id, key.project, key.is_admin), key.rpm, key.tpm)
