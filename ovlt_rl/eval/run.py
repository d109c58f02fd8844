"""`ovlt eval`: score a model (or a file of existing responses) on benchmarks.

    # generate with a model (decoding of the paper's Table 6 by default: greedy-like)
    ovlt eval benchmark=mathvista data=/data/MathVista model=outputs/iter3_grpo/hf
    ovlt eval model=outputs/iter3_grpo/hf eval.benchmarks=[mathvista,mathverse,mathvision] \\
        eval.data_paths=[mathvista=/data/MathVista,mathverse=/data/MathVerse,mathvision=/data/MathVision]
    # offline: score responses made elsewhere (JSONL rows {"id": ..., "response": ...}), no model
    ovlt eval benchmark=mathvista data=/data/MathVista responses=mathvista_responses.jsonl

Writes, per benchmark, `eval.output_dir/<benchmark>/samples.jsonl` (one record per question:
id, prompt, response, extracted answer, prediction, ground truth, correct, correct_original,
category fields) and `summary.json` (accuracy overall and per category), and prints a table.

The same functions serve GRPO validation and the cycle, so a model is graded one way everywhere:

    records = evaluate_samples(engine, samples, params, batch_size)   # generate + grade
    records = score_responses(samples, responses)                      # grade given texts
    summary = summarize(records, category_keys)
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
from collections import defaultdict
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

from ovlt_rl.data.schema import make_row
from ovlt_rl.engines.base import SamplingParams
from ovlt_rl.eval.benchmarks import BENCHMARKS, EvalSample, load_benchmark
from ovlt_rl.eval.grading import grade_response

if TYPE_CHECKING:
    from ovlt_rl.config import Config
    from ovlt_rl.eval.config import EvalConfig

log = logging.getLogger(__name__)

# Keys of every record; category fields are added beside them (question_type is both: the
# record's normalised "multi_choice"/"free_form"), and no other category key may collide.
RECORD_KEYS = (
    "id", "benchmark", "prompt", "response", "extracted", "extracted_from", "prediction",
    "ground_truth", "correct", "correct_original", "question_type", "finish_reason", "skipped",
)


class ResponsesError(ValueError):
    """A responses JSONL that can't be used; the message names the file and line."""


# ------------------------------------------------------------------------------------------
# Scoring (shared with GRPO validation and the cycle).


def _record(sample: EvalSample, response: str, finish_reason: str | None) -> dict[str, Any]:
    rec: dict[str, Any] = {"id": sample.id, "benchmark": sample.benchmark, "prompt": sample.question, "response": response}
    rec.update(grade_response(sample, response))
    rec["question_type"] = sample.question_type
    rec["finish_reason"] = finish_reason
    for key, value in sample.categories.items():
        if key != "question_type":
            rec[key] = value
    return rec


def score_responses(samples: Sequence[EvalSample], responses: Sequence[str]) -> list[dict[str, Any]]:
    """Grade `responses[i]` as the answer to `samples[i]`; one record per sample."""
    if len(samples) != len(responses):
        raise ValueError(f"score_responses: {len(samples)} samples but {len(responses)} responses")
    return [_record(s, r, None) for s, r in zip(samples, responses)]


def to_prompt_items(
    samples: Sequence[EvalSample],
    processor: Any,
    *,
    max_prompt_length: int,
    min_pixels: int | None = None,
    max_pixels: int | None = None,
    prompt_suffix: str = "",
) -> list[dict[str, Any] | str]:
    """The glue to the rollout engines: EvalSamples -> schema rows -> `PromptDataset` items.

    Going through `ovlt_rl.data` gives evaluation prompts exactly the chat template, image resizing,
    prompt suffix (on its own line after the question) and length checks of training. Returns one
    entry per sample, in order: the item, or the dataset's skip reason (a string) for a sample it
    refused (e.g. "prompt_too_long"); the dataset logs each refused row.
    """
    from ovlt_rl.data.dataset import PromptDataset
    from ovlt_rl.data.schema import write_rows

    rows = [
        make_row(data_source=s.benchmark, question=s.question, ground_truth=s.ground_truth, images=s.images, extra_info={"eval_index": i})
        for i, s in enumerate(samples)
    ]
    with tempfile.TemporaryDirectory(prefix="ovlt-eval-") as tmp:
        path = write_rows(rows, Path(tmp) / "eval.parquet")
        # Every refusal is reported per sample below, so no fraction of them is fatal here.
        ds = PromptDataset(
            path, processor, min_pixels=min_pixels, max_pixels=max_pixels, max_prompt_length=max_prompt_length,
            prompt_suffix=prompt_suffix or None, max_bad_fraction=1.0,
        )
        items = [ds[i] for i in range(len(ds))]  # images are decoded here, while the file exists
    out: list[dict[str, Any] | str] = ["skipped"] * len(samples)
    for item in items:
        out[item["extra_info"]["eval_index"]] = item
    if sum(ds.skipped.values()):
        reasons = ", ".join(f"{k}: {v}" for k, v in sorted(ds.skipped.items()))
        log.warning("%d of %d questions can't be prompted (%s); they count as wrong", sum(ds.skipped.values()), len(samples), reasons)
        if len(ds.skipped) == 1:  # one reason: name it on each skipped sample
            reason = next(iter(ds.skipped))
            out = [reason if o == "skipped" else o for o in out]
    return out


