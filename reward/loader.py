"""``load(spec)`` -> RewardFn: a reward function running safely in a pool of worker processes."""

from __future__ import annotations

import logging
import math
import threading
import weakref
from collections import Counter
from collections.abc import Mapping

from reward.pool import WorkerPool
from reward.sandbox import Limits
from reward.scores import BatchScores
from reward.spec import SHAPES, parse_spec

logger = logging.getLogger(__name__)

_EXTRA_KEYS = ("data_source", "extra_info", "response_length")
_MAX_DETAILS = 5


class RewardFn:
    """A loaded reward function. Use :func:`load` to make one.

    ``fn(response, ground_truth, **extra) -> float | None`` scores one sample;
    ``fn.score_batch(responses, ground_truths, extras)`` scores many (see BatchScores).
    User code runs in confined worker processes with a timeout per sample (per chunk for batch
    functions); it cannot hang, crash or slow down the caller beyond ``timeout`` per hung
    sample. Calls from several threads are served one batch at a time. Close it (or use
    ``with``) to stop the workers. ``shape`` says which calling convention was detected (a
    key of reward.spec.SHAPES; ``describe_shape`` spells it out).
    """

    def __init__(self, spec: str, *, timeout: float, num_workers: int, kwargs: dict, limits: Limits):
        self.name = spec
        self.timeout = timeout
        self.num_workers = num_workers
        self._pool = WorkerPool(parse_spec(spec), num_workers=num_workers, timeout=timeout, kwargs=kwargs, limits=limits)
        self.shape = self._pool.shape
        self.batched = self._pool.batched
        self._lock = threading.Lock()
        self._finalizer = weakref.finalize(self, self._pool.close)

    @property
    def describe_shape(self) -> str:
        return f"{self.shape} ({SHAPES[self.shape]})"

    def __repr__(self) -> str:
        return f"RewardFn({self.name!r}, shape={self.shape!r}, timeout={self.timeout}, num_workers={self.num_workers})"

    def __call__(self, response: str, ground_truth: str, **extra) -> float | None:
        """Score one sample (same safety as a batch): a float, or None when unscorable."""
        return self.score_batch([response], [ground_truth], [extra]).scores[0]

    def score_batch(
        self,
        responses: list[str],
        ground_truths: list[str],
        extras: list[dict] | None = None,
    ) -> BatchScores:
        """Score a batch. ``extras[i]`` may hold the row's ``data_source`` and ``extra_info``, and
        ``response_length`` (the response's token count, which EasyR1 functions receive)."""
        items = _validated_items(responses, ground_truths, extras)
        if not self._finalizer.alive:
            raise RuntimeError(f"reward function {self.name!r} is closed")
        with self._lock:
            results, stats = self._pool.run(items) if items else ([], {})
        return _collect(results, self.name, stats)

    def close(self) -> None:
        """Stop the worker processes. Safe to call more than once."""
        self._finalizer()

    def __enter__(self) -> RewardFn:
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()


def load(
    spec: str,
    *,
    timeout: float = 10.0,
    num_workers: int = 2,
    kwargs: Mapping | None = None,
    limits: Limits | None = None,
) -> RewardFn:
    """Load a reward function by spec and start its worker pool.

    spec: a built-in name ("openvlthinker", "format", "multiple_choice", "numeric", "yes_no"),
        "path/to/file.py:name" (name defaults to compute_score) or "package.module:name".
    timeout: wall-clock seconds one sample (one chunk, for batch functions) may take; over it
        the worker is killed and the sample scores None.
    num_workers: worker processes.
    kwargs: keyword arguments passed to every call (verl's reward_kwargs, EasyR1's
        reward_function_kwargs); they must be picklable.
    limits: resource limits and the output cap of the workers (reward.sandbox.Limits).

    Raises RewardSpecError (a ValueError naming the spec) when the file, module or function
    does not exist, the function's signature fits no known shape or more than one, kwargs
    do not fit it, or importing it fails.
    """
    if not isinstance(timeout, (int, float)) or not math.isfinite(timeout) or timeout <= 0:
        raise ValueError(f"reward timeout must be a positive number of seconds, got {timeout!r}")
    if not isinstance(num_workers, int) or isinstance(num_workers, bool) or num_workers < 1:
        raise ValueError(f"reward num_workers must be a positive integer, got {num_workers!r}")
    if kwargs is not None and (not isinstance(kwargs, Mapping) or not all(isinstance(k, str) for k in kwargs)):
        raise ValueError(f"reward kwargs must be a mapping with string keys, got {kwargs!r}")
    return RewardFn(spec, timeout=float(timeout), num_workers=num_workers, kwargs=dict(kwargs or {}), limits=limits or Limits())


