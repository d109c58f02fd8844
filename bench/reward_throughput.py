"""Throughput of the built-in math reward on the worker pool.

Scores N short synthetic responses (default 10,000) with reward.fn=openvlthinker in a pool
of worker processes, prints a table and appends one JSON line to bench/results.jsonl.

    python bench/reward_throughput.py [--rows 10000] [--workers 2] [--timeout 10]

The responses mix what a policy writes early and late in training: right and wrong integers,
fractions against decimals, LaTeX, percentages, units, text and option-letter answers,
missing tags and empty summaries, so every grading path (exact, numeric, mathruler,
math-verify) is exercised. Pairs are nearly all distinct: this measures grading, not the
cache of repeated answers.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import platform
import random
import sys
import time
from importlib import metadata
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import reward  # noqa: E402


def _think(rng: random.Random) -> str:
    a, b = rng.randint(1, 50), rng.randint(1, 50)
    return f"<think>There are {a} red and {b} blue shapes, so I add them: {a} + {b} = {a + b}.</think>"


def synthetic_rows(n: int, seed: int = 0) -> tuple[list[str], list[str]]:
    """``n`` (response, ground truth) pairs drawn from a fixed mix of answer styles."""
    rng = random.Random(seed)
    responses, truths = [], []
    for _ in range(n):
        # a wide range keeps (answer, ground truth) pairs nearly unique, so the graders' cache
        # of repeated pairs (common within a GRPO group) does not flatter the number
        k = rng.randint(1, 9999)
        kind = rng.random()
        think = _think(rng)
        if kind < 0.30:  # right integer
            responses.append(f"{think} So the count is {k}. <answer>{k}</answer>")
            truths.append(str(k))
        elif kind < 0.55:  # wrong integer
            responses.append(f"{think} So the count is {k + 1}. <answer>{k + 1}</answer>")
            truths.append(str(k))
        elif kind < 0.65:  # fraction against decimal, no summary (penalised)
            responses.append(f"{think}<answer>\\frac{{{k}}}{{4}}</answer>")
            truths.append(str(k / 4))
        elif kind < 0.72:  # percent with units
            responses.append(f"{think} The share is {k}%. <answer>{k}\\%</answer>")
            truths.append(str(k / 100))
        elif kind < 0.78:  # length with a unit
            responses.append(f"{think} The side is {k} cm. <answer>{k} cm</answer>")
            truths.append(str(k))
        elif kind < 0.84:  # option letter
            letter = rng.choice("ABCD")
            responses.append(f"{think} The best option is ({letter}). <answer>({letter})</answer>")
            truths.append(rng.choice("ABCD"))
        elif kind < 0.90:  # text answer
            colour = rng.choice(["red", "blue", "green"])
            responses.append(f"{think} The largest is {colour}. <answer>{colour.title()}</answer>")
            truths.append(rng.choice(["red", "blue", "green"]))
        elif kind < 0.95:  # missing tag: the whole response is graded
            responses.append(f"{think} The answer is {k}.")
            truths.append(str(k))
        else:  # symbolic: needs mathruler / math-verify
            responses.append(f"{think} The circumference is <answer>{k}\\pi</answer>")
            truths.append(f"{k}*pi" if rng.random() < 0.5 else str(round(k * 3.14159265, 4)))
    return responses, truths


def _workers_cpu_seconds() -> float | None:
    """CPU seconds (user + system) used so far by this process's live child processes (the
    pool's workers), from /proc; None where /proc is missing. CPU time, unlike wall time,
    does not grow when other jobs share the cores."""
    ticks = os.sysconf("SC_CLK_TCK")
    total = 0.0
    for child in multiprocessing.active_children():
        try:
            fields = open(f"/proc/{child.pid}/stat").read().rsplit(")", 1)[1].split()
        except OSError:
            return None
        total += (int(fields[11]) + int(fields[12])) / ticks  # utime, stime
    return total


def _versions() -> dict[str, str]:
    out = {"python": platform.python_version()}
    for package in ("mathruler", "math-verify", "sympy", "latex2sympy2_extended"):
        try:
            out[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            out[package] = "absent"
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rows", type=int, default=10_000)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--timeout", type=float, default=10.0)
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results.jsonl")
    args = parser.parse_args(argv)

    responses, truths = synthetic_rows(args.rows)
    load_avg_before = os.getloadavg()[0]
    start = time.perf_counter()
    with reward.load("openvlthinker", timeout=args.timeout, num_workers=args.workers) as fn:
        load_s = time.perf_counter() - start
        workers_cpu_before, caller_cpu_before = _workers_cpu_seconds(), time.process_time()
        start = time.perf_counter()
        batch = fn.score_batch(responses, truths)
        seconds = time.perf_counter() - start
        workers_cpu_after, caller_cpu = _workers_cpu_seconds(), time.process_time() - caller_cpu_before
    workers_cpu = None if workers_cpu_before is None or workers_cpu_after is None else workers_cpu_after - workers_cpu_before
    rows_per_s = args.rows / seconds
    metrics = batch.metrics()

    print(
        f"{'rows':>8} {'seconds':>9} {'rows/s':>9} {'workers':>8} {'load s':>7} "
        f"{'worker cpu s':>12} {'caller cpu s':>12} {'loadavg':>8} {'mean':>6} {'unscorable':>10}"
    )
    print(
        f"{args.rows:>8} {seconds:>9.2f} {rows_per_s:>9.0f} {args.workers:>8} {load_s:>7.2f} "
        f"{workers_cpu if workers_cpu is not None else float('nan'):>12.2f} {caller_cpu:>12.2f} "
        f"{load_avg_before:>8.2f} {metrics.get('reward/mean', float('nan')):>6.3f} {sum(batch.none_reasons.values()):>10}"
    )
    record = {
        "bench": "reward_throughput",
        "device": "cpu",
        "n_cpu": os.cpu_count(),
        "versions": _versions(),
        "config": {"reward": "openvlthinker", "rows": args.rows, "workers": args.workers, "timeout": args.timeout},
        "seconds": round(seconds, 3),
        "rows_per_s": round(rows_per_s, 1),
        "load_seconds": round(load_s, 3),
        # CPU time of the scoring (workers, and the caller's dispatch loop): unlike "seconds",
        # it does not depend on other jobs sharing the cores
        "workers_cpu_seconds": None if workers_cpu is None else round(workers_cpu, 3),
        "caller_cpu_seconds": round(caller_cpu, 3),
        "loadavg_1min_before": round(load_avg_before, 2),
        "mean_reward": round(metrics.get("reward/mean", float("nan")), 4),
        "unscorable": dict(batch.none_reasons),
        "time": time.strftime("%Y-%m-%dT%H:%M:%S"),
    }
    with args.out.open("a", encoding="utf-8") as f:
        f.write(json.dumps(record) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
