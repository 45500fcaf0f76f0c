"""`python -m workers`: a standalone training worker (scale out: many workers, one database)."""

from app.config import Settings
from app.threads import set_wait_policy

set_wait_policy(Settings().omp_wait_policy, "worker")  # OpenMP reads it once, when PyTorch loads: before that

from workers.cli import main  # noqa: E402

main()
