"""`ovlt prepare recipe=...`: question pool -> SFT candidates -> filters -> mixes -> parquet sets.

    pool        the synthetic task (made if missing) and/or source adapters; contamination check
                against the evaluation sets; optional validation hold-out
    candidates  mode=distill: captioner -> text reasoner, k per question (iteration 1)
                mode=self_improve: the previous GRPO model, k per question (iteration i+1)
                generated in shards under shards/, resumable (data_prep/shards.py)
    sft         correctness -> length -> reflections -> dedup -> one per question -> mix.sft
    rl          pool minus the SFT questions -> [pass-rate selection] -> mix.rl

Outputs in prepare.output_dir: sft.parquet, rl.parquet, val.parquet, test.parquet (synthetic),
ablation/sft_{unfiltered,length,noreflect}.parquet (filters.write_variants), and manifest.json
with the inputs, models, config and rows in/out of every step; the output row counts are read
back from the files.
"""

from __future__ import annotations

import json
import logging
import os
import random
import threading
import time
from pathlib import Path
from typing import Any, Callable

import pyarrow.parquet as pq

from data_prep import filters as F
from data_prep.config import PrepareConfig, check_prepare_models, validate_prepare
from data_prep.mix import correct_counts, exclude, mix, select_by_pass_rate
from data_prep.rows import item_key
from data_prep.shards import ShardedStep, seed_for
from ovlt_rl.data.schema import read_rows, write_rows

log = logging.getLogger("ovlt.prepare")

Rows = list[dict[str, Any]]
OnShard = Callable[[str, int, bool], None]


def _file_sha256(path: Path) -> str:
    import hashlib

    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


class Manifest:
    """What a prepare run read, ran and wrote; saved as manifest.json (atomically) at the end."""

    def __init__(self, cfg):
        from omegaconf import OmegaConf

        self.data: dict[str, Any] = {
            "command": "ovlt prepare",
            "started": time.strftime("%Y-%m-%dT%H:%M:%S"),
            "config": OmegaConf.to_container(OmegaConf.structured(cfg)),
            "inputs": [],
            "models": {},
            "steps": [],
            "outputs": {},
        }

    def input(self, **entry: Any) -> None:
        self.data["inputs"].append(entry)

    def step(self, name: str, stats: dict[str, Any]) -> None:
        entry = {"step": name, **{k: v for k, v in stats.items() if k != "step"}}
        self.data["steps"].append(entry)
        log.info("%-22s %6s -> %6s  %s", name, stats.get("rows_in", ""), stats.get("rows_out", ""),
                 {k: v for k, v in stats.items() if k not in ("rows_in", "rows_out", "step") and v})

    def output(self, name: str, path: Path, rows_expected: int) -> None:
        n = pq.ParquetFile(path).metadata.num_rows
        if n != rows_expected:
            raise RuntimeError(f"{path}: wrote {rows_expected} rows but the file holds {n}")
        self.data["outputs"][name] = {"path": str(path), "rows": n, "sha256": _file_sha256(path)}

    def save(self, out_dir: Path) -> Path:
        self.data["finished"] = time.strftime("%Y-%m-%dT%H:%M:%S")
        path = out_dir / "manifest.json"
        tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
        tmp.write_text(json.dumps(self.data, indent=1, sort_keys=True, default=str))
        os.replace(tmp, path)
        return path


# --------------------------------------------------------------------------- the pool


