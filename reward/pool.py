"""A pool of worker processes that run reward functions, so that user code never runs in the caller.

How a batch runs:
- Samples go to workers in chunks (one message per chunk, not a round trip per sample).
  A worker scores its chunk one sample at a time and streams each result back as it finishes;
  a batch reward function (EasyR1 "batch", verl batch) gets the chunk in one call instead, with
  ``timeout`` for the whole chunk. When that call raises, returns the wrong number of results,
  times out or kills the worker, the chunk is scored again one sample at a time (a "batch
  fallback"), so one bad sample costs itself, not its chunk.
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
They ignore SIGINT (the caller decides), and exit when the caller's process disappears. They
run confined (reward/sandbox.py): resource limits, a scratch working folder, and their
stdout/stderr captured by the caller, capped and counted.
"""

from __future__ import annotations

import atexit
import logging
import math
import multiprocessing
import multiprocessing.connection
import multiprocessing.util  # noqa: F401  (imported before our atexit hook, so ours runs first)
import os
import shutil
import signal
import tempfile
import threading
import time
import weakref
from collections import deque

from reward import sandbox
from reward.sandbox import Limits, OutputLog
from reward.scores import to_score
from reward.spec import RewardSpecError, Scorer, Spec, resolve

logger = logging.getLogger(__name__)

_CTX = multiprocessing.get_context("spawn")
_MAX_CHUNK = 64  # samples per message: large enough to amortise IPC, small enough to balance load

# (batch index, response, ground truth, data_source, extra_info, response_length)
Item = tuple
# (score, parts, bad_parts, reason, detail)
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


def _worker_main(conn, spec: Spec, kwargs: dict, limits: Limits, scratch: str, output, parent_pid: int) -> None:
    """Worker process: confine itself, load the function, then score chunks."""
    try:
        sandbox.enter(limits, scratch, output.fileno())  # first: the import's prints are captured too
    except Exception as exc:
        conn.send(("load_error", f"reward.fn={spec.text!r}: could not confine the worker: {_describe(exc)}"))
        return
    output.close()  # fds 1 and 2 hold the pipe now
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    _exit_with_parent(parent_pid)
    try:
        scorer = resolve(spec, kwargs)
    except RewardSpecError as exc:
        conn.send(("load_error", str(exc)))
        return
    except BaseException as exc:
        conn.send(("load_error", f"reward.fn={spec.text!r}: loading failed: {_describe(exc)}"))
        return
    finally:
        sandbox.flush_output()
    conn.send(("ready", scorer.shape, scorer.batched))
    while True:
        try:
            message = conn.recv()
        except EOFError:
            return
        if message[0] == "stop":
            return
        _, mode, chunk = message
        if mode == "batch":
            results, failure = _score_chunk(scorer, chunk, limits)
            if failure is None:
                for item, result in zip(chunk, results):
                    conn.send(("result", item[0], *result))
                continue
            conn.send(("batch_failed", failure))
        for item in chunk:
            conn.send(("result", item[0], *_score_one(scorer, item, limits)))


def _score_one(scorer: Scorer, item: Item, limits: Limits) -> Result:
    sandbox.start_call(limits)
    try:
        return to_score(scorer.one(item[1:]), scorer.primary)
    except BaseException as exc:  # SystemExit from user code too: it must not end the worker
        return None, {}, (), "exception", _describe(exc)
    finally:
        sandbox.flush_output()


def _score_chunk(scorer: Scorer, chunk: list[Item], limits: Limits) -> tuple[list[Result] | None, str | None]:
    """One call of a batch function on the chunk: (results, None), or (None, why it failed)."""
    sandbox.start_call(limits)
    try:
        values = scorer.many([item[1:] for item in chunk])
    except BaseException as exc:
        return None, f"raised {_describe(exc)}"
    finally:
        sandbox.flush_output()
    if not isinstance(values, (list, tuple)) or len(values) != len(chunk):
        what = f"{len(values)} results" if isinstance(values, (list, tuple)) else f"a {type(values).__name__}"
        return None, f"returned {what} for {len(chunk)} samples"
    return [to_score(v, scorer.primary) for v in values], None


