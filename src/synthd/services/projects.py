"""Who is asking, and what they may see: the request's principal and project scoping.

Files, fine-tuning jobs (and so their ``ft:`` models and checkpoints) belong to the project of the
key that created them (their ``project`` column). A project key sees only its own project's objects;
everything else answers as if it did not exist (404, absent from lists). An admin key (``synthd keys
create --admin``, or the server's ``--api-key``) sees every project's objects. Objects created
before any key existed, or by a key without a project (``--api-key``), have no project and are
visible to admin keys only. Adapters imported with ``synthd models import`` belong to the operator
and are served to every key, like base models; only an admin key may delete them.
"""

import asyncio
from dataclasses import dataclass
from typing import Protocol, TypeVar

from synthd.errors import NotFound, PermissionDenied
from synthd.models.ids import FineTuneId
from synthd.models.resolve import ModelNotFound
from synthd.store.repository import Repository


@dataclass(frozen=True)
class Principal:
    """The caller of one request.

    Args:
        key_id: the API key's id (``key-…``); None for the server's ``--api-key`` or with auth off.
        project: the key's project, stamped on what it creates; None for the ``--api-key`` / auth off.
        is_admin: sees and manages every project's objects.
    """

    key_id: str | None
    project: str | None
    is_admin: bool

    def can_see(self, project: str | None) -> bool:
        """Whether an object of ``project`` (None: no project) is visible to this caller."""
        return self.is_admin or (project is not None and project == self.project)

    @property
    def scope(self) -> str | None:
        """The one project a list is restricted to; None for admins (no restriction)."""
        return None if self.is_admin else self.project


OPERATOR = Principal(key_id=None, project=None, is_admin=True)
"""The caller when the server has no keys at all (auth off), and the CLI's."""


class Owned(Protocol):
    """A stored object with an owning project (files, jobs)."""

    project: str | None


O = TypeVar("O", bound=Owned)


def visible_or_raise(record: O | None, principal: Principal, error: NotFound) -> O:
    """``record`` if it exists and ``principal`` may see it; else raise ``error`` (the same for both,
    so another project's ids cannot be probed)."""
    if record is None or not principal.can_see(record.project):
        raise error
    return record


class ModelAccess:
    """Which ``ft:`` models a caller may use: those of jobs its project owns, and imported ones.

    Args:
        repo: the store (jobs and their projects).
    """

    def __init__(self, repo: Repository) -> None:
        self.repo = repo

    def _job_project(self, model: str) -> tuple[bool, str | None]:
        """``(imported, project)`` of an ``ft:`` id (a malformed id is left to the resolver). Blocking."""
        parsed = FineTuneId.parse(model)
        if parsed is None or parsed.job_id is None:
            return True, None
        job = self.repo.get_job(parsed.job_id)
        return False, job.project if job is not None else None

    def visible(self, principal: Principal, model: str) -> bool:
        """Whether ``principal`` may use ``model`` (base models: always). Blocking (a database read)."""
        if principal.is_admin or FineTuneId.parse(model) is None:
            return True
        imported, project = self._job_project(model)
        return imported or principal.can_see(project)

    async def check(self, principal: Principal, model: str) -> None:
        """Raise ``ModelNotFound`` (as for an unknown id) when ``principal`` may not use ``model``."""
        if not principal.is_admin and not await asyncio.to_thread(self.visible, principal, model):
            raise ModelNotFound.hidden(model)

    async def check_deletable(self, principal: Principal, model: str) -> None:
        """``check``, and only an admin key may delete an imported (operator's) adapter.

        Raises:
            ModelNotFound: not visible. PermissionDenied: an imported adapter and a project key.
        """
        await self.check(principal, model)
        parsed = FineTuneId.parse(model)
        if not principal.is_admin and parsed is not None and parsed.job_id is None:
            raise PermissionDenied(
                f"'{model}' was imported by the operator; only an admin key may delete it.",
                param="model",
                code="insufficient_permissions",
            )

    def visible_ids(self, principal: Principal, models: list[str]) -> set[str]:
        """The subset of ``models`` ``principal`` may use, with one read of the jobs' projects. Blocking."""
        if principal.is_admin:
            return set(models)
        projects = self.repo.job_projects()
        visible = set()
        for model in models:
            parsed = FineTuneId.parse(model)
            if parsed is None or parsed.job_id is None or principal.can_see(projects.get(parsed.job_id)):
                visible.add(model)
        return visible