def synthetic_splits(p: PrepareConfig, out_dir: Path, manifest: Manifest) -> dict[str, Rows]:
    """train/val/test of the synthetic task, written to synthetic_dir first if missing."""
    from data_prep.synthetic import write_synthetic

    sdir = Path(p.synthetic_dir) if p.synthetic_dir else out_dir / "synthetic"
    paths = {s: sdir / f"{s}.parquet" for s in ("train", "val", "test")}
    if not all(x.exists() for x in paths.values()):
        log.info("making the synthetic task in %s", sdir)
        write_synthetic(sdir, n_train=p.synthetic_train, n_val=p.synthetic_val, n_test=p.synthetic_test,
                        seed=p.seed, image_size=p.image_size, families=list(p.families) or None)
    want = {"train": p.synthetic_train, "val": p.synthetic_val, "test": p.synthetic_test}
    out = {}
    for split, path in paths.items():
        rows = read_rows(path)
        if len(rows) != want[split]:
            raise RuntimeError(f"{path} holds {len(rows)} rows but prepare.synthetic_{split} is {want[split]}; "
                               f"delete {sdir} to regenerate it, or set prepare.synthetic_{split}={len(rows)}")
        manifest.input(name=f"synthetic/{split}", path=str(path), rows=len(rows), sha256=_file_sha256(path))
        out[split] = rows
    return out


def load_pool(p: PrepareConfig, out_dir: Path, manifest: Manifest) -> tuple[Rows, Rows, Rows]:
    """(pool rows, val rows, test rows): contamination-checked, validation held out."""
    from data_prep.sources import load_source

    pool: Rows = []
    val: Rows = []
    test: Rows = []
    if p.synthetic:
        splits = synthetic_splits(p, out_dir, manifest)
        pool, val, test = splits["train"], splits["val"], splits["test"]
    for s in p.sources:
        rows, counts = load_source(s)
        manifest.input(name=s.name, path=s.path, **counts)
        manifest.step(f"source/{s.name}", {"rows_in": counts["records"], "rows_out": len(rows), **counts["skipped"]})
        pool += rows
    f = p.filters
    eval_rows = list(val) + list(test)
    for path in f.eval_files:
        rows = read_rows(path, columns=["data_source", "prompt", "images"])
        manifest.input(name="eval", path=str(path), rows=len(rows), sha256=_file_sha256(Path(path)))
        eval_rows += rows
    if f.contamination_keys and eval_rows:
        index = F.EvalIndex(eval_rows, f.question_boilerplate)
        pool, stats = F.contamination(pool, index, f.contamination_keys)
        manifest.step("contamination", {**stats, "eval_rows": index.rows})
    if p.val_count:
        order = list(range(len(pool)))
        random.Random(f"{p.seed}/val").shuffle(order)
        held = set(order[: p.val_count])
        held_rows = [r for i, r in enumerate(pool) if i in held]
        rest = [r for i, r in enumerate(pool) if i not in held]
        # copies of a held-out image or question elsewhere in the pool would leak it into training
        keys = f.contamination_keys or ["image"]
        pool, stats = F.contamination(rest, F.EvalIndex(held_rows, f.question_boilerplate), keys)
        val += held_rows
        manifest.step("val_holdout", {"rows_in": len(rest) + len(held), "rows_out": len(pool), "held_out": len(held),
                                      "same_image_as_val": stats["same_image"], "same_question_as_val": stats["same_question"]})
    return pool, val, test


def _seed_rows(pool: Rows, entries, total: int, limit: int, seed: int, tag: str) -> Rows:
    """The questions to generate for: rows of the mix's sources, at most `limit` of them.

    The limit is shared out like the mix itself (in proportion to each source's wanted rows),
    so that a small source is not crowded out by a large one before filtering.
    """
    from data_prep.config import MixEntry
    from data_prep.mix import plan_counts

    rows = _in_mix(pool, entries)
    if not limit or limit >= len(rows):
        return rows
    if not entries:
        keep = sorted(random.Random(f"{seed}/{tag}").sample(range(len(rows)), limit))
        return [rows[i] for i in keep]
    shares = [MixEntry(source=name, weight=float(n)) for name, n in plan_counts(entries, total).items() if n > 0]
    seeds, _ = mix(rows, shares, limit, seed=f"{seed}/{tag}")
    return seeds


def _in_mix(rows: Rows, entries) -> Rows:
    """Rows of the sources a mix names (all rows when it names none)."""
    from data_prep.mix import matches

    if not entries:
        return list(rows)
    return [r for r in rows if any(matches(r["data_source"], e.source) for e in entries)]


# --------------------------------------------------------------------------- generation


