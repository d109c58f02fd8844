"""One-step off-policy GRPO (`algorithm.overlap`): the next step's rollouts are generated while
this step's update runs.

    step k:   take batch k (generated during step k-1)  ->  start batch k+1 on the rollout
              workers (they still hold the weights before update k)  ->  update k on the policy
              workers  ->  wait for batch k+1  ->  sync the new weights  ->  checkpoint

With split placement the rollout GPUs would otherwise idle during the update and the policy GPUs
during generation; overlapped, a step takes about max(generate, update) + sync instead of their
sum. The price: batch k+1 was sampled by the policy one update older than the one it trains
(staleness 1). The update therefore takes its importance ratio against the log-probs the rollout
engine sampled with (the behaviour policy), not against a recomputed pass of the current policy.

The batch runs in one driver thread: the thread does what `generate_and_score` does in the
synchronous loop (the same draws, seeds and reward calls, so the data order is unchanged), and the
main thread meanwhile only talks to the policy workers. Nothing else uses the rollout workers,
the reward pool or the data order until `wait` returns.

A checkpoint after step k records the data order from before batch k+1 was drawn: a resume
draws the same rows again and generates them with the checkpoint's weights (one step on-policy,
logged), since the weights that sampled them in the first run are not kept.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

from ovlt_rl.driver.rollouts import Rollouts

log = logging.getLogger("ovlt")


class RolloutsAhead:
    """The one batch generated ahead of the step that will train it."""

    def __init__(self) -> None:
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="ovlt-rollouts-ahead")
        self._step: int | None = None
        self._future: Future[Rollouts] | None = None
        self.data_state: dict[str, Any] | None = None
        """The data order's state from before the pending batch drew its rows (what a checkpoint keeps)."""

    def start(self, step: int, produce: Callable[[], Rollouts], data_state: dict[str, Any]) -> None:
        """Begin generating step `step`'s batch with `produce()` in the background."""
        if self._future is not None:
            raise RuntimeError(f"rollouts for step {self._step} are still pending; one batch runs ahead at a time")
        self._step, self.data_state = step, data_state
        self._future = self._pool.submit(produce)

    def wait(self) -> None:
        """Block until the pending batch is done (the rollout workers are free); its error, if any, is raised here."""
        if self._future is not None:
            self._future.result()

    def take(self, step: int) -> Rollouts | None:
        """The batch generated for `step` (waiting for it), or None when none is pending: the
        first step, or the first after a resume."""
        if self._future is None:
            return None
        if self._step != step:
            raise RuntimeError(f"rollouts were generated ahead for step {self._step}, not {step}")
        try:
            return self._future.result()
        finally:
            self._future, self._step, self.data_state = None, None, None

    def close(self) -> None:
        """Stop without waiting (on an error in the main loop the workers are being shut down,
        which ends a pending generation with an error nobody needs to see)."""
        self._pool.shutdown(wait=False, cancel_futures=True)

    def __enter__(self) -> RolloutsAhead:
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()
