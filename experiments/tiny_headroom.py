"""What could GRPO gain on the tiny task? Greedy vs sampled accuracy of a model, per task family.

    python experiments/tiny_headroom.py --model outputs/demo/sft-1/hf --temperatures 1.0 0.7 0.4
    python experiments/tiny_headroom.py --model outputs/demo/sft-1/hf --data outputs/tiny-data/val.parquet --n 8 --max-new-tokens 96

A diagnostic for the GRPO stage, not a throughput benchmark. For each held-out prompt it decodes
once near-greedily (as validation does) and `--n` times at each sampling temperature, with the hf
engine, and grades every answer with the evaluation grader. Per family it prints:

- greedy: validation accuracy;
- sampled: mean accuracy of the samples (what GRPO's reward sees at that temperature);
- pass@n: some sample is right; majority@n: the most common answer is right;
- truncated: samples that hit the token limit (no answer: reward 0);
- mixed: prompts whose n samples are neither all right nor all wrong (the groups that carry a
  GRPO advantage; the rest give 0).

With `--templates` it also prints, per question template, the greedy answers against the ground
truths and how many greedy responses have no complete answer tag (a small model's greedy decoding
often gives one constant answer per template: what GRPO has to move).

If the samples are far worse than greedy (a weak model at temperature 1 derails over ~50 tokens),
GRPO's groups mostly teach the format, not the answer; a sampled accuracy near greedy with a high
pass@n is room for RL to sharpen. One JSON line per temperature goes to bench/results.jsonl.
"""

from __future__ import annotations

import argparse
import collections
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repo root: bench.common, ovlt_rl, ...
from bench.common import record, table  # noqa: E402  (records go to bench/results.jsonl)


def templates_table(prompts, greedy, extract_answer, grade) -> str:
    """Per template: greedy answers (most common first) vs ground truths, right count, and responses
    without a complete <answer>...</answer> (cut by the token limit or stopped early)."""
    by: dict[str, dict] = collections.defaultdict(lambda: {"pred": collections.Counter(), "gt": collections.Counter(),
                                                             "right": 0, "n": 0, "no_answer": 0})
    for p, g in zip(prompts, greedy):
        info = p["extra_info"] if isinstance(p["extra_info"], dict) else {}
        row = by[info.get("template", info.get("family", "?"))]
        text = g[0].text
        complete = "</answer>" in text
        row["pred"][extract_answer(text) if complete else "(none)"] += 1
        row["gt"][p["ground_truth"]] += 1
        row["right"] += grade(extract_answer(text), p["ground_truth"])
        row["n"] += 1
        row["no_answer"] += not complete
    rows = [{"template": t, "prompts": r["n"], "right": r["right"], "no answer": r["no_answer"],
             "greedy answers": dict(r["pred"].most_common(4)), "ground truths": dict(r["gt"].most_common(4))}
            for t, r in sorted(by.items())]
    return table(rows, list(rows[0]))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", required=True, help="HF folder of the model (e.g. outputs/demo/sft-1/hf) or 'tiny'")
    ap.add_argument("--data", default="outputs/tiny-data/val.parquet", help="prompts (our parquet schema)")
    ap.add_argument("--limit", type=int, default=200, help="prompts to use (0: all)")
    ap.add_argument("--n", type=int, default=8, help="samples per prompt at each temperature")
    ap.add_argument("--temperatures", type=float, nargs="+", default=[1.0, 0.7, 0.4])
    ap.add_argument("--max-new-tokens", type=int, default=64, help="the GRPO recipe's data.max_response_length")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--templates", action="store_true", help="also print greedy answers vs ground truths per template")
    ap.add_argument("--no-record", action="store_true")
    args = ap.parse_args()

    from ovlt.config import load_config
    from ovlt_rl.driver.datasets import open_datasets
    from ovlt_rl.engines.base import SamplingParams
    from ovlt_rl.engines.hf import HFEngine
    from ovlt_rl.models.loading import resolve_model_path
    from reward.grading import extract_answer, grade

    model = resolve_model_path(args.model)
    cfg = load_config("grpo", ["recipe=tiny", f"model.path={model}", f"data.val_files=[{args.data}]"])
    engine = HFEngine(model, device=args.device, fast_decode="off")
    _, ds = open_datasets(cfg, engine.processor, sft=False)
    n_prompts = len(ds) if not args.limit else min(args.limit, len(ds))
    prompts = [ds[i] for i in range(n_prompts)]

    def generate(params: SamplingParams):
        out = []
        for s in range(0, len(prompts), 64):
            out += engine.generate(prompts[s : s + 64], params)
        return out

    t0 = time.perf_counter()
    greedy = generate(SamplingParams(n=1, temperature=0.01, top_k=1, max_new_tokens=args.max_new_tokens, seed=1))
    greedy_ok = [grade(extract_answer(g[0].text), p["ground_truth"]) for p, g in zip(prompts, greedy)]
    if args.templates:
        print(templates_table(prompts, greedy, extract_answer, grade))
    rows = []
    for temp in args.temperatures:
        sampled = generate(SamplingParams(n=args.n, temperature=temp, max_new_tokens=args.max_new_tokens, seed=2))
        stats: dict[str, collections.Counter] = collections.defaultdict(collections.Counter)
        for p, g_ok, group in zip(prompts, greedy_ok, sampled):
            answers = [extract_answer(x.text) for x in group]
            ok = [grade(a, p["ground_truth"]) for a in answers]
            top = collections.Counter(a for a in answers if a).most_common(1)
            family = p["extra_info"].get("family", "?") if isinstance(p["extra_info"], dict) else "?"
            for key in (family, "all"):
                c = stats[key]
                c["prompts"] += 1
                c["greedy"] += g_ok
                c["sampled"] += sum(ok) / len(ok)
                c["pass"] += any(ok)
                c["majority"] += bool(top) and grade(top[0][0], p["ground_truth"])
                c["truncated"] += sum(x.finish_reason == "length" for x in group) / len(group)
                c["mixed"] += 0 < sum(ok) < len(ok)
        for family, c in sorted(stats.items(), key=lambda kv: (kv[0] == "all", kv[0])):
            k = c["prompts"]
            rows.append({"T": temp, "family": family, "prompts": k, "greedy": c["greedy"] / k, "sampled": c["sampled"] / k,
                         f"pass@{args.n}": c["pass"] / k, f"majority@{args.n}": c["majority"] / k,
                         "truncated": c["truncated"] / k, "mixed": c["mixed"] / k})
        if not args.no_record:
            figures = {r["family"]: {key: r[key] for key in r if key not in ("T", "family")} for r in rows if r["T"] == temp}
            record("tiny_headroom", config={"model": args.model, "data": args.data, "n": args.n, "temperature": temp,
                                            "max_new_tokens": args.max_new_tokens, "prompts": n_prompts}, figures=figures)
    print(table(rows, list(rows[0])))
    print(f"({time.perf_counter() - t0:.0f} s)")


if __name__ == "__main__":
    main()
