"""The whole schema: importing this module imports every table module, so ``metadata`` holds every
table. Alembic's ``env.py`` and the schema test compare the migrations against it; a new table
module is added to the import below (the schema test fails otherwise).
"""

from synthd.store import batches, keys, models  # noqa: F401  (each import registers its tables)
from synthd.store.base import Base

metadata = Base.metadata
