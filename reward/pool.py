"""A pool of worker processes that run reward functions, so that user code never runs in the caller.

How a batch runs:
- Samples go to workers in chunks (one message per chunk, not a round trip per sample).
  A worker scores its chunk one sample at a time and streams each result back as it finishes.
- The caller's loop (any thread: no signals are used) waits on all workers' pipes and process
  sentinels. A busy worker must report a result within ``timeout`` seconds of its previous
  one (or of receiving the chunk). If it does not, it is killed (SIGKILL: a hung C extension
  cannot ignore it): that sample is None ("timeout"), the rest of its chunk goes back to the
  front of the queue for any free worker, and a fresh worker is started in the background.
  So a hung sample costs about ``timeout``, not ``len(chunk) * timeout``.
- A worker that dies (os._exit, segfault, OOM kill) is handled the same way, with reason
  "worker_crashed" for the sample it was running.
- Circuit breaker: when a batch loses more than 2 * num_workers + 2 workers in a row (no
  sample scored in between) or more than max(8, 10% of the batch) in all, the function is
  broken (e.g. it hangs on every input): the samples not yet scored are None with reason
  "abandoned" instead of costing ``timeout`` each.

Workers are started with the "spawn" context: safe with threads, torch and Ray in the caller.
They ignore SIGINT (the caller decides), and exit when the caller's process disappears.
"""

from __future__ import annotations

import atexit
import logging
import math
import multiprocessing
import multiprocessing.connection
import multiprocessing.util  # noqa: F401  (imported before our atexit hook, so ours runs first)
import os
import signal
import threading
import time
import weakref
from collections import deque

from reward.scores import to_score
from reward.spec import RewardSpecError, Spec, resolve

logger = logging.getLogger(__name__)

_CTX = multiprocessing.get_context("spawn")
_MAX_CHUNK = 64  # samples per message: large enough to amortise IPC, small enough to balance load

# (batch index, response, ground truth, data_source, extra_info)
Item = tuple
# (score, parts, reason, detail)
Result = tuple


def _describe(exc: BaseException) -> str:
    try:
        return f"{type(exc).__name__}: {exc}"[:300]
    except Exception:  # a user exception whose __str__ raises
        return type(exc).__name__


def _exit_with_parent(parent_pid: int) -> None:
    """Exit when the caller's process is gone (its pipe may not be read while user code hangs)."""

    def watch() -> None:
        while os.getppid() == parent_pid:
            time.sleep(1.0)
        os._exit(0)

    threading.Thread(target=watch, name="ovlt-reward-parent-watch", daemon=True).start()


