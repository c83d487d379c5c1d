"""``python -m synthd.cli``: the ``synthd`` command."""

from synthd.cli import main

main()