class _Worker:
    """One worker process and what it is doing: "starting", "idle", "busy" or "dead"."""

    def __init__(self, pool: WorkerPool):
        parent_end, child_end = _CTX.Pipe(duplex=True)
        # The worker's stdout/stderr: a pipe whose write end travels to the child as a Connection
        # (multiprocessing duplicates its descriptor into the spawned process).
        read_fd, write_fd = os.pipe()
        os.set_blocking(read_fd, False)
        output = multiprocessing.connection.Connection(write_fd, readable=False)
        self.process = _CTX.Process(
            target=_worker_main,
            args=(child_end, pool.spec, pool.kwargs, pool.limits, pool.scratch, output, os.getpid()),
            name="ovlt-reward-worker",
            daemon=False,
        )
        try:
            self.process.start()
        finally:
            child_end.close()
            output.close()
        self.conn = parent_end
        self.output_fd: int | None = read_fd
        self.mode = "single"  # how the current chunk runs: "single" (per sample) or "batch" (one call)
        self.state = "starting"
        self.since = time.monotonic()  # start, chunk receipt, or last result: the clock a timeout runs on
        self.chunk: list[Item] = []
        self.done = 0  # results received for the current chunk
        self.load_error: str | None = None
        self.eof = False

    def read_output(self, log: OutputLog) -> None:
        if self.output_fd is not None and not log.read(self.output_fd):
            self.close_output()

    def close_output(self) -> None:
        if self.output_fd is not None:
            os.close(self.output_fd)
            self.output_fd = None

    def kill(self, log: OutputLog | None = None) -> None:
        if self.process.exitcode is None:
            self.process.kill()
        self.process.join(timeout=5)
        if log is not None:
            self.read_output(log)  # what it printed before it died
        self.close_output()
        self.conn.close()
        self.state = "dead"