def evaluate_samples(
    engine: Any,
    samples: Sequence[EvalSample],
    params: SamplingParams,
    batch_size: int,
    *,
    processor: Any = None,
    data_cfg: Any = None,
    prompt_suffix: str = "",
    progress: bool = True,
) -> list[dict[str, Any]]:
    """Generate one response per sample with `engine` (in batches of `batch_size`) and grade it.

    `engine` may be a list of engines (EnginePool.engines, ovlt_rl/workers/engine_pool.py): the
    batches are then spread over them, one thread each, and the records come back in sample
    order; every batch is generated with the same `params`, so any number of engines gives the
    same records. `processor` (default: the engine's) and `data_cfg` (a DataConfig: pixel
    bounds, which must lie within the processor's, and prompt length; default: the processor's
    bounds and the tree's default length) build the prompts as training does. A sample the data
    layer refuses (prompt too long, bad image) gets a record with an empty response, `skipped`
    set to the reason and correct=False: it stays in the denominator. Records carry the engine's
    `finish_reason` ("length": cut at max_new_tokens).
    """
    from tqdm import tqdm

    from ovlt_rl.workers.engine_pool import run_concurrently

    engines = list(engine) if isinstance(engine, (list, tuple)) else [engine]
    if params.n != 1:
        raise ValueError(f"evaluate_samples grades one response per question; got SamplingParams.n={params.n}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if data_cfg is None:
        from ovlt_rl.config import DataConfig

        # The processor's own pixel bounds; the tree's default prompt limit.
        bounds: dict[str, Any] = {"max_prompt_length": DataConfig().max_prompt_length}
    else:
        bounds = {"max_prompt_length": data_cfg.max_prompt_length, "min_pixels": data_cfg.min_pixels, "max_pixels": data_cfg.max_pixels}
    items = to_prompt_items(samples, processor if processor is not None else engines[0].processor, prompt_suffix=prompt_suffix, **bounds)
    records: list[dict[str, Any] | None] = [None] * len(samples)
    for i, (s, item) in enumerate(zip(samples, items)):
        if isinstance(item, str):
            records[i] = {**_record(s, "", None), "skipped": item}
    todo = [i for i, item in enumerate(items) if not isinstance(item, str)]
    batches = [todo[start : start + batch_size] for start in range(0, len(todo), batch_size)]
    name = samples[0].benchmark if samples else ""
    with tqdm(total=len(todo), desc=f"eval {name}", unit="q", disable=not progress) as bar:
        done = {"n": 0, "correct": 0}

        def graded(k: int, groups: list) -> None:  # run_concurrently calls it under its lock
            for i, group in zip(batches[k], groups):
                records[i] = _record(samples[i], group[0].text, group[0].finish_reason)
                done["correct"] += records[i]["correct"]
            done["n"] += len(batches[k])
            bar.update(len(batches[k]))
            bar.set_postfix(acc=f"{done['correct'] / done['n']:.3f}")

        def generate_on(e: Any):
            return lambda idx: e.generate([items[i] for i in idx], params)

        run_concurrently([generate_on(e) for e in engines], batches, graded)
    return records  # type: ignore[return-value]  (every slot is filled above)


def _rate(correct: int, n: int) -> float | None:
    return correct / n if n else None


def summarize(records: Sequence[dict[str, Any]], category_keys: Sequence[str]) -> dict[str, Any]:
    """Accuracy overall and per value of each category key.

    A list-valued field (MathVista's skills) counts the record toward each of its items; records
    whose field is None or absent are left out of that key's breakdown.
    """
    n = len(records)
    correct = sum(bool(r["correct"]) for r in records)
    original = sum(bool(r.get("correct_original")) for r in records)
    sources: dict[str, int] = defaultdict(int)
    for r in records:
        sources[r.get("extracted_from") or "unknown"] += 1
    by: dict[str, dict[str, dict[str, Any]]] = {}
    for key in category_keys:
        groups: dict[str, list[int]] = defaultdict(lambda: [0, 0])
        for r in records:
            value = r.get(key)
            values = value if isinstance(value, list) else [value]
            for v in values:
                if v is None or v == "":
                    continue
                g = groups[str(v)]
                g[0] += 1
                g[1] += bool(r["correct"])
        by[key] = {v: {"n": c[0], "correct": c[1], "accuracy": _rate(c[1], c[0])} for v, c in sorted(groups.items())}
    return {
        "n": n,
        "correct": correct,
        "accuracy": _rate(correct, n),
        "accuracy_original": _rate(original, n),
        "extracted_from": dict(sorted(sources.items())),
        "truncated": sum(r.get("finish_reason") == "length" for r in records),
        "skipped": sum(bool(r.get("skipped")) for r in records),
        "by": by,
    }


# ------------------------------------------------------------------------------------------
# Offline responses.


def read_responses(path: str | os.PathLike, benchmark: str) -> dict[str, str]:
    """id -> response from a JSONL file of {"id", "response"[, "benchmark"]} rows.

    Rows naming another benchmark are ignored (one file can hold several benchmarks' responses).
    Raises ResponsesError naming the line for a row that isn't a JSON object with a string or
    integer "id" and a string "response", and for an id given twice.
    """
    out: dict[str, str] = {}
    p = Path(path)
    if not p.is_file():
        raise ResponsesError(f"{p}: no such file")
    with open(p, encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            where = f"{p} line {lineno}"
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                raise ResponsesError(f"{where}: not JSON ({e.msg})") from None
            if not isinstance(row, dict):
                raise ResponsesError(f"{where}: expected a JSON object, got {type(row).__name__}")
            if "benchmark" in row and row["benchmark"] != benchmark:
                continue
            sid, response = row.get("id"), row.get("response")
            if isinstance(sid, bool) or not isinstance(sid, (str, int)):
                raise ResponsesError(f"{where}: 'id' must be a string or integer, got {sid!r}")
            if not isinstance(response, str):
                raise ResponsesError(f"{where}: 'response' must be a string, got {type(response).__name__}")
            if str(sid) in out:
                raise ResponsesError(f"{where}: id {sid!r} appears twice")
            out[str(sid)] = response
    return out


def score_offline(samples: Sequence[EvalSample], responses: dict[str, str], *, all_samples: bool) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Grade the samples that have a response; returns (records, coverage).

    coverage: n_missing/missing_ids (samples without a response: not scored, and the accuracy is
    over the scored ones only) and n_unknown/unknown_ids (responses whose id is not a sample;
    only checked when `all_samples`, i.e. no max_samples cut).
    """
    have = [s for s in samples if s.id in responses]
    missing = [s.id for s in samples if s.id not in responses]
    known = {s.id for s in samples}
    unknown = sorted(i for i in responses if i not in known) if all_samples else []
    if not have:
        raise ResponsesError(f"none of the {len(samples)} {samples[0].benchmark} sample ids has a response (first ids: {[s.id for s in samples[:3]]})")
    records = score_responses(have, [responses[s.id] for s in have])
    coverage = {"n_missing": len(missing), "missing_ids": missing, "n_unknown": len(unknown), "unknown_ids": unknown}
    if missing:
        log.warning("%s: %d of %d samples have no response and are not scored (first: %s)", samples[0].benchmark, len(missing), len(samples), missing[:10])
    if unknown:
        log.warning("%s: %d responses have ids that are not samples of this benchmark (first: %s)", samples[0].benchmark, len(unknown), unknown[:10])
    return records, coverage


# ------------------------------------------------------------------------------------------
# The command.


def data_paths(ecfg: "EvalConfig") -> dict[str, str]:
    """eval.data_paths (NAME=PATH items) as a dict; ConfigError for a malformed or unknown item."""
    from ovlt_rl.config import ConfigError

    out: dict[str, str] = {}
    for item in ecfg.data_paths:
        name, sep, path = item.partition("=")
        if not sep or not name or not path:
            raise ConfigError(f"eval.data_paths: item {item!r} is not NAME=PATH")
        if name not in BENCHMARKS:
            raise ConfigError(f"eval.data_paths: unknown benchmark {name!r} (known: {', '.join(BENCHMARKS)})")
        out[name] = path
    return out


def data_path(ecfg: "EvalConfig", name: str) -> str:
    """The local copy of benchmark `name`: its eval.data_paths item, else eval.data."""
    from ovlt_rl.config import ConfigError

    paths = data_paths(ecfg)
    if name in paths:
        return paths[name]
    if not ecfg.data:
        raise ConfigError(f"eval.data: no local copy of benchmark {name!r} given (set eval.data=PATH or eval.data_paths=[{name}=PATH])")
    unmapped = [b for b in ecfg.benchmarks if b not in paths]
    if len(unmapped) > 1:
        raise ConfigError(f"eval.data: one path for several benchmarks {unmapped}; give each its own with eval.data_paths=[NAME=PATH,...]")
    return ecfg.data


def sampling_params(ecfg: "EvalConfig", seed: int | None = None) -> SamplingParams:
    return SamplingParams(
        n=1,
        temperature=ecfg.temperature,
        top_p=ecfg.top_p,
        top_k=ecfg.top_k,
        max_new_tokens=ecfg.max_new_tokens,
        repetition_penalty=ecfg.repetition_penalty,
        seed=seed,
        logprobs=False,
    )


def _write_json_atomic(path: Path, obj: Any) -> None:
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text(json.dumps(obj, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    os.replace(tmp, path)


def write_results(out_dir: Path, records: Sequence[dict[str, Any]], summary: dict[str, Any]) -> None:
    """samples.jsonl and summary.json into out_dir (each written to a temp file, then renamed)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    tmp = out_dir / f".samples.jsonl.tmp-{os.getpid()}"
    with open(tmp, "w", encoding="utf-8") as f:
        for r in records:
            f.write(json.dumps(r, ensure_ascii=False, default=str) + "\n")
    os.replace(tmp, out_dir / "samples.jsonl")
    _write_json_atomic(out_dir / "summary.json", summary)


def format_table(summaries: dict[str, dict[str, Any]]) -> str:
    """A plain-text table: one line per benchmark, then each benchmark's per-category accuracy."""
    def pct(x: float | None) -> str:
        return "   n/a" if x is None else f"{100 * x:6.2f}"

    lines = [f"{'benchmark':<18}{'n':>7}{'acc %':>8}{'orig %':>8}{'missing':>9}{'truncated':>11}"]
    for name, s in summaries.items():
        lines.append(f"{name:<18}{s['n']:>7}{pct(s['accuracy']):>8}{pct(s['accuracy_original']):>8}{s.get('n_missing', 0):>9}{s['truncated']:>11}")
    for name, s in summaries.items():
        for key, groups in s["by"].items():
            if not groups:
                continue
            lines.append(f"\n{name} by {key}:")
            for value, g in groups.items():
                lines.append(f"  {value[:40]:<42}{g['n']:>6}{pct(g['accuracy']):>8}")
    return "\n".join(lines)


def _device(cfg: "Config") -> str:
    import torch

    if cfg.trainer.device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return cfg.trainer.device


def run_eval(cfg: "Config") -> dict[str, dict[str, Any]]:
    """Run every benchmark of cfg.eval.benchmarks; returns benchmark -> summary (also written to disk)."""
    from ovlt_rl.workers.engine_pool import EnginePool

    ecfg = cfg.eval
    if not ecfg.responses:  # before any benchmark is read or engine started
        from ovlt_rl.models.paths import check_model_path

        check_model_path(cfg.model.path, "model.path")
    out_root = Path(ecfg.output_dir)
    summaries: dict[str, dict[str, Any]] = {}
    pool = processor = None
    try:
        for name in ecfg.benchmarks:
            samples = load_benchmark(name, data_path(ecfg, name), ecfg.max_samples)
            if ecfg.responses:
                responses = read_responses(ecfg.responses, name)
                records, coverage = score_offline(samples, responses, all_samples=ecfg.max_samples == 0)
            else:
                if pool is None:
                    from ovlt_rl.models.loading import load_processor, resolve_model_path

                    model_path = resolve_model_path(cfg.model.path)
                    pool = EnginePool(cfg, model_path, ecfg.num_engines, _device(cfg), what="eval")
                    # Prompts are built as in training: the processor bounded by data.min/max_pixels.
                    processor = load_processor(model_path, min_pixels=cfg.data.min_pixels, max_pixels=cfg.data.max_pixels)
                params = sampling_params(ecfg, seed=cfg.rollout.seed)
                records = evaluate_samples(
                    pool.engines, samples, params, ecfg.batch_size, processor=processor, data_cfg=cfg.data, prompt_suffix=ecfg.prompt_suffix
                )
                coverage = {"n_missing": 0, "missing_ids": [], "n_unknown": 0, "unknown_ids": []}
            summary = summarize(records, BENCHMARKS[name].category_keys)
            summary.update(
                benchmark=name,
                n_samples=len(samples),
                **coverage,
                data=str(data_path(ecfg, name)),
                model=None if ecfg.responses else cfg.model.path,
                responses=ecfg.responses or None,
                decoding=None if ecfg.responses else vars(sampling_params(ecfg, seed=cfg.rollout.seed)),
            )
            write_results(out_root / name, records, summary)
            summaries[name] = summary
            log.info("%s: accuracy %s over %d scored samples -> %s", name, summary["accuracy"], summary["n"], out_root / name)
    finally:
        if pool is not None:  # stops the engine actors (eval.num_engines > 1) and frees their GPUs
            pool.close()
    print(format_table(summaries))
    return summaries
