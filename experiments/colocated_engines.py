"""The tiny GRPO recipe on one GPU, policy and rollout colocated, with each rollout engine: does the
vLLM engine (sleeping during the policy's phases, weights by CUDA IPC) learn as the hf engine does?

    python experiments/colocated_engines.py [--out outputs/colocated] [--engines hf vllm] [ovlt overrides ...]

Runs `ovlt grpo recipe=tiny model.path=tiny-pretrained` once per engine with
actor.gpus_per_worker=0.5 rollout.gpus_per_worker=0.5 trainer.device=cuda (same seeds and data),
then prints each run's validation accuracy per validation step, its mean step time (steps 2..N) and
its weight-sync mode and time, and appends one JSON line to bench/results.jsonl.
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


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", default="outputs/colocated")
    ap.add_argument("--engines", nargs="+", default=["hf", "vllm"])
    args, overrides = ap.parse_known_args()
    out = Path(args.out).resolve()
    data = out / "data"
    rows = []
    for engine in args.engines:
        run_dir = out / engine
        cmd = [sys.executable, "-m", "ovlt.cli", "grpo", "recipe=tiny", "model.path=tiny-pretrained",
               f"rollout.engine={engine}", "trainer.device=cuda", "actor.gpus_per_worker=0.5", "rollout.gpus_per_worker=0.5",
               "rollout.gpu_memory_utilization=0.3", f"data.prepare_dir={data}", f"data.train_files=[{data / 'rl.parquet'}]",
               f"data.val_files=[{data / 'val.parquet'}]", f"trainer.output_dir={run_dir}", "trainer.loggers=[jsonl]", *overrides]
        res = subprocess.run(cmd, capture_output=True, text=True)
        log = res.stdout + res.stderr
        if res.returncode != 0:
            print(log[-4000:])
            raise SystemExit(f"{engine}: exit {res.returncode}")
        metrics = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
        steps = [m for m in metrics if m["step"] > 0 and "timing/step_s" in m]
        val = {m["step"]: m["val/accuracy"] for m in metrics if "val/accuracy" in m}
        mode = next((line.split("weight sync: ")[1].split()[0] for line in log.splitlines() if "weight sync: " in line), "?")
        rows.append({"engine": engine, "sync": mode, "val_accuracy": " ".join(f"{s}:{a:.3f}" for s, a in sorted(val.items())),
                     "step_s": statistics.mean(m["timing/step_s"] for m in steps[1:]),
                     "sync_s": statistics.mean(m["timing/sync_s"] for m in steps[1:]),
                     "logprob_mae": max(m.get("sync/logprob_mae", 0.0) for m in steps)})
        print(rows[-1], flush=True)
    print(table(rows, ["engine", "sync", "val_accuracy", "step_s", "sync_s", "logprob_mae"]))
    record("colocated_engines", config={"recipe": "tiny", "overrides": overrides, "command": " ".join(sys.argv)},
           figures={"rows": rows}, n_gpu=1)


if __name__ == "__main__":
    main()
