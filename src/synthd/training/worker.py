"""Worker process entry point: ``python -m synthd.training.worker JOB_ID``.

Reads settings from the environment (``SYNTHD_HOME``, ``SYNTHD_DATABASE_URL``). Any exception fails
the job with its message; the exit code is 0 for succeeded/cancelled, 1 for failed.
"""

import logging
import sys

from synthd.config import get_settings
from synthd.store.db import open_database
from synthd.store.repository import Repository, now
from synthd.training.runner import run_job


def main(job_id: str) -> int:
    """Run the job; return the process exit code."""
    logging.basicConfig(level=logging.WARNING)
    settings = get_settings()
    repo = Repository(open_database(settings.home, settings.database_url), settings.home / "files")
    try:
        run_job(repo, job_id, settings.models_dir, settings.home / "adapters", settings.home / "training")
    except Exception as exc:  # recorded on the job; the server stays up
        logging.exception("job %s failed", job_id)
        repo.update_job(job_id, f"Fine-tuning job failed: {exc}", status="failed", finished_at=now(),
                        error={"code": "training_error", "message": f"{type(exc).__name__}: {exc}", "param": None})
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