def _item_ids(rows: Rows) -> list[str]:
    return ["/".join(item_key(r)) for r in rows]


def _batches(rows: Rows, size: int):
    for i in range(0, len(rows), size):
        yield rows[i : i + size]


def _counts(totals: dict[str, int]) -> dict[str, int]:
    """Per-response counts of the shards computed in this run (reused shards were counted when made)."""
    return {k: v for k, v in totals.items() if k not in ("rows_in", "rows_out")}


def _release_memory() -> None:
    """Return the memory of engines that went out of scope before the next model loads
    (one model on the device at a time: captioner, then reasoner, then pass-rate model)."""
    import gc

    import torch

    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


class _Totals:
    """Per-response counts summed over the shards computed in this run, from every engine's thread."""

    def __init__(self):
        self._lock = threading.Lock()
        self.counts: dict[str, int] = {}

    def add(self, stats: dict[str, int]) -> None:
        with self._lock:
            for key, v in stats.items():
                self.counts[key] = self.counts.get(key, 0) + v


def _caption_pass(cfg, rows: Rows, out_dir: Path, manifest: Manifest, on_shard: OnShard | None) -> Rows:
    """captioner=engine: a VLM writes extra_info["caption"] for every row (sharded, resumable)."""
    from tqdm import tqdm

    from data_prep import distill as D
    from data_prep.engine_io import load_engines, skipped_counts

    p, d = cfg.prepare, cfg.prepare.distill
    manifest.data["models"]["captioner"] = d.captioner_model

    def work_for(engine, maker) -> Callable[[Rows, int], Rows]:
        captioner = D.EngineCaptioner(engine, maker.items, d.caption_prompt, d.caption_max_new_tokens)

        def work(shard: Rows, index: int) -> Rows:
            out: Rows = []
            for batch in _batches(shard, p.batch_size):
                for r, cap in zip(batch, captioner.caption(batch)):
                    if cap:
                        out.append({**r, "extra_info": {**r["extra_info"], "caption": cap}})
            return out
        return work

    settings = {"captioner": d.captioner_model, "prompt": d.caption_prompt, "max_new_tokens": d.caption_max_new_tokens,
                "pixels": [cfg.data.min_pixels, cfg.data.max_pixels], "engine": cfg.rollout.engine}
    step = ShardedStep(out_dir / "shards", "caption", settings, p.shard_size, on_shard)
    with load_engines(cfg, d.captioner_model) as engines, tqdm(total=len(rows), desc="caption", unit="image") as bar:
        captioned, shard_stats = step.run(rows, _item_ids(rows), [work_for(*e) for e in engines], bar)
    manifest.step("caption", {"rows_in": len(rows), "rows_out": len(captioned), "no_caption": len(rows) - len(captioned),
                              "prompts_skipped": skipped_counts(engines), **shard_stats})
    return captioned


