"""Thread budgets: how many PyTorch threads each compute thread of a process runs, at what priority, and how
OpenMP threads wait between operations (README "Processes and threads on one host").

PyTorch's CPU operations run on an OpenMP team per calling thread, sized by torch.set_num_threads in that thread,
and the team's threads spin for a while after each operation (OMP_WAIT_POLICY=ACTIVE, the default) or sleep at
once (PASSIVE). Processes, or threads of one process, that each run as many threads as there are cores take the
CPU from one another. So each compute thread enters its budget when it starts (`enter`): the engine thread and a
standalone worker take the process budget; a worker thread inside the API process takes the training budget, at
a lower priority (Linux niceness is per thread, and the OpenMP threads it starts inherit it), so inference runs
first and training uses what inference leaves.
"""

from __future__ import annotations

import logging
import os
import threading
from dataclasses import dataclass
from typing import Literal

log = logging.getLogger(__name__)

Role = Literal["api", "worker"]
WaitPolicy = Literal["auto", "active", "passive"]


def cpu_count() -> int:
    """The cores this process may run on (its affinity mask, as a container's cpuset sets it)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not on Linux
        return max(1, os.cpu_count() or 1)


@dataclass(frozen=True)
class ThreadBudget:
    """One compute thread's share: its PyTorch (OpenMP) threads and its niceness (0: as the process)."""

    threads: int
    nice: int = 0


def process_budget(threads: int, role: Role, cores: int | None = None) -> ThreadBudget:
    """The engine thread's (role "api") or a standalone worker's (role "worker") budget; threads 0 picks one.

    Automatic: the API takes every core (serving is latency-bound and spins least on its own cores); a standalone
    worker takes half of them (at least 1), so that two workers, or a worker beside the API, fit the cores between
    them instead of each claiming all of them.
    """
    cores = cores or cpu_count()
    if threads > 0:
        return ThreadBudget(threads)
    return ThreadBudget(cores if role == "api" else max(1, cores // 2))


def training_budget(threads: int, nice: int, cores: int | None = None) -> ThreadBudget:
    """The budget of the training worker thread inside the API process (threads 0: half the cores, at least 1)."""
    cores = cores or cpu_count()
    return ThreadBudget(threads if threads > 0 else max(1, cores // 2), nice)


def wait_policy_for(policy: WaitPolicy, role: Role) -> str | None:
    """The OMP_WAIT_POLICY value a process of this role should start with, or None to leave OpenMP's default.

    Automatic: PASSIVE for a standalone worker (its threads would spin on cores that the API or other workers need
    between its operations), OpenMP's default for the API (spinning saves it latency on a core of its own).
    """
    if policy == "auto":
        return "PASSIVE" if role == "worker" else None
    return policy.upper()


def set_wait_policy(policy: WaitPolicy, role: Role) -> str | None:
    """Put OMP_WAIT_POLICY in the environment before PyTorch loads (OpenMP reads it once, when it starts); a value
    the environment already holds wins. The policy in effect, or None for OpenMP's default."""
    chosen = wait_policy_for(policy, role)
    if "OMP_WAIT_POLICY" in os.environ:
        return os.environ["OMP_WAIT_POLICY"]
    if chosen is not None:
        import sys

        if "torch" in sys.modules:
            log.warning("OMP_WAIT_POLICY=%s set after PyTorch loaded: it takes effect in the next process", chosen)
        os.environ["OMP_WAIT_POLICY"] = chosen
    return chosen


def enter(budget: ThreadBudget) -> None:
    """Apply a budget to the calling thread: its OpenMP team's size and (Linux) its niceness."""
    import torch

    torch.set_num_threads(budget.threads)
    if budget.nice > 0 and hasattr(os, "setpriority"):
        try:  # on Linux a thread id is a process id for setpriority: this renices the calling thread alone
            tid = threading.get_native_id()
            os.setpriority(os.PRIO_PROCESS, tid, max(os.getpriority(os.PRIO_PROCESS, tid), budget.nice))
        except OSError as error:  # a sandbox may forbid it: the budget's thread count still holds
            log.warning("could not lower the training thread's priority: %s", error)
