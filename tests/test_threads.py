"""Thread budgets (app/threads.py): automatic sizes per role, the wait policy, and budgets applied per thread."""

from __future__ import annotations

import os
import sys
import threading
import time

import pytest
import torch

from app.threads import ThreadBudget, cpu_count, enter, process_budget, set_wait_policy, training_budget

linux_only = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="per-thread niceness is Linux's")


def _nice_by_thread() -> dict[int, int]:
    """Niceness of every thread of this process, by thread id (/proc/self/task/*/stat, field 19)."""
    found = {}
    for tid in os.listdir("/proc/self/task"):
        try:
            with open(f"/proc/self/task/{tid}/stat") as stat:
                found[int(tid)] = int(stat.read().rsplit(")", 1)[1].split()[16])
        except FileNotFoundError:  # the thread ended meanwhile
            continue
    return found


def test_automatic_budgets_give_the_api_every_core_and_a_worker_half() -> None:
    assert process_budget(0, "api", cores=8) == ThreadBudget(8)
    assert process_budget(0, "worker", cores=8) == ThreadBudget(4)
    assert process_budget(0, "worker", cores=1) == ThreadBudget(1)  # never zero threads
    assert process_budget(3, "worker", cores=8) == ThreadBudget(3)  # a configured size wins
    assert training_budget(0, 10, cores=2) == ThreadBudget(1, 10)
    assert training_budget(2, 0, cores=16) == ThreadBudget(2, 0)


def test_the_wait_policy_goes_into_the_environment_unless_one_is_there(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("OMP_WAIT_POLICY", raising=False)
    assert set_wait_policy("auto", "api") is None and "OMP_WAIT_POLICY" not in os.environ
    assert set_wait_policy("auto", "worker") == "PASSIVE" and os.environ["OMP_WAIT_POLICY"] == "PASSIVE"
    monkeypatch.setenv("OMP_WAIT_POLICY", "ACTIVE")  # the operator's own choice wins
    assert set_wait_policy("passive", "worker") == "ACTIVE" and os.environ["OMP_WAIT_POLICY"] == "ACTIVE"


@linux_only
def test_a_budget_holds_for_its_thread_and_the_openmp_threads_it_starts_not_for_the_others() -> None:
    before, main_threads = _nice_by_thread(), torch.get_num_threads()
    x = torch.randn(4_000_000)  # far above PyTorch's grain size: elementwise ops run on the OpenMP team
    seen: dict[str, object] = {}

    def work() -> None:
        enter(ThreadBudget(2, 7))
        for _ in range(5):
            (x * 2 + 1).sum()
        seen["threads"] = torch.get_num_threads()
        seen["tid"] = threading.get_native_id()
        seen["nice"] = os.getpriority(os.PRIO_PROCESS, threading.get_native_id())
        seen["during"] = _nice_by_thread()  # while this thread lives, so does the team it started

    thread = threading.Thread(target=work)
    thread.start()
    thread.join()
    assert seen["threads"] == 2 and seen["nice"] == 7
    during = seen["during"]
    assert isinstance(during, dict)
    # Threads started by the budgeted thread (its OpenMP team, started after the budget) run at its niceness.
    new = {tid: nice for tid, nice in during.items() if tid not in before and tid != seen["tid"]}
    assert 7 in new.values(), (before, during)
    assert all(during[tid] == nice for tid, nice in before.items() if tid in during)  # no other thread changed
    assert torch.get_num_threads() == main_threads


@linux_only
def test_the_api_process_trains_on_its_own_budget_below_the_engines_priority(client_with) -> None:  # type: ignore[no-untyped-def]
    client_with(training_threads=1, training_nice=6)
    threads = {t.name: t for t in threading.enumerate()}
    worker, engine = threads["promptbank-worker"], threads["promptbank-batcher"]
    assert worker.native_id is not None and engine.native_id is not None
    deadline = time.monotonic() + 10
    while os.getpriority(os.PRIO_PROCESS, worker.native_id) != 6 and time.monotonic() < deadline:
        time.sleep(0.02)  # the worker thread enters its budget as it starts
    assert os.getpriority(os.PRIO_PROCESS, worker.native_id) == 6
    assert os.getpriority(os.PRIO_PROCESS, engine.native_id) == os.getpriority(os.PRIO_PROCESS, 0)


def test_a_standalone_worker_trains_on_half_the_cores_at_the_training_niceness() -> None:
    from app.config import Settings
    from workers.cli import worker_settings

    standalone = worker_settings(Settings(training_nice=7, torch_threads=0), embedded=False)
    assert (standalone.threads, standalone.nice) == (max(1, cpu_count() // 2), 7)
    assert worker_settings(Settings(training_nice=0, torch_threads=3), embedded=False).nice == 0
    embedded = worker_settings(Settings(training_nice=5, training_threads=1), embedded=True)
    assert (embedded.threads, embedded.nice) == (1, 5)