def _distill_candidates(cfg, rows: Rows, out_dir: Path, manifest: Manifest, on_shard: OnShard | None) -> Rows:
    """Captions (stored, or a captioning pass), then the reasoner k times per question, in shards."""
    from contextlib import ExitStack

    from tqdm import tqdm

    from data_prep import distill as D
    from data_prep.engine_io import load_engines

    p, d, sim = cfg.prepare, cfg.prepare.distill, cfg.prepare.simulate
    if d.captioner == "scene":
        manifest.data["models"]["captioner"] = "scene description (extra_info.caption)"
    else:
        rows = _caption_pass(cfg, rows, out_dir, manifest, on_shard)
        _release_memory()
    totals = _Totals()

    def work_for(reasoner) -> Callable[[Rows, int], Rows]:
        def work(shard: Rows, index: int) -> Rows:
            out: Rows = []
            for b, batch in enumerate(_batches(shard, p.batch_size)):
                seed = seed_for(seed_for(p.seed, index), b)
                got, stats = D.distill(batch, D.StoredCaptioner(sim.vague_rate, seed, sim.vague_families), reasoner, d.k, seed)
                totals.add(stats)
                out += got
            return out
        return work

    settings = {"mode": "distill", "distill": d, "seed": p.seed, "batch_size": p.batch_size, "engine": cfg.rollout.engine}
    step = ShardedStep(out_dir / "shards", "distill", settings, p.shard_size, on_shard)
    with ExitStack() as stack:
        if d.reasoner == "programmatic":  # no engine: one worker, in this thread
            works = [work_for(D.ProgrammaticTextReasoner(sim.wrong_rate, sim.reflect_rate, sim.verbose_rate,
                                                         restate_rate=sim.restate_rate))]
            manifest.data["models"]["reasoner"] = "programmatic (data_prep/reasoner.py)"
        else:
            engines = stack.enter_context(load_engines(cfg, d.reasoner_model))
            works = [work_for(D.EngineReasoner(e, maker.items, d.reasoner_prompt, d.temperature, d.top_p, d.max_new_tokens))
                     for e, maker in engines]
            manifest.data["models"]["reasoner"] = d.reasoner_model
        bar = stack.enter_context(tqdm(total=len(rows), desc="distill", unit="question"))
        cands, shard_stats = step.run(rows, _item_ids(rows), works, bar)
    manifest.step("distill", {"rows_in": len(rows), "rows_out": len(cands), "k": d.k, **shard_stats,
                              "computed_shards": _counts(totals.counts)})
    return cands


def _self_improve_candidates(cfg, rows: Rows, out_dir: Path, manifest: Manifest, on_shard: OnShard | None) -> Rows:
    from tqdm import tqdm

    from data_prep.engine_io import load_engines, skipped_counts
    from data_prep.self_improve import sample_responses
    from ovlt_rl.engines.base import SamplingParams

    p, s = cfg.prepare, cfg.prepare.self_improve
    manifest.data["models"]["sampler"] = s.model_path
    totals = _Totals()

    def work_for(engine, maker) -> Callable[[Rows, int], Rows]:
        def work(shard: Rows, index: int) -> Rows:
            out: Rows = []
            for b, batch in enumerate(_batches(shard, p.batch_size)):
                items, idx = maker.items(batch)
                params = SamplingParams(temperature=s.temperature, top_p=s.top_p, max_new_tokens=s.max_new_tokens,
                                        seed=seed_for(seed_for(p.seed, index), b), logprobs=False)
                got, stats = sample_responses([batch[i] for i in idx], items, engine, s.k, params)
                totals.add(stats)
                out += got
            return out
        return work

    settings = {"mode": "self_improve", "self_improve": s, "seed": p.seed, "batch_size": p.batch_size,
                "prompt_suffix": cfg.data.prompt_suffix, "max_prompt_length": cfg.data.max_prompt_length,
                "pixels": [cfg.data.min_pixels, cfg.data.max_pixels], "engine": cfg.rollout.engine}
    step = ShardedStep(out_dir / "shards", "self_improve", settings, p.shard_size, on_shard)
    with (load_engines(cfg, s.model_path, prompt_suffix=cfg.data.prompt_suffix) as engines,
          tqdm(total=len(rows), desc="self-improve", unit="question") as bar):
        cands, shard_stats = step.run(rows, _item_ids(rows), [work_for(*e) for e in engines], bar)
    manifest.step("self_improve", {"rows_in": len(rows), "rows_out": len(cands), "k": s.k, **shard_stats,
                                   "prompts_skipped": skipped_counts(engines),
                                   "computed_shards": _counts(totals.counts)})
    return cands


