"""Who runs the job queue of a ``$SYNTHD_HOME``, and whose running jobs are orphans.

One scheduler per home runs the queue: the one holding the home's lock file (``scheduler.lock``;
another server on the same home serves the API and waits for the lock). Each running job also
carries a lease in the database (``lease_owner`` = ``host:pid:nonce``, renewed every
``HEARTBEAT_S``); a running job is an orphan only when its owner is dead (its pid gone on this host,
or no heartbeat for ``LEASE_TTL_S``).
"""

import logging
import os
import socket
import time
import uuid
from pathlib import Path

from filelock import FileLock, Timeout

from synthd.store.models import JobRecord, JobStatus
from synthd.store.repository import Repository

log = logging.getLogger(__name__)
HEARTBEAT_S = 5.0
LEASE_TTL_S = 30.0


class QueueLeader:
    """The home lock and the job leases of one scheduler (see the module docstring).

    Args:
        repo: the database. home: ``$SYNTHD_HOME`` (where ``scheduler.lock`` lives).
    """

    def __init__(self, repo: Repository, home: Path) -> None:
        self.repo = repo
        self.home = home
        self.host = socket.gethostname()
        self.owner = f"{self.host}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self.leading = False
        self._home_lock = FileLock(home / "scheduler.lock", thread_local=False)
        self._heartbeat_at = 0.0

    def lead(self) -> bool:
        """Take the home's lock if free; returns whether this scheduler runs the queue. Blocking
        never: a held lock answers False at once."""
        if not self.leading:
            try:
                self._home_lock.acquire(timeout=0)
            except Timeout:
                return False
            self.leading = True
            log.info("scheduler %s runs the job queue of %s", self.owner, self.home)
        return True

    def renew_leases(self) -> bool:
        """Renew this owner's leases when ``HEARTBEAT_S`` has passed; returns whether it did."""
        if time.monotonic() - self._heartbeat_at < HEARTBEAT_S:
            return False
        self.repo.heartbeat(self.owner)
        self._heartbeat_at = time.monotonic()
        return True

    def orphans(self) -> list[JobRecord]:
        """Running jobs of other owners that are dead."""
        return [
            job
            for job in self.repo.jobs_with_status(JobStatus.RUNNING)
            if job.lease_owner != self.owner and self._owner_dead(job)
        ]

    def _owner_dead(self, job: JobRecord) -> bool:
        if job.lease_owner is None or job.lease_heartbeat_at is None:
            return True
        if time.time() - job.lease_heartbeat_at > LEASE_TTL_S:
            return True
        host, _, rest = job.lease_owner.partition(":")
        pid = rest.partition(":")[0]
        if host != self.host or not pid.isdigit():
            return False
        try:
            os.kill(int(pid), 0)
        except ProcessLookupError:
            return True
        except PermissionError:
            return False
        return False

    def resign(self) -> None:
        """Give the queue up (the lock is released; running jobs keep their leases)."""
        if self.leading:
            self._home_lock.release()
            self.leading = False
