"""Seconds per phase of a step, for the `timing/<phase>_s` metrics."""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager


class PhaseTimer:
    """Started at creation; `with timer.phase("update"): ...` adds that block's seconds to the
    phase (a phase entered twice, as generation under dynamic sampling, sums its rounds)."""

    def __init__(self) -> None:
        self.started = time.perf_counter()
        self.seconds: dict[str, float] = {}

    @contextmanager
    def phase(self, name: str) -> Iterator[None]:
        t0 = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[name] = self.seconds.get(name, 0.0) + time.perf_counter() - t0

    def elapsed(self) -> float:
        """Seconds since the timer started."""
        return time.perf_counter() - self.started

    def metrics(self) -> dict[str, float]:
        """`timing/<phase>_s` of every phase entered, in the order they were first entered."""
        return {f"timing/{name}_s": s for name, s in self.seconds.items()}
