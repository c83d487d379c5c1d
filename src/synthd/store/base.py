"""The declarative base of every synthd table, so the whole schema is one ``MetaData``.

Each table module (``models``, ``keys``, ``batches``) defines its classes on ``Base``; a table is in
``Base.metadata`` once its module is imported, which ``synthd.store.schema`` does for all of them.
"""

from sqlalchemy.orm import DeclarativeBase


class Base(DeclarativeBase):
    """Declarative base of every synthd table."""