def load_from_config(section) -> RewardFn:
    """``load`` with the fields of a reward config section (RewardConfig in ovlt_rl/config.py:
    fn, timeout, num_workers, kwargs and the worker limits), as training and data preparation use it."""
    limits = Limits(
        memory_mb=section.max_memory_mb,
        cpu_seconds=section.max_cpu_seconds,
        file_size_mb=section.max_file_size_mb,
        processes=section.max_processes,
        output_bytes=section.max_output_bytes,
        isolate_network=section.isolate_network,
    )
    return load(section.fn, timeout=section.timeout, num_workers=section.num_workers, kwargs=dict(section.kwargs), limits=limits)


def _validated_items(responses, ground_truths, extras) -> list[tuple]:
    """(index, response, ground truth, data_source, extra_info, response_length) per sample;
    clear errors for bad input."""
    if extras is None:
        extras = [{}] * len(responses)
    if not (len(responses) == len(ground_truths) == len(extras)):
        raise ValueError(
            f"score_batch: {len(responses)} responses, {len(ground_truths)} ground truths and {len(extras)} extras; "
            "they must be the same length"
        )
    items = []
    for i, (response, truth, extra) in enumerate(zip(responses, ground_truths, extras)):
        if not isinstance(response, str):
            raise TypeError(f"score_batch: response #{i} is a {type(response).__name__}, not a str")
        if not isinstance(truth, str):
            raise TypeError(f"score_batch: ground truth #{i} is a {type(truth).__name__}, not a str")
        if not isinstance(extra, Mapping):
            raise TypeError(f"score_batch: extras #{i} is a {type(extra).__name__}, not a dict")
        unknown = set(extra) - set(_EXTRA_KEYS)
        if unknown:
            raise ValueError(f"score_batch: extras #{i} has unknown keys {sorted(unknown)}; allowed: {list(_EXTRA_KEYS)}")
        length = extra.get("response_length")
        if length is not None and (not isinstance(length, int) or isinstance(length, bool) or length < 0):
            raise TypeError(f"score_batch: extras #{i} response_length must be a token count (int >= 0), got {length!r}")
        items.append((i, response, truth, extra.get("data_source"), extra.get("extra_info"), length))
    return items


def _collect(results: list[tuple], name: str, stats: dict[str, int]) -> BatchScores:
    """Assemble worker results (score, parts, bad_parts, reason, detail) into a BatchScores."""
    n = len(results)
    batch = BatchScores(scores=[None] * n, reasons=[None] * n, parts={}, none_reasons=Counter(), details=[], **stats)
    for i, (score, parts, bad_parts, reason, detail) in enumerate(results):
        batch.scores[i] = score
        batch.reasons[i] = reason
        if reason is not None:
            batch.none_reasons[reason] += 1
            if detail and len(batch.details) < _MAX_DETAILS:
                batch.details.append(f"#{i} {reason}: {detail}")
        for part, value in parts.items():
            batch.parts.setdefault(part, [None] * n)[i] = value
        for part in bad_parts:
            batch.non_numeric_parts[part] += 1
    if batch.none_reasons:
        logger.debug("reward %r: %d/%d unscorable %s", name, sum(batch.none_reasons.values()), n, dict(batch.none_reasons))
    return batch