def _difficulty(cfg, rows: Rows, reward_fn, out_dir: Path, manifest: Manifest, on_shard: OnShard | None) -> Rows:
    """Keep RL prompts the current model solves 1..n-1 times out of n (sharded: generation)."""
    from tqdm import tqdm

    from data_prep.engine_io import load_engines
    from ovlt_rl.engines.base import SamplingParams

    p, dc = cfg.prepare, cfg.prepare.difficulty
    manifest.data["models"]["difficulty"] = dc.model_path

    def work_for(engine, maker) -> Callable[[Rows, int], Rows]:
        def work(shard: Rows, index: int) -> Rows:
            out: Rows = []
            for b, batch in enumerate(_batches(shard, p.batch_size)):
                items, idx = maker.items(batch)
                kept = [batch[i] for i in idx]
                params = SamplingParams(temperature=dc.temperature, max_new_tokens=dc.max_new_tokens,
                                        seed=seed_for(seed_for(p.seed, index), b), logprobs=False)
                counts = correct_counts(kept, items, engine, reward_fn, dc.n, params, p.filters.min_reward)
                out += [{**r, "extra_info": {**r["extra_info"], "pass_count": c, "pass_n": dc.n}} for r, c in zip(kept, counts)]
            return out
        return work

    settings = {"difficulty": dc, "seed": p.seed, "batch_size": p.batch_size, "reward": cfg.reward.fn,
                "min_reward": p.filters.min_reward, "prompt_suffix": cfg.data.prompt_suffix}
    step = ShardedStep(out_dir / "shards", "difficulty", settings, p.shard_size, on_shard)
    with (load_engines(cfg, dc.model_path, prompt_suffix=cfg.data.prompt_suffix) as engines,
          tqdm(total=len(rows), desc="pass rate", unit="prompt") as bar):
        scored, shard_stats = step.run(rows, _item_ids(rows), [work_for(*e) for e in engines], bar)
    kept, stats = select_by_pass_rate(scored, [r["extra_info"]["pass_count"] for r in scored], dc.n)
    manifest.step("difficulty", {**stats, "rows_in": len(rows), "prompts_skipped": len(rows) - len(scored), **shard_stats})
    return kept

# --------------------------------------------------------------------------- SFT selection


def _select(cands: Rows, scores, p: PrepareConfig, *, max_words: int, reflection_mode: str, pick: str) -> tuple[Rows, list]:
    f = p.filters
    return F.select_sft(
        cands, None, min_reward=f.min_reward, max_words=max_words, reflection_mode=reflection_mode,
        reflection_phrases=f.reflection_phrases, dedup_rows=f.dedup, boilerplate=f.question_boilerplate,
        pick=pick, seed=p.seed, scores=scores,
    )


def _ablation_sets(cands: Rows, scores, p: PrepareConfig, sft_rows: Rows, manifest: Manifest, out_dir: Path) -> None:
    """The paper's filter ablation: unfiltered / length-filtered / reflections removed.

    All three hold the same questions (those of sft.parquet that survive every variant) and pick
    a random correct response per question with the same seed, so that the filters are the only
    difference (a shortest-first pick would already avoid most over-long responses).
    """
    f = p.filters
    variants = {
        "sft_unfiltered": dict(max_words=0, reflection_mode="off"),
        "sft_length": dict(max_words=f.max_words, reflection_mode="off"),
        "sft_noreflect": dict(max_words=f.max_words, reflection_mode=f.reflection_mode),
    }
    sets = {name: _select(cands, scores, p, pick="random", **kw)[0] for name, kw in variants.items()}
    keys = {item_key(r, f.question_boilerplate) for r in sft_rows}
    for rows in sets.values():
        keys &= {item_key(r, f.question_boilerplate) for r in rows}
    (out_dir / "ablation").mkdir(exist_ok=True)
    for name, rows in sets.items():
        chosen = [r for r in rows if item_key(r, f.question_boilerplate) in keys]
        path = write_rows(chosen, out_dir / "ablation" / f"{name}.parquet")
        manifest.step(f"ablation/{name}", {"rows_in": len(rows), "rows_out": len(chosen),
                                           "mean_words": round(sum(map(_words, chosen)) / max(1, len(chosen)), 1)})
        manifest.output(f"ablation/{name}.parquet", path, len(chosen))


def _words(row: dict) -> int:
    from data_prep.rows import word_count

    return word_count(row["response"])


# --------------------------------------------------------------------------- the run


