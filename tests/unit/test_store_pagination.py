"""Every list of the store pages the same way (``synthd.store.pagination``): newest first, ``after``
a cursor id, ``limit`` rows and ``has_more``, with no duplicate or gap across pages, rows that share
a timestamp included."""

from collections.abc import Callable
from pathlib import Path

import pytest
from sqlalchemy import event, update

from synthd.store.batches import BatchRecord, BatchStore
from synthd.store.db import open_database
from synthd.store.models import FileRecord, JobRecord
from synthd.store.repository import Repository, new_id

Fetch = Callable[[str | None, int], tuple[list, bool]]
LIMITS = (1, 3, 6, 7, 8)
"""Page sizes for 7 rows: one per page, a short last page, one full page and a last page of one,
exactly one page, more than all rows."""


def walk(fetch: Fetch, limit: int) -> list[str]:
    """Every id, page after page; checks each page's size and ``has_more`` on the way."""
    ids: list[str] = []
    after = None
    while True:
        rows, more = fetch(after, limit)
        assert len(rows) <= limit
        ids += [row.id for row in rows]
        if not more:
            return ids
        assert len(rows) == limit, "a page that says has_more is full"
        after = rows[-1].id


@pytest.fixture
def repo(tmp_path: Path) -> Repository:
    return Repository(open_database(tmp_path), tmp_path / "files")


def add_files(repo: Repository, created: list[int], project: str | None = None) -> list[str]:
    """Files created at ``created`` (Unix seconds), newest first by (created_at, id)."""
    records = [repo.add_file("f.jsonl", "fine-tune", b"{}\n", project) for _ in created]
    with repo.sessions.begin() as session:
        for record, at in zip(records, created, strict=True):
            session.execute(update(FileRecord).where(FileRecord.id == record.id).values(created_at=at))
    return [file_id for _, file_id in sorted(zip(created, (r.id for r in records), strict=True), reverse=True)]


def add_jobs(repo: Repository, created: list[int], project: str | None = None) -> list[str]:
    """Jobs created at ``created`` (Unix seconds), newest first by (created_at, id)."""
    jobs = [
        repo.add_job(
            JobRecord(
                id=new_id("ftjob"),
                model="m",
                status="queued",
                method={"type": "supervised"},
                training_file="file-x",
                seed=0,
                created_at=at,
                project=project,
            )
        )
        for at in created
    ]
    return [j.id for j in sorted(jobs, key=lambda j: (j.created_at, j.created_ns, j.id), reverse=True)]


CREATED = [100, 300, 100, 200, 300, 100, 200]
"""Seven creation times, three rows sharing a second: the page boundaries fall inside ties."""


@pytest.mark.parametrize("limit", LIMITS)
def test_files_page_newest_first(repo: Repository, limit: int) -> None:
    newest_first = add_files(repo, CREATED, project="alpha")
    add_files(repo, [150, 250], project="beta")
    assert walk(lambda after, n: repo.list_files(after, n, project="alpha"), limit) == newest_first


def test_files_page_by_purpose(repo: Repository) -> None:
    fine_tune = add_files(repo, CREATED)
    repo.add_file("b.jsonl", "batch", b"{}\n")
    assert walk(lambda after, n: repo.list_files(after, n, purpose="fine-tune"), 2) == fine_tune


@pytest.mark.parametrize("limit", LIMITS)
def test_jobs_page_newest_first(repo: Repository, limit: int) -> None:
    newest_first = add_jobs(repo, CREATED, project="alpha")
    beta = add_jobs(repo, [150, 250], project="beta")
    assert walk(lambda after, n: repo.list_jobs(after, n, project="alpha"), limit) == newest_first
    assert walk(lambda after, n: repo.list_jobs(after, n), limit) == sorted(
        newest_first + beta, key=lambda i: (repo.get_job(i).created_at, repo.get_job(i).created_ns, i), reverse=True
    )


