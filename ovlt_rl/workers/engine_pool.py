"""Several copies of one model's rollout engine for independent work: data preparation
(captioner, reasoner, self-improvement sampling, pass rates) and `ovlt eval`.

    with EnginePool(cfg, model_path, n=prepare.num_engines, device=prepare.device) as pool:
        results = run_concurrently([make_work(e) for e in pool.engines], tasks)

n = 1 is the engine in this process, as before there were several. n > 1 starts n RolloutWorker
actors (ovlt_rl/workers/rollout.py) of rollout.gpus_per_worker GPUs each, placed by
placement.place (one node when one holds them all, else spread), on the Ray of group.init_ray
(local runs on 127.0.0.1). Each actor is reached through a RemoteEngine, which has the engine's
`generate`, so callers cannot tell the two apart. Prompt items are built by the caller and sent
to the actor; generation, the slow part, runs in the actors side by side.
"""

from __future__ import annotations

import logging
import threading
from typing import TYPE_CHECKING, Any, Callable, Sequence, TypeVar

if TYPE_CHECKING:  # the engines import torch; data preparation's programmatic steps need none
    from ovlt_rl.engines.base import Generation, SamplingParams

log = logging.getLogger(__name__)

T = TypeVar("T")
R = TypeVar("R")


def resolve_device(name: str):
    """The torch device of a device setting: "auto" (CUDA when there is one), "cpu" or "cuda"."""
    import torch

    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


class RemoteEngine:
    """One RolloutWorker actor behind the engine's generate (a blocking call, made from one thread)."""

    def __init__(self, worker: Any):
        self.worker = worker

    def generate(self, prompts: list[dict[str, Any]], params: SamplingParams) -> list[list[Generation]]:
        import ray

        return ray.get(self.worker.generate.remote(prompts, params))


class EnginePool:
    """`n` engines for `model_path`; a context manager whose exit stops the actors and frees their GPUs."""

    def __init__(self, cfg: Any, model_path: str, n: int, device: str, what: str = "engines"):
        if n < 1:
            raise ValueError(f"{what}: the number of engines must be >= 1, got {n}")
        self._pg = None
        self._workers: list[Any] = []
        if n == 1:
            from ovlt_rl.engines import make_engine

            self.engines: list[Any] = [make_engine(cfg, model_path, resolve_device(device))]
            return
        from ovlt_rl.workers.group import init_ray, start_rollout_workers

        gpus = 0.0 if device == "cpu" else cfg.rollout.gpus_per_worker
        if not gpus and resolve_device(device).type == "cuda":
            # actors without GPUs would all load onto whatever GPU they see, or silently run on CPU
            raise ValueError(f"{what}: {n} engine actors on device={device} need GPUs: set rollout.gpus_per_worker "
                             "(GPUs per engine, e.g. 1, or the tensor-parallel size), or device=cpu")
        if not gpus and device != "cpu":
            log.warning("%s: rollout.gpus_per_worker=0: the %d engine actors run on CPU", what, n)
        init_ray(cfg, n)
        self._pg, self._workers, built = start_rollout_workers(cfg, model_path, n, gpus, f"ovlt-{what}", device)
        log.info("%s: %d %s engine actors of %s GPU(s) each for %s", what, n, built, gpus, model_path)
        self.engines = [RemoteEngine(w) for w in self._workers]

    def close(self) -> None:
        import ray
        from ray.util.placement_group import remove_placement_group

        for w in self._workers:
            ray.kill(w)
        if self._pg is not None:
            remove_placement_group(self._pg)
        self._workers, self._pg, self.engines = [], None, []

    def __enter__(self) -> "EnginePool":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


def run_concurrently(workers: Sequence[Callable[[T], R]], tasks: Sequence[T],
                     on_done: Callable[[int, R], None] | None = None) -> list[R]:
    """Run every task on one of `workers` and return the results in task order.

    One thread per worker (a worker is typically bound to one engine), each taking the next task
    when it is free, so a slow task holds up one engine only. `on_done(task_index, result)` is
    called as each task finishes, under a lock (never two at once). The first exception, from a
    task or from on_done, stops the workers from taking new tasks; it is raised here once the
    tasks already running have finished. With one worker everything runs in this thread, in order.
    """
    if not workers:
        raise ValueError("run_concurrently: no workers")
    results: list[Any] = [None] * len(tasks)
    if len(workers) == 1:
        for i, task in enumerate(tasks):
            results[i] = workers[0](task)
            if on_done is not None:
                on_done(i, results[i])
        return results
    lock = threading.Lock()
    queue = iter(range(len(tasks)))
    errors: list[BaseException] = []

    def loop(worker: Callable[[T], R]) -> None:
        while True:
            with lock:
                i = None if errors else next(queue, None)
            if i is None:
                return
            try:
                result = worker(tasks[i])
                with lock:
                    results[i] = result
                    if on_done is not None:
                        on_done(i, result)
            except BaseException as e:  # noqa: BLE001 - re-raised in the calling thread below
                with lock:
                    errors.append(e)
                return

    threads = [threading.Thread(target=loop, args=(w,), daemon=True, name=f"engine-{k}") for k, w in enumerate(workers)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        raise errors[0]
    return results