def run_prepare(cfg, *, on_shard_committed: OnShard | None = None) -> Path:
    """Run data preparation for `cfg` (the tree; reads cfg.prepare, cfg.data, cfg.rollout,
    cfg.model, cfg.reward). Returns the output folder. Re-running resumes: committed generation
    shards are reused, everything after them is recomputed (it is cheap) and rewritten."""
    import reward

    p: PrepareConfig = cfg.prepare
    validate_prepare(p)
    check_prepare_models(p)
    out_dir = Path(p.output_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    manifest = Manifest(cfg)
    t0 = time.time()

    pool, val, test = load_pool(p, out_dir, manifest)
    manifest.step("pool", {"rows_in": len(pool), "rows_out": len(pool), "val": len(val), "test": len(test)})

    with reward.load_from_config(cfg.reward) as reward_fn:
        manifest.data["models"]["reward"] = cfg.reward.fn
        # --- SFT candidates: generation, sharded and resumable
        limit = p.distill.limit if p.mode == "distill" else p.self_improve.limit
        seeds = _seed_rows(pool, p.mix.sft, p.mix.sft_total, limit, p.seed, p.mode)
        manifest.step("sft/seeds", {"rows_in": len(_in_mix(pool, p.mix.sft)), "rows_out": len(seeds), "limit": limit})
        if p.mode == "distill":
            cands = _distill_candidates(cfg, seeds, out_dir, manifest, on_shard_committed)
        else:
            cands = _self_improve_candidates(cfg, seeds, out_dir, manifest, on_shard_committed)
        _release_memory()

        # --- SFT set: score once, filter, one per question, mix
        scores, unscorable = F.reward_scores(cands, reward_fn)
        if unscorable:
            log.warning("reward: %d candidates could not be scored: %s", sum(unscorable.values()), dict(unscorable))
        filtered, steps = _select(cands, scores, p, max_words=p.filters.max_words,
                                  reflection_mode=p.filters.reflection_mode, pick=p.filters.pick)
        for s in steps:
            manifest.step(f"sft/{s['step']}", s)
        sft_rows, stats = mix(filtered, p.mix.sft, p.mix.sft_total, p.seed)
        manifest.step("sft/mix", stats)

        # --- RL set: the pool minus SFT questions, optionally by pass rate, mixed
        rl_pool = _in_mix(pool, p.mix.rl)
        if p.mix.rl_exclude_sft:
            keys = {item_key(r, p.filters.question_boilerplate) for r in sft_rows}
            rl_pool, stats = exclude(rl_pool, keys, lambda r: item_key(r, p.filters.question_boilerplate))
            manifest.step("rl/exclude_sft", stats)
        if p.difficulty.enabled:
            rl_pool = _seed_rows(rl_pool, p.mix.rl, p.mix.rl_total, p.difficulty.limit, p.seed, "difficulty")
            rl_pool = _difficulty(cfg, rl_pool, reward_fn, out_dir, manifest, on_shard_committed)
        rl_rows, stats = mix(rl_pool, p.mix.rl, p.mix.rl_total, p.seed)
        manifest.step("rl/mix", stats)

    # --- write
    rl_rows = [{k: v for k, v in r.items() if k != "response"} for r in rl_rows]
    for name, rows in (("sft", sft_rows), ("rl", rl_rows), ("val", val), ("test", test)):
        if name in ("val", "test") and not rows:
            continue
        path = write_rows(rows, out_dir / f"{name}.parquet")
        manifest.output(f"{name}.parquet", path, len(rows))
    if p.filters.write_variants:
        _ablation_sets(cands, scores, p, sft_rows, manifest, out_dir)
    manifest.data["seconds"] = round(time.time() - t0, 1)
    path = manifest.save(out_dir)
    if not sft_rows or not rl_rows:
        # an empty set would only fail later, in training, far from its cause
        empty = " and ".join(n for n, rows in (("SFT", sft_rows), ("RL", rl_rows)) if not rows)
        raise RuntimeError(f"prepare: the {empty} set is empty; see the rows in/out of each step in {path}")
    log.info("prepare: sft %d rows, rl %d rows, val %d, test %d -> %s (%.0fs)",
             len(sft_rows), len(rl_rows), len(val), len(test), path, time.time() - t0)
    return out_dir

