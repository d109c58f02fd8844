"""What a reward function returned, made safe: scores, named parts, and counted reasons for None."""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field

# Why a sample has no score. The first six come from the function or its worker; "abandoned"
# marks samples never run because the pool gave up on a batch (see reward/pool.py).
REASONS = (
    "returned_none",
    "exception",
    "timeout",
    "non_numeric",
    "non_finite",
    "worker_crashed",
    "abandoned",
)


class UnscorableError(RuntimeError):
    """Too large a fraction of a batch could not be scored."""


def _as_float(value) -> tuple[float | None, str | None, str]:
    """(value as float, reason when not usable, detail for the log)."""
    if isinstance(value, (str, bytes)):
        return None, "non_numeric", f"returned {type(value).__name__} {str(value)[:60]!r}"
    try:
        number = float(value)  # bool, int, float, numpy and torch scalars
    except (TypeError, ValueError) as exc:
        return None, "non_numeric", f"returned {type(value).__name__}: {str(exc)[:100]}"
    if not math.isfinite(number):
        return None, "non_finite", f"returned {number}"
    return number, None, ""


def to_score(value, primary: str = "overall") -> tuple[float | None, dict[str, float], tuple[str, ...], str | None, str]:
    """Turn a reward function's return value into (score, parts, bad_parts, reason, detail).

    float-like -> the score; dict -> its ``primary`` key ("overall"; "score" for verl) is the
    score and every other key is a named part: a finite number goes into ``parts``, None is
    left out (not reported), anything else is named in ``bad_parts`` (counted, not logged as a
    number); None -> reason "returned_none".
    """
    parts: dict[str, float] = {}
    bad: list[str] = []
    if isinstance(value, Mapping):
        for key, part in value.items():
            if key == primary or part is None:
                continue
            number = _as_float(part)[0]
            if number is None:
                bad.append(str(key))
            else:
                parts[str(key)] = number
        if primary not in value:
            keys = ", ".join(sorted(map(str, value)))[:100]
            return None, parts, tuple(bad), "non_numeric", f"returned a dict without {primary!r} (keys: {keys})"
        value = value[primary]
    if value is None:
        return None, parts, tuple(bad), "returned_none", ""
    score, reason, detail = _as_float(value)
    return score, parts, tuple(bad), reason, detail


# Metric names BatchScores.metrics uses itself: a part with one of these names is logged as part/<name>.
_RESERVED = {"count", "mean", "unscorable_frac", "none", "non_numeric", "part", "batch_fallbacks", "output_bytes", "output_dropped_bytes"}


@dataclass
class BatchScores:
    """Scores of one batch, in input order.

    scores: a float per sample, or None when it could not be scored.
    reasons: None for scored samples, else one of REASONS.
    parts: named parts from dict returns (e.g. "accuracy", "format"), a list per name aligned
        with ``scores`` (None where a sample did not report that part as a finite number).
    none_reasons: how many samples are None, by reason.
    details: the first few messages explaining None scores ("#3 exception: ZeroDivisionError: ...").
    non_numeric_parts: per part name, how many samples reported it as something other than a
        number (a string, a list, NaN, ...); None values are not counted.
    batch_fallbacks: chunks whose one batch call failed or timed out and were scored one sample
        at a time instead (batch reward functions only).
    output_bytes, output_dropped_bytes: what the workers printed (stdout and stderr) during the
        batch, and how much of it was over the cap and dropped (see reward/sandbox.py).
    """

    scores: list[float | None]
    reasons: list[str | None]
    parts: dict[str, list[float | None]] = field(default_factory=dict)
    none_reasons: Counter = field(default_factory=Counter)
    details: list[str] = field(default_factory=list)
    non_numeric_parts: Counter = field(default_factory=Counter)
    batch_fallbacks: int = 0
    output_bytes: int = 0
    output_dropped_bytes: int = 0

    @classmethod
    def concat(cls, batches: list[BatchScores]) -> BatchScores:
        """The scores of several batches as one, in order (a part missing from a batch is None there)."""
        names = sorted({name for b in batches for name in b.parts})
        return cls(
            scores=[s for b in batches for s in b.scores],
            reasons=[r for b in batches for r in b.reasons],
            parts={name: [v for b in batches for v in b.parts.get(name, [None] * len(b.scores))] for name in names},
            none_reasons=sum((b.none_reasons for b in batches), Counter()),
            details=[d for b in batches for d in b.details],
            non_numeric_parts=sum((b.non_numeric_parts for b in batches), Counter()),
            batch_fallbacks=sum(b.batch_fallbacks for b in batches),
            output_bytes=sum(b.output_bytes for b in batches),
            output_dropped_bytes=sum(b.output_dropped_bytes for b in batches),
        )

    @property
    def unscorable_fraction(self) -> float:
        return sum(self.none_reasons.values()) / len(self.scores) if self.scores else 0.0

    def metrics(self, prefix: str = "reward/") -> dict[str, float]:
        """Metrics for logging: ``mean`` (over scorable samples; absent when none is),
        ``count``, ``unscorable_frac``, ``none/<reason>`` for each reason seen, ``<name>`` for
        each part (its mean over the samples that report it as a number; ``part/<name>`` when
        the name is one of these metrics' own), ``non_numeric/<name>`` (samples whose part was
        not a number), and, when not zero, ``batch_fallbacks``, ``output_bytes`` and
        ``output_dropped_bytes``."""
        out: dict[str, float] = {f"{prefix}count": float(len(self.scores))}
        scored = [s for s in self.scores if s is not None]
        if scored:
            out[f"{prefix}mean"] = sum(scored) / len(scored)
        out[f"{prefix}unscorable_frac"] = self.unscorable_fraction
        for reason, count in sorted(self.none_reasons.items()):
            out[f"{prefix}none/{reason}"] = float(count)
        for name, values in sorted(self.parts.items()):
            present = [v for v in values if v is not None]
            if present:
                out[f"{prefix}{part_metric_name(name)}"] = sum(present) / len(present)
        for name, count in sorted(self.non_numeric_parts.items()):
            out[f"{prefix}non_numeric/{name}"] = float(count)
        for name in ("batch_fallbacks", "output_bytes", "output_dropped_bytes"):
            if getattr(self, name):
                out[f"{prefix}{name}"] = float(getattr(self, name))
        return out


def part_metric_name(name: str) -> str:
    """The metric name (after "reward/") of a part: its own name unless that is taken."""
    return f"part/{name}" if name.split("/")[0] in _RESERVED or name.startswith("none_") else name


def check_unscorable(batch: BatchScores, max_fraction: float, name: str) -> None:
    """Raise UnscorableError, naming the reward function, when more than ``max_fraction`` of
    the batch is None; the message gives the counts by reason and the first details."""
    if not 0.0 <= max_fraction <= 1.0:
        raise ValueError(f"max_fraction must be in [0, 1], got {max_fraction}")
    fraction = batch.unscorable_fraction
    if fraction > max_fraction:
        reasons = ", ".join(f"{r}={c}" for r, c in batch.none_reasons.most_common())
        details = "; ".join(batch.details[:3])
        raise UnscorableError(
            f"reward function {name!r} could not score {sum(batch.none_reasons.values())}/{len(batch.scores)} "
            f"samples ({fraction:.1%} > limit {max_fraction:.1%}); reasons: {reasons}"
            + (f"; first: {details}" if details else "")
        )