class _Batch:
    """The state of one batch: results by index, chunks waiting for a worker, lost workers."""

    def __init__(self, items: list[Item], num_workers: int, mode: str):
        n = len(items)
        self.results: list[Result | None] = [None] * n
        self.missing = n
        size = max(1, min(_MAX_CHUNK, math.ceil(n / (4 * num_workers))))
        self.pending = deque((mode, items[i : i + size]) for i in range(0, n, size))  # (mode, chunk)
        self.fallbacks = 0  # chunks of a batch function scored one by one after their call failed
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

    def __init__(
        self,
        spec: Spec,
        *,
        num_workers: int,
        timeout: float,
        kwargs: dict | None = None,
        limits: Limits | None = None,
        start_timeout: float = 120.0,
    ):
        self.spec = spec
        self.kwargs = dict(kwargs or {})
        self.limits = limits or Limits()
        self.timeout = timeout
        self.start_timeout = start_timeout
        self.shape: str | None = None
        self.batched = False
        self.closed = False
        self.output = OutputLog(self.limits.output_bytes)
        self.scratch = tempfile.mkdtemp(prefix="ovlt-reward-")
        self.workers: list[_Worker] = []
        _LIVE_POOLS.add(self)
        if self.limits.processes and not sandbox.processes_limit_enforced() and not _WARNED_ROOT:
            _WARNED_ROOT.append(True)  # once per process
            logger.warning("reward %r: reward.max_processes is not enforced: Linux does not limit root's processes", spec.text)
        try:
            self.workers = [_Worker(self) for _ in range(num_workers)]
            self._wait_until_ready()
        except BaseException:
            self.close()
            raise
        finally:
            self.output.report(spec.text, "while loading")

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
            outputs = [w.output_fd for w in waiting if w.output_fd is not None]
            multiprocessing.connection.wait([w.conn for w in waiting] + [w.process.sentinel for w in waiting] + outputs, left)
            for w in waiting:
                w.read_output(self.output)
                self._drain(w, batch=None)
                if w.load_error is not None:
                    raise RewardSpecError(w.load_error)
                if w.state == "starting" and (w.eof or w.process.exitcode is not None):
                    w.process.join(timeout=5)
                    w.read_output(self.output)
                    raise RewardSpecError(
                        f"reward.fn={self.spec.text!r}: the worker process died while loading the function"
                        f" ({sandbox.describe_exit(w.process.exitcode, self.limits)})"
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
                w.state = "idle"
                self.shape, self.batched = message[1], message[2]
            elif kind == "load_error":
                w.load_error = message[1]
            elif kind == "batch_failed" and batch is not None and w.state == "busy":
                w.mode, w.since = "single", time.monotonic()  # the worker now scores the chunk one by one
                batch.fallbacks += 1
                logger.warning(
                    "reward %r: a batch call on %d samples %s; scoring them one by one", self.spec.text, len(w.chunk), message[1]
                )
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
        self.workers[self.workers.index(old)] = _Worker(self)

    def _replace(self, w: _Worker, batch: _Batch, reason: str) -> None:
        """Kill ``w``, blame the sample it was running, requeue the rest of its chunk, start a new worker.

        A batch call that timed out or died blames no sample: its chunk is requeued to be scored
        one sample at a time, where the culprit (if it is one sample) costs only itself."""
        culprit = None
        batch_call = w.state == "busy" and w.mode == "batch"
        if w.state == "busy" and w.done < len(w.chunk):
            rest = w.chunk[w.done :] if batch_call else w.chunk[w.done + 1 :]
            culprit = None if batch_call else w.chunk[w.done]
            if rest:
                batch.pending.appendleft(("single", rest))
        w.kill(self.output)
        exit_text = sandbox.describe_exit(w.process.exitcode, self.limits)
        what = f"timed out after {self.timeout:g} s" if reason == "timeout" else f"died ({exit_text})"
        if batch_call:
            batch.fallbacks += 1
            logger.warning("reward %r: a batch call on %d samples %s; scoring them one by one", self.spec.text, len(w.chunk), what)
            self._swap_in_new_worker(w)
            return  # not a lost worker for the circuit breaker: the per-sample run will tell
        if culprit is not None:
            batch.set(culprit[0], (None, {}, (), reason, f"worker {what}"))
            logger.warning("reward %r: worker %s on sample #%d; restarting it", self.spec.text, what, culprit[0])
        elif w.load_error is not None:
            logger.error("reward %r: a replacement worker failed to load: %s", self.spec.text, w.load_error)
        else:
            logger.warning("reward %r: worker lost (%s, %s); restarting it", self.spec.text, reason, exit_text)
        batch.lost_worker()
        self._swap_in_new_worker(w)

    def _abandon(self, batch: _Batch) -> None:
        """Give up on the batch: every sample not yet scored becomes None ("abandoned")."""
        for w in list(self.workers):
            if w.state == "busy":
                batch.pending.appendleft(("single", w.chunk[w.done :]))
                w.kill(self.output)
                self._swap_in_new_worker(w)
        count = batch.missing
        for _mode, chunk in batch.pending:
            for item in chunk:
                batch.set(item[0], (None, {}, (), "abandoned", "the pool gave up after losing too many workers"))
        batch.pending.clear()
        logger.error(
            "reward %r: %d samples abandoned after %d workers were lost to timeouts or crashes in this batch",
            self.spec.text, count, batch.total_losses,
        )

    # ------------------------------------------------------------------ running a batch

    def run(self, items: list[Item]) -> tuple[list[Result], dict[str, int]]:
        """Score ``items`` (each starting with its index 0..n-1 in the batch): (results in index
        order, counts: batch_fallbacks, output_bytes, output_dropped_bytes)."""
        batch = _Batch(items, len(self.workers), "batch" if self.batched else "single")
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
                    w.read_output(self.output)
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
                w.read_output(self.output)
                if w.state == "busy":
                    w.kill(self.output)
                    if not self.closed:
                        self.workers[self.workers.index(w)] = _Worker(self)
            stats = {"batch_fallbacks": batch.fallbacks, "output_bytes": self.output.total, "output_dropped_bytes": self.output.dropped}
            self.output.report(self.spec.text, f"while scoring {len(items)} samples")
        return batch.results, stats

    def _dispatch(self, batch: _Batch) -> None:
        for w in list(self.workers):
            if w.state != "idle" or not batch.pending:
                continue
            mode, chunk = batch.pending.popleft()
            try:
                w.conn.send(("run", mode, chunk))
            except (BrokenPipeError, OSError):
                batch.pending.appendleft((mode, chunk))
                self._replace(w, batch, "dispatch failed")
                continue
            w.state, w.mode, w.chunk, w.done, w.since = "busy", mode, chunk, 0, time.monotonic()

    def _wait_for_events(self) -> None:
        """Block until a worker sends something, exits, or the nearest deadline passes."""
        now = time.monotonic()
        deadlines = [w.since + self.timeout for w in self.workers if w.state == "busy"]
        deadlines += [w.since + self.start_timeout for w in self.workers if w.state == "starting"]
        wait_s = min([1.0] + [max(0.0, d - now) + 0.001 for d in deadlines])
        objects = [w.process.sentinel for w in self.workers] + [w.conn for w in self.workers if not w.eof]
        objects += [w.output_fd for w in self.workers if w.output_fd is not None]
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
        shutil.rmtree(self.scratch, ignore_errors=True)
        _LIVE_POOLS.discard(self)


_LIVE_POOLS: weakref.WeakSet = weakref.WeakSet()
_WARNED_ROOT: list[bool] = []


@atexit.register
def _close_all_pools() -> None:
    # Runs before multiprocessing's own exit hook, which would otherwise wait forever for a
    # worker stuck in user code (workers are not daemonic, so user code may start processes).
    for pool in list(_LIVE_POOLS):
        pool.close()