def test_jobs_created_in_one_second_list_newest_first(repo: Repository) -> None:
    """Ids are random: within one second the order is the order of creation, as OpenAI lists."""
    created = add_jobs(repo, [500] * 6)
    in_creation_order = sorted(created, key=lambda i: repo.get_job(i).created_ns)
    assert walk(lambda after, n: repo.list_jobs(after, n), 4) == in_creation_order[::-1]


def test_jobs_page_reads_at_most_limit_plus_one_rows(repo: Repository) -> None:
    """The job list is one ``LIMIT limit + 1`` query, not every row sliced in Python."""
    add_jobs(repo, CREATED)
    statements: list[str] = []
    engine = repo.sessions.kw["bind"]

    def listener(_connection, _cursor, statement, *_args) -> None:
        statements.append(statement)

    event.listen(engine, "before_cursor_execute", listener)
    try:
        first, _ = repo.list_jobs(None, 2)
        repo.list_jobs(first[-1].id, 2)
    finally:
        event.remove(engine, "before_cursor_execute", listener)
    pages = [s for s in statements if "ORDER BY" in s]
    assert len(pages) == 2 and all("LIMIT" in s for s in pages)


def test_a_cursor_outside_the_list_is_unknown(repo: Repository) -> None:
    """``after`` naming another project's row, or no row, gives an empty last page."""
    add_jobs(repo, CREATED, project="alpha")
    (theirs,) = add_jobs(repo, [200], project="beta")
    (their_file,) = add_files(repo, [200], project="beta")
    add_files(repo, CREATED, project="alpha")
    assert repo.list_jobs(theirs, 10, project="alpha") == ([], False)
    assert repo.list_jobs("ftjob-nope", 10) == ([], False)
    assert repo.list_files(their_file, 10, project="alpha") == ([], False)


@pytest.mark.parametrize("limit", LIMITS)
def test_events_page_newest_first(repo: Repository, limit: int) -> None:
    (job,) = add_jobs(repo, [100])
    repo.add_events(job, [(f"step {i}", None) for i in range(6)])
    ids = walk(lambda after, n: repo.list_events(job, after, n), limit)
    messages = [next(e for e in repo.list_events(job, None, 100)[0] if e.id == i).message for i in ids]
    assert messages == [f"step {i}" for i in reversed(range(6))] + [f"Created fine-tuning job: {job}"]


@pytest.mark.parametrize("limit", LIMITS)
def test_checkpoints_page_highest_step_first(repo: Repository, limit: int) -> None:
    (job,) = add_jobs(repo, [100])
    for step in (3, 1, 7, 2, 5, 4, 6):
        repo.add_checkpoint(job, step, {"train_loss": 1.0}, f"/ckpt/{step}", f"/adapter/{step}")
    by_id = {c.id: c.step_number for c in repo.checkpoints(job)}
    steps = [by_id[i] for i in walk(lambda after, n: repo.list_checkpoints(job, after, n), limit)]
    assert steps == list(range(7, 0, -1))


@pytest.mark.parametrize("limit", LIMITS)
def test_batches_page_newest_first(tmp_path: Path, limit: int) -> None:
    store = BatchStore(open_database(tmp_path))
    created_ns = [5, 9, 5, 7, 9, 5, 7]
    batches = [
        store.add(
            BatchRecord(
                id=f"batch_{i:024x}",
                endpoint="/v1/chat/completions",
                input_file_id="file-x",
                completion_window="24h",
                status="validating",
                created_at=0,
                created_ns=ns,
                expires_at=0,
                project="alpha",
            )
        )
        for i, ns in enumerate(created_ns)
    ]
    newest_first = [b.id for b in sorted(batches, key=lambda b: (b.created_ns, b.id), reverse=True)]
    assert walk(lambda after, n: store.page(after, n, "alpha"), limit) == newest_first
    assert store.page(None, 10, "beta") == ([], False)