def _worker_main(conn, spec: Spec, parent_pid: int) -> None:
    """Worker process: load the function, then score chunks, one result message per sample."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    _exit_with_parent(parent_pid)
    try:
        scorer = resolve(spec)
    except RewardSpecError as exc:
        conn.send(("load_error", str(exc)))
        return
    except BaseException as exc:
        conn.send(("load_error", f"reward.fn={spec.text!r}: loading failed: {_describe(exc)}"))
        return
    conn.send(("ready", scorer.style))
    while True:
        try:
            message = conn.recv()
        except EOFError:
            return
        if message[0] == "stop":
            return
        for index, response, truth, data_source, extra_info in message[1]:
            try:
                score, parts, reason, detail = to_score(scorer.call(response, truth, data_source, extra_info))
            except BaseException as exc:  # SystemExit from user code too: it must not end the worker
                score, parts, reason, detail = None, {}, "exception", _describe(exc)
            conn.send(("result", index, score, parts, reason, detail))


class _Worker:
    """One worker process and what it is doing: "starting", "idle", "busy" or "dead"."""

    def __init__(self, spec: Spec):
        parent_end, child_end = _CTX.Pipe(duplex=True)
        self.process = _CTX.Process(
            target=_worker_main, args=(child_end, spec, os.getpid()), name="ovlt-reward-worker", daemon=False
        )
        self.process.start()
        child_end.close()
        self.conn = parent_end
        self.state = "starting"
        self.since = time.monotonic()  # start, chunk receipt, or last result: the clock a timeout runs on
        self.chunk: list[Item] = []
        self.done = 0  # results received for the current chunk
        self.style: str | None = None
        self.load_error: str | None = None
        self.eof = False

    def kill(self) -> None:
        if self.process.exitcode is None:
            self.process.kill()
        self.process.join(timeout=5)
        self.conn.close()
        self.state = "dead"


class _Batch:
    """The state of one batch: results by index, chunks waiting for a worker, lost workers."""

    def __init__(self, items: list[Item], num_workers: int):
        n = len(items)
        self.results: list[Result | None] = [None] * n
        self.missing = n
        size = max(1, min(_MAX_CHUNK, math.ceil(n / (4 * num_workers))))
        self.pending = deque(items[i : i + size] for i in range(0, n, size))
        # circuit breaker, see the module docstring
        self.max_consecutive_losses = 2 * num_workers + 2
        self.max_total_losses = max(8, math.ceil(0.1 * n))
        self.consecutive_losses = 0
        self.total_losses = 0

    def set(self, index: int, result: Result) -> None:
        if self.results[index] is None:
            self.results[index] = result
            self.missing -= 1

    def scored(self, index: int, result: Result) -> None:
        self.set(index, result)
        self.consecutive_losses = 0

    def lost_worker(self) -> None:
        self.consecutive_losses += 1
        self.total_losses += 1

    @property
    def broken(self) -> bool:
        return self.consecutive_losses > self.max_consecutive_losses or self.total_losses > self.max_total_losses


class WorkerPool:
    """``num_workers`` processes running the function named by ``spec``; see the module docstring."""

    def __init__(self, spec: Spec, *, num_workers: int, timeout: float, start_timeout: float = 120.0):
        self.spec = spec
        self.timeout = timeout
        self.start_timeout = start_timeout
        self.style: str | None = None
        self.closed = False
        self.workers = [_Worker(spec) for _ in range(num_workers)]
        _LIVE_POOLS.add(self)
        try:
            self._wait_until_ready()
        except BaseException:
            self.close()
            raise

    # ------------------------------------------------------------------ start-up

    def _wait_until_ready(self) -> None:
        """Wait until every worker has loaded the function; raise its error if one could not."""
        deadline = time.monotonic() + self.start_timeout
        while any(w.state == "starting" for w in self.workers):
            left = deadline - time.monotonic()
            if left <= 0:
                raise RewardSpecError(
                    f"reward.fn={self.spec.text!r}: workers did not load the function within {self.start_timeout:.0f} s"
                )
            waiting = [w for w in self.workers if w.state == "starting"]
            multiprocessing.connection.wait([w.conn for w in waiting] + [w.process.sentinel for w in waiting], left)
            for w in waiting:
                self._drain(w, batch=None)
                if w.load_error is not None:
                    raise RewardSpecError(w.load_error)
                if w.state == "starting" and (w.eof or w.process.exitcode is not None):
                    w.process.join(timeout=5)
                    raise RewardSpecError(
                        f"reward.fn={self.spec.text!r}: the worker process died while loading the function"
                        f" (exit code {w.process.exitcode})"
                    )

    # ------------------------------------------------------------------ messages

    def _drain(self, w: _Worker, batch: _Batch | None) -> None:
        """Read every message a worker has sent so far."""
        while not w.eof:
            try:
                if not w.conn.poll():
                    return
                message = w.conn.recv()
            except (EOFError, OSError):
                w.eof = True  # the worker is gone; run() replaces it
                return
            kind = message[0]
            if kind == "ready":
                w.state, w.style = "idle", message[1]
                self.style = self.style or message[1]
            elif kind == "load_error":
                w.load_error = message[1]
            elif kind == "result" and batch is not None and w.state == "busy":
                batch.scored(message[1], message[2:])
                w.done += 1
                w.since = time.monotonic()
                if w.done == len(w.chunk):
                    w.state, w.chunk, w.done = "idle", [], 0

    # ------------------------------------------------------------------ losing a worker

    def _swap_in_new_worker(self, old: _Worker) -> None:
        if self.closed:  # closed from another thread (or at exit) while this batch ran
            raise RuntimeError(f"reward {self.spec.text!r}: the worker pool was closed during a batch")
        self.workers[self.workers.index(old)] = _Worker(self.spec)

    def _replace(self, w: _Worker, batch: _Batch, reason: str) -> None:
        """Kill ``w``, blame the sample it was running, requeue the rest of its chunk, start a new worker."""
        culprit = None
        if w.state == "busy" and w.done < len(w.chunk):
            culprit = w.chunk[w.done]
            rest = w.chunk[w.done + 1 :]
            if rest:
                batch.pending.appendleft(rest)
        w.kill()
        if culprit is not None:
            what = f"timed out after {self.timeout:g} s" if reason == "timeout" else f"died (exit code {w.process.exitcode})"
            batch.set(culprit[0], (None, {}, reason, f"worker {what}"))
            logger.warning("reward %r: worker %s on sample #%d; restarting it", self.spec.text, what, culprit[0])
        elif w.load_error is not None:
            logger.error("reward %r: a replacement worker failed to load: %s", self.spec.text, w.load_error)
        else:
            logger.warning("reward %r: worker lost (%s, exit code %s); restarting it", self.spec.text, reason, w.process.exitcode)
        batch.lost_worker()
        self._swap_in_new_worker(w)

    def _abandon(self, batch: _Batch) -> None:
        """Give up on the batch: every sample not yet scored becomes None ("abandoned")."""
        for w in list(self.workers):
            if w.state == "busy":
                batch.pending.appendleft(w.chunk[w.done :])
                w.kill()
                self._swap_in_new_worker(w)
        count = batch.missing
        for chunk in batch.pending:
            for item in chunk:
                batch.set(item[0], (None, {}, "abandoned", "the pool gave up after losing too many workers"))
        batch.pending.clear()
        logger.error(
            "reward %r: %d samples abandoned after %d workers were lost to timeouts or crashes in this batch",
            self.spec.text, count, batch.total_losses,
        )

    # ------------------------------------------------------------------ running a batch

    def run(self, items: list[Item]) -> list[Result]:
        """Score ``items`` (each starting with its index 0..n-1 in the batch); results in index order."""
        batch = _Batch(items, len(self.workers))
        try:
            while batch.missing:
                if self.closed:
                    raise RuntimeError(f"reward {self.spec.text!r}: the worker pool was closed during a batch")
                if batch.broken:
                    self._abandon(batch)
                    break
                self._dispatch(batch)
                self._wait_for_events()
                now = time.monotonic()
                for w in list(self.workers):
                    self._drain(w, batch)
                    if w.eof or w.process.exitcode is not None:
                        w.process.join(timeout=1)  # the pipe's EOF may come a moment before the exit code
                        self._replace(w, batch, "worker_crashed")
                    elif w.state == "busy" and now - w.since > self.timeout:
                        self._replace(w, batch, "timeout")
                    elif w.state == "starting" and now - w.since > self.start_timeout:
                        self._replace(w, batch, "start_timeout")
        finally:
            # Interrupted (KeyboardInterrupt, an error here): a worker still busy with this batch
            # would send its results into the next one, so it is replaced.
            for w in list(self.workers):
                if w.state == "busy":
                    w.kill()
                    if not self.closed:
                        self.workers[self.workers.index(w)] = _Worker(self.spec)
        return batch.results

    def _dispatch(self, batch: _Batch) -> None:
        for w in list(self.workers):
            if w.state != "idle" or not batch.pending:
                continue
            chunk = batch.pending.popleft()
            try:
                w.conn.send(("run", chunk))
            except (BrokenPipeError, OSError):
                batch.pending.appendleft(chunk)
                self._replace(w, batch, "dispatch failed")
                continue
            w.state, w.chunk, w.done, w.since = "busy", chunk, 0, time.monotonic()

    def _wait_for_events(self) -> None:
        """Block until a worker sends something, exits, or the nearest deadline passes."""
        now = time.monotonic()
        deadlines = [w.since + self.timeout for w in self.workers if w.state == "busy"]
        deadlines += [w.since + self.start_timeout for w in self.workers if w.state == "starting"]
        wait_s = min([1.0] + [max(0.0, d - now) + 0.001 for d in deadlines])
        objects = [w.process.sentinel for w in self.workers] + [w.conn for w in self.workers if not w.eof]
        multiprocessing.connection.wait(objects, wait_s)

    # ------------------------------------------------------------------ shutdown

    def close(self) -> None:
        """Stop all workers: idle ones are asked to exit, the rest (busy, starting) are killed."""
        self.closed = True
        workers = list(self.workers)
        for w in workers:
            if w.state == "idle":
                try:
                    w.conn.send(("stop",))
                except (BrokenPipeError, OSError):
                    pass
        deadline = time.monotonic() + 1.0
        for w in workers:
            if w.state == "idle":
                w.process.join(timeout=max(0.0, deadline - time.monotonic()))
            if w.state != "dead":
                w.kill()
        _LIVE_POOLS.discard(self)


_LIVE_POOLS: weakref.WeakSet = weakref.WeakSet()


@atexit.register
def _close_all_pools() -> None:
    # Runs before multiprocessing's own exit hook, which would otherwise wait forever for a
    # worker stuck in user code (workers are not daemonic, so user code may start processes).
    for pool in list(_LIVE_POOLS):
        pool.close()
