"""The paper's SFT-data filter ablation on the embedded default: SFT the tiny model on the same
questions with (a) unfiltered correct responses, (b) responses under 500 words, (c) reflections
removed too, and compare validation accuracy (the paper, MathVista: 48.4 < 55.0 < 62.5).

    python experiments/filter_ablation.py --data outputs/tiny-data [sft overrides ...]

The three sets come from `ovlt prepare recipe=tiny` (prepare.filters.write_variants=true writes
ablation/sft_{unfiltered,length,noreflect}.parquet: same questions, same seed, only the filters
differ). Each SFT run uses recipes/tiny/sft.yaml plus the overrides; max_response_length is raised
so the unfiltered set's long responses are trained on, not skipped.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repo root: bench.common, ovlt_rl, ...
from bench.common import REPO, record, table  # noqa: E402  (records go to bench/results.jsonl)

VARIANTS = ["unfiltered", "length", "noreflect"]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", required=True, help="output folder of `ovlt prepare recipe=tiny`")
    ap.add_argument("--out", default="outputs/filter-ablation")
    ap.add_argument("overrides", nargs="*", help="extra `key=value` overrides for every SFT run")
    args = ap.parse_args()
    data = Path(args.data).resolve()
    if not (data / "ablation" / "sft_unfiltered.parquet").exists():
        subprocess.run([sys.executable, "-m", "ovlt.cli", "prepare", "recipe=tiny", f"prepare.output_dir={data}",
                        "prepare.filters.write_variants=true"], check=True, cwd=REPO)
    rows = []
    for v in VARIANTS:
        out = Path(args.out).resolve() / v
        cmd = [sys.executable, "-m", "ovlt.cli", "sft", "recipe=tiny", f"data.train_files=[{data}/ablation/sft_{v}.parquet]",
               f"data.val_files=[{data}/val.parquet]", "data.max_response_length=1024", "data.max_prompt_length=256",
               "data.max_val_samples=0", "data.prepare_recipe=''", f"trainer.output_dir={out}", *args.overrides]
        subprocess.run(cmd, check=True, cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)})
        metrics = [json.loads(l) for l in (out / "metrics.jsonl").read_text().splitlines()]
        last = [m for m in metrics if "val/accuracy" in m][-1]
        rows.append({"sft data": v, "val accuracy": last["val/accuracy"], "val response tokens": last["val/response_length"],
                     "steps": last["step"]})
    print(table(rows, ["sft data", "val accuracy", "val response tokens", "steps"]))
    record("filter_ablation", config={"data": str(data), "overrides": args.overrides},
           figures={r["sft data"]: r["val accuracy"] for r in rows} | {"rows": rows},
           baseline={"paper_mathvista": {"unfiltered": 48.4, "length": 55.0, "noreflect": 62.5}},
           n_gpu=int(any(o == "trainer.device=cuda" for o in args.overrides)))


if __name__ == "__main__":
    main()
