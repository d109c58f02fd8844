"""The cycle report: accuracy per stage and GRPO training curves, as markdown + PNG plots.

    python -m ovlt_rl.report outputs/cycle            # writes outputs/cycle/report.md (+ PNGs)
    python -m ovlt_rl.report --run outputs/run        # one run's metrics.jsonl -> metrics.png

Inputs, written by the cycle (ovlt/cycle.py) and the trainers (ovlt_rl/tracking.py):

- `cycle_dir/cycle_report.json`: {"base_val_accuracy": x, "stages": [{"name": "sft-1",
  "kind": "sft", "iteration": 1, "val_accuracy": ..., "output_dir": "..."}, ...]}; a relative
  output_dir is taken relative to cycle_dir.
- each stage's `output_dir/metrics.jsonl`: one JSON object per step with "step" and metrics such
  as "reward/mean", "val/accuracy" (validation steps only) and "response_length/mean".

Outputs in cycle_dir: `report.md`, `accuracy_per_stage.png` (the paper's Figure 4: base model
first, then each stage) and, per GRPO stage, `<name>_curves.png` (reward, validation accuracy and
response length per step: Figures 5-6).
"""

from __future__ import annotations

import json
import logging
import math
import os
import sys
from pathlib import Path
from typing import Any, Sequence

log = logging.getLogger(__name__)

# The curves of a GRPO stage (Figures 5-6), in panel order: metric key, panel title.
GRPO_CURVES = (
    ("reward/mean", "reward (mean)"),
    ("val/accuracy", "validation accuracy"),
    ("response_length/mean", "response length (tokens)"),
)
# What plot_run draws when it finds them (sft runs log losses, grpo runs the curves above).
RUN_KEYS = (
    "reward/mean", "val/accuracy", "response_length/mean", "sft/loss", "actor/pg_loss", "actor/kl_loss",
    "actor/entropy", "actor/grad_norm", "sft/grad_norm", "throughput/tokens_per_s", "sft/lr", "actor/lr",
)


class ReportError(ValueError):
    """An input file of the report that can't be used; the message names the file (and line)."""


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")  # files only, never a display
    import matplotlib.pyplot as plt

    return plt


def read_metrics(path: str | os.PathLike) -> list[dict[str, Any]]:
    """The rows of a metrics.jsonl, in file order; ReportError naming the line for a bad row."""
    rows = []
    p = Path(path)
    with open(p, encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                raise ReportError(f"{p} line {lineno}: not JSON ({e.msg})") from None
            if not isinstance(row, dict) or not isinstance(row.get("step"), int):
                raise ReportError(f"{p} line {lineno}: expected an object with an integer 'step'")
            rows.append(row)
    return rows


def series(rows: Sequence[dict[str, Any]], key: str) -> tuple[list[int], list[float]]:
    """(steps, values) of `key` over the rows that have a finite number for it."""
    steps, values = [], []
    for r in rows:
        v = r.get(key)
        if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v):
            steps.append(r["step"])
            values.append(float(v))
    return steps, values


def _plot_panels(rows: Sequence[dict[str, Any]], panels: Sequence[tuple[str, str]], title: str, out: Path) -> Path:
    plt = _pyplot()
    fig, axes = plt.subplots(1, len(panels), figsize=(4.2 * len(panels), 3.4), squeeze=False)
    for ax, (key, label) in zip(axes[0], panels):
        steps, values = series(rows, key)
        if steps:
            ax.plot(steps, values, marker="o" if len(steps) <= 30 else None, markersize=3, linewidth=1.5)
        else:
            ax.text(0.5, 0.5, f"no {key}", ha="center", va="center", transform=ax.transAxes, color="gray")
        ax.set_title(label)
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
    fig.suptitle(title)
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out


def plot_run(run_dir: str | os.PathLike, out: str | os.PathLike | None = None, keys: Sequence[str] | None = None) -> Path:
    """Plot one sft/grpo run's metrics.jsonl into a PNG (default run_dir/metrics.png).

    `keys` defaults to those of RUN_KEYS the file has (up to 6 panels).
    """
    run_dir = Path(run_dir)
    path = run_dir / "metrics.jsonl"
    if not path.is_file():
        raise ReportError(f"{path}: no such file (is {run_dir} a run's output_dir?)")
    rows = read_metrics(path)
    if not rows:
        raise ReportError(f"{path}: no metrics rows")
    if keys is None:
        keys = [k for k in RUN_KEYS if series(rows, k)[0]][:6]
        if not keys:
            raise ReportError(f"{path}: none of the known metrics ({', '.join(RUN_KEYS)}) is logged")
    return _plot_panels(rows, [(k, k) for k in keys], run_dir.name, Path(out) if out else run_dir / "metrics.png")


