"""OpenAI's list pagination for every list endpoint: newest first, ``after`` (the id of the last
object of the previous page) and ``limit``, answered as ``(page, has_more)``.

A page is one keyset query: the cursor row's sort key is read (under the list's own filters, so a
cursor the caller cannot list reads as unknown), then ``WHERE key < cursor ORDER BY key DESC LIMIT
limit + 1``; the extra row, if there is one, says ``has_more``. No list reads more than
``limit + 1`` rows, and a page never repeats or skips a row however many rows share a timestamp,
because every sort key ends in a unique column.
"""

from collections.abc import Sequence
from typing import Any, TypeVar

from sqlalchemy import ColumnElement, Select, and_, or_
from sqlalchemy.orm import InstrumentedAttribute, Session

Row = TypeVar("Row")


def newest_first(
    session: Session,
    query: Select[tuple[Row]],
    keys: Sequence[InstrumentedAttribute],
    after: str | None,
    limit: int,
) -> tuple[list[Row], bool]:
    """One page of ``query``'s rows, largest ``keys`` first, after the row whose ``id`` is ``after``.

    Args:
        session: an open session.
        query: ``select(Table)`` with the list's filters (project, status, parent), no order or limit;
            ``Table`` has an ``id`` column (the cursor clients send).
        keys: the sort key, most significant column first; the last one is unique (``id``, ``seq``).
        after: the cursor, or None (or empty) for the first page.
        limit: the page size, at least 1.

    Returns:
        The page (at most ``limit`` rows) and whether more rows follow it; ``([], False)`` when
        ``after`` is not a row of this list.
    """
    if after:
        table = query.column_descriptions[0]["entity"]
        cursor = session.execute(query.with_only_columns(*keys).where(table.id == after)).first()
        if cursor is None:
            return [], False
        query = query.where(_before(keys, tuple(cursor)))
    rows = list(session.scalars(query.order_by(*(key.desc() for key in keys)).limit(limit + 1)))
    return rows[:limit], len(rows) > limit


def _before(keys: Sequence[InstrumentedAttribute], values: tuple[Any, ...]) -> ColumnElement[bool]:
    """``keys < values`` in lexicographic order, spelled out as ``k1 < v1 OR (k1 = v1 AND k2 < v2)…``
    (the row-value form ``(k1, k2) < (v1, v2)`` is missing on some backends, e.g. SQL Server)."""
    return or_(
        *(
            and_(*(key == value for key, value in zip(keys[:i], values[:i], strict=True)), keys[i] < values[i])
            for i in range(len(keys))
        )
    )
