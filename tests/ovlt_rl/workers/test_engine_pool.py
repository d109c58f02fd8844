"""run_concurrently (one thread per engine, results in task order, the first error raised) and
EnginePool's refusal of engine actors without GPUs on a GPU device."""

from __future__ import annotations

import threading
import time

import pytest

from ovlt_rl.workers.engine_pool import EnginePool, run_concurrently


def test_results_in_task_order_from_every_worker():
    ran: dict[int, str] = {}

    def worker(name):
        def run(task):
            time.sleep(0.01 * (task % 3))  # tasks finish out of order
            ran[task] = name
            return task * task
        return run

    done = []
    assert run_concurrently([worker("a"), worker("b")], list(range(8)), lambda i, r: done.append(i)) == [t * t for t in range(8)]
    assert set(ran.values()) == {"a", "b"} and sorted(done) == list(range(8))


def test_first_error_stops_new_tasks_and_is_raised():
    started = []
    lock = threading.Lock()

    def run(task):
        with lock:
            started.append(task)
        if task == 1:
            raise RuntimeError("engine 1 failed")
        time.sleep(0.05)
        return task

    with pytest.raises(RuntimeError, match="engine 1 failed"):
        run_concurrently([run, run], list(range(20)))
    assert len(started) < 20  # the workers stopped taking tasks


def test_engine_actors_on_cuda_need_gpus():
    from ovlt.config import load_config

    cfg = load_config("prepare", ["recipe=tiny", "rollout.gpus_per_worker=0"])
    with pytest.raises(ValueError, match=r"prepare: 2 engine actors on device=cuda need GPUs: set rollout.gpus_per_worker"):
        EnginePool(cfg, "unused", 2, "cuda", what="prepare")
    with pytest.raises(ValueError, match="the number of engines must be >= 1, got 0"):
        EnginePool(cfg, "unused", 0, "cpu", what="prepare")
