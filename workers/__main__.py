"""`python -m workers`: a standalone training worker (scale out: many workers, one database)."""

from workers.cli import main

main()
