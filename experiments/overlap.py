"""One-step off-policy GRPO (algorithm.overlap) against on-policy on the tiny task: same model,
data and seeds; does it learn as well, and how much of each step does it save?

    python experiments/overlap.py --sft outputs/demo/sft-1/hf --data outputs/demo/data-1 [--seeds 1 2] [--out outputs/overlap] [ovlt overrides ...]

Runs `ovlt grpo recipe=tiny` from the demo's first SFT model on the demo's first RL data, once
per (mode, seed), and prints per run the validation accuracy per validation step and the mean
step, generation, update and rollout-wait times (steps 2..N: step 1 of an overlapped run
generates its batch synchronously). Appends one JSON line to bench/results.jsonl.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.common import record, table  # noqa: E402


def mean_of(steps: list[dict], key: str) -> float:
    return statistics.mean(m.get(key, 0.0) for m in steps)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--sft", required=True, help="the SFT model to start from (an HF folder)")
    ap.add_argument("--data", required=True, help="a prepared data folder with rl.parquet and val.parquet")
    ap.add_argument("--seeds", nargs="+", type=int, default=[1, 2])
    ap.add_argument("--out", default="outputs/overlap")
    args, overrides = ap.parse_known_args()
    data, out = Path(args.data).resolve(), Path(args.out).resolve()
    rows = []
    for seed in args.seeds:
        for overlap in (False, True):
            run_dir = out / f"{'overlap' if overlap else 'on_policy'}-seed{seed}"
            cmd = [sys.executable, "-m", "ovlt.cli", "grpo", "recipe=tiny", f"model.path={Path(args.sft).resolve()}",
                   "data.prepare_recipe=''", f"data.train_files=[{data / 'rl.parquet'}]", f"data.val_files=[{data / 'val.parquet'}]",
                   f"algorithm.overlap={str(overlap).lower()}", f"trainer.seed={seed}", "trainer.save_every=0",
                   "trainer.loggers=[jsonl]", f"trainer.output_dir={run_dir}", *overrides]
            res = subprocess.run(cmd, capture_output=True, text=True)
            if res.returncode != 0:
                print((res.stdout + res.stderr)[-4000:])
                raise SystemExit(f"{run_dir.name}: exit {res.returncode}")
            metrics = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
            steps = [m for m in metrics if m["step"] > 1 and "timing/step_s" in m]
            val = {m["step"]: m["val/accuracy"] for m in metrics if "val/accuracy" in m}
            rows.append({"mode": "overlap" if overlap else "on-policy", "seed": seed,
                         "val_accuracy": " ".join(f"{s}:{a:.3f}" for s, a in sorted(val.items())),
                         "step_s": mean_of(steps, "timing/step_s"), "generate_s": mean_of(steps, "timing/generate_s"),
                         "update_s": mean_of(steps, "timing/update_s"), "wait_s": mean_of(steps, "timing/rollout_wait_s"),
                         "approx_kl": mean_of(steps, "actor/approx_kl")})
            print(rows[-1], flush=True)
    print(table(rows, ["mode", "seed", "val_accuracy", "step_s", "generate_s", "update_s", "wait_s", "approx_kl"]))
    record("overlap_tiny", config={"recipe": "tiny", "sft": args.sft, "data": args.data, "overrides": overrides,
                                   "command": " ".join(sys.argv)}, figures={"rows": rows}, n_gpu=0)


if __name__ == "__main__":
    main()