def plot_stage_accuracy(labels: Sequence[str], values: Sequence[float | None], out: Path) -> Path:
    """Bars of validation accuracy per stage (base first), with a line through them (Figure 4)."""
    plt = _pyplot()
    xs = list(range(len(labels)))
    fig, ax = plt.subplots(figsize=(max(4.5, 1.1 * len(labels) + 1.5), 3.6))
    colors = ["#9e9e9e" if lab == "base" else "#4c72b0" if lab.startswith("sft") else "#dd8452" for lab in labels]
    heights = [100 * v if v is not None else 0.0 for v in values]
    ax.bar(xs, heights, color=colors, width=0.6)
    known = [(x, h) for x, h, v in zip(xs, heights, values) if v is not None]
    if known:
        ax.plot([x for x, _ in known], [h for _, h in known], color="black", linewidth=1, marker="o", markersize=3)
    for x, h, v in zip(xs, heights, values):
        ax.annotate("n/a" if v is None else f"{h:.1f}", (x, h), ha="center", va="bottom", fontsize=8, xytext=(0, 2), textcoords="offset points")
    ax.set_xticks(xs)
    ax.set_xticklabels(labels, rotation=0)
    ax.set_ylabel("validation accuracy (%)")
    ax.set_ylim(0, max(100.0, max(heights, default=0) * 1.1))
    ax.set_title("Accuracy per stage")
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out


def _read_cycle(cycle_dir: Path) -> dict[str, Any]:
    path = cycle_dir / "cycle_report.json"
    if not path.is_file():
        raise ReportError(f"{path}: no such file")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise ReportError(f"{path}: not JSON ({e.msg} at line {e.lineno})") from None
    if not isinstance(data, dict) or not isinstance(data.get("stages"), list):
        raise ReportError(f"{path}: expected an object with a 'stages' list")
    for i, st in enumerate(data["stages"]):
        missing = [k for k in ("name", "kind", "output_dir") if not isinstance(st, dict) or k not in st]
        if missing:
            raise ReportError(f"{path}: stage {i} lacks {missing}")
    return data


def _pct(v: float | None) -> str:
    return "n/a" if v is None else f"{100 * v:.1f}"


def write_report(cycle_dir: str | os.PathLike) -> Path:
    """Write cycle_dir/report.md (+ PNGs) from cycle_report.json and the GRPO stages' metrics; returns its path."""
    cycle_dir = Path(cycle_dir)
    data = _read_cycle(cycle_dir)
    stages = data["stages"]
    base = data.get("base_val_accuracy")

    labels = ["base"] + [st["name"] for st in stages]
    values = [base] + [st.get("val_accuracy") for st in stages]
    plot_stage_accuracy(labels, values, cycle_dir / "accuracy_per_stage.png")

    lines = [
        "# Cycle report",
        "",
        f"Cycle folder: `{cycle_dir}`. Validation accuracy after each stage (SFT-Iter(i) starts from the base model, "
        "GRPO-Iter(i) from SFT-Iter(i)).",
        "",
        "| stage | kind | iteration | val accuracy (%) | change vs previous (points) | output |",
        "|---|---|---|---|---|---|",
        f"| base | base | 0 | {_pct(base)} |  |  |",
    ]
    prev = base
    for st in stages:
        acc = st.get("val_accuracy")
        delta = "" if acc is None or prev is None else f"{100 * (acc - prev):+.1f}"
        lines.append(f"| {st['name']} | {st['kind']} | {st.get('iteration', '')} | {_pct(acc)} | {delta} | `{st['output_dir']}` |")
        prev = acc if acc is not None else prev
    lines += ["", "![accuracy per stage](accuracy_per_stage.png)", ""]

    grpo = [st for st in stages if st["kind"] == "grpo"]
    if grpo:
        lines += ["## GRPO training curves", ""]
    for st in grpo:
        out_dir = Path(st["output_dir"])
        out_dir = out_dir if out_dir.is_absolute() else cycle_dir / out_dir
        metrics = out_dir / "metrics.jsonl"
        lines.append(f"### {st['name']}")
        lines.append("")
        if not metrics.is_file():
            log.warning("report: %s has no %s; its curves are left out", st["name"], metrics)
            lines += [f"No `{metrics}`: curves not drawn.", ""]
            continue
        rows = read_metrics(metrics)
        png = _plot_panels(rows, GRPO_CURVES, st["name"], cycle_dir / f"{st['name']}_curves.png")
        facts = []
        for key, label in GRPO_CURVES:
            steps, vals = series(rows, key)
            if steps:
                facts.append(f"{label}: {vals[0]:.3g} at step {steps[0]} -> {vals[-1]:.3g} at step {steps[-1]}")
        lines += [f"{len(rows)} logged steps. " + "; ".join(facts) + ".", "", f"![{st['name']} curves]({png.name})", ""]

    report = cycle_dir / "report.md"
    tmp = cycle_dir / f".report.md.tmp-{os.getpid()}"
    tmp.write_text("\n".join(lines), encoding="utf-8")
    os.replace(tmp, report)
    return report


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if len(argv) == 2 and argv[0] == "--run":
        print(plot_run(argv[1]))
        return 0
    if len(argv) != 1 or argv[0].startswith("-"):
        print(__doc__)
        return 2
    print(write_report(argv[0]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
