"""The driver: the GRPO loop and the SFT loop, written to read like the algorithm.

    ovlt grpo recipe=tiny     ->  run_grpo(cfg)
    ovlt sft recipe=tiny      ->  run_sft(cfg)

One GRPO step:
  1. take `data.rollout_batch_size` prompts (with images)
  2. rollout workers generate `rollout.n` responses per prompt (a group)
  3. the reward scores every response (worker processes, with a timeout)
  4. group-relative advantages on the driver
  5. policy workers compute old log-probs; the reference copy computes reference log-probs
  6. the policy updates over mini-batches (each split into micro-batches per rank)
  7. new weights go to the rollout workers (and are checked against the policy's log-probs)
  8. metrics, validation, checkpoint
"""

from __future__ import annotations

import logging
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch

from ovlt_rl.config import Config, to_yaml
from ovlt_rl.engines.base import Generation, SamplingParams

log = logging.getLogger("ovlt")


# ---------------------------------------------------------------------------------------------
# Shared set-up


def weight_sync_mode(cfg: Config, policy_device: str, engine: str, *, can_ipc: bool) -> str:
    """How the policy's weights reach the rollout workers: "object_store", "nccl" or "ipc" (see rollout.weight_sync).

    `engine` is the one the rollout workers built ("hf" or "vllm"; rollout.engine=auto resolved) and
    `can_ipc` whether they take the CUDA IPC hand-over (a vLLM sharing the policy's GPU, with vLLM's
    weight transfer; RolloutWorker.can_ipc). nccl with the vLLM engine only when asked for
    (rollout.weight_sync=nccl): its receiving side (ovlt_rl/engines/vllm_weights.py) has not run on
    GPUs yet, so "auto" keeps the object store there."""
    r = cfg.rollout
    on_gpu = policy_device.startswith("cuda") and r.gpus_per_worker > 0
    # NCCL refuses two ranks on one device, so a policy and a rollout worker sharing a GPU
    # (fractional gpus_per_worker) go through the object store, or CUDA IPC with vLLM.
    whole_gpus = r.gpus_per_worker >= 1 and cfg.actor.gpus_per_worker >= 1
    if r.weight_sync == "nccl" and not (on_gpu and whole_gpus):
        raise ValueError("rollout.weight_sync=nccl needs the policy and the rollout engine (hf or vllm) on GPUs of their own "
                         "(actor.gpus_per_worker >= 1, rollout.gpus_per_worker >= 1)")
    if r.weight_sync == "ipc" and not (on_gpu and can_ipc):
        raise ValueError("rollout.weight_sync=ipc needs rollout.engine=vllm sharing the policy's GPU (0 < rollout.gpus_per_worker < 1, "
                         "actor.gpus_per_worker < 1, trainer.device not cpu) and a vLLM with weight_transfer_config (0.22 has it)")
    if r.weight_sync == "auto":
        if on_gpu and whole_gpus and engine == "hf":
            return "nccl"
        return "ipc" if on_gpu and can_ipc else "object_store"
    return r.weight_sync


def sync_ranks(cfg: Config, n_rollout_workers: int, engine: str) -> tuple[list[int], int]:
    """NCCL weight-sync ranks: each rollout worker's first rank and the world size. Policy rank 0
    is rank 0; an hf worker takes one rank, a vLLM worker one per tensor-parallel worker."""
    per = cfg.rollout.tensor_parallel_size if engine == "vllm" else 1
    return [1 + i * per for i in range(n_rollout_workers)], 1 + n_rollout_workers * per


class Run:
    """What both loops need: output folder, model path, processor, Ray, workers, checkpoints."""

    def __init__(self, cfg: Config, kind: str):
        from ovlt_rl.checkpoint import CheckpointManager
        from ovlt_rl.config_change import check_resume_config
        from ovlt_rl.models.loading import load_processor, resolve_model_path
        from ovlt_rl.models.paths import check_model_path
        from ovlt_rl.run_lock import OutputLock

        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
        # Before anything starts: a bad path is one line naming it, not a Hub error from a worker.
        # (The reference model is a copy of model.path.)
        check_model_path(cfg.model.path, "model.path")
        absolute_paths(cfg)
        self.cfg, self.kind = cfg, kind
        self.out = Path(cfg.trainer.output_dir)
        # Held until shutdown (or the process's end, however it ends): one run per output folder.
        self.lock = OutputLock(self.out).acquire()
        try:
            self.ckpt = CheckpointManager(self.out / "checkpoints", keep=cfg.trainer.keep_checkpoints)
            t0 = time.perf_counter()
            newest = self.ckpt.latest()  # raises if checkpoints exist but none is valid
            self.verify_s = time.perf_counter() - t0  # the sha256 checks (a 7B checkpoint: seconds to a minute)
            if newest is not None:  # before any work: a resume under a changed meaning stops here
                check_resume_config(newest[1] / "config.yaml", cfg)
            self.model_path = resolve_model_path(cfg.model.path)
            ensure_data(cfg)
            self.processor = load_processor(self.model_path, min_pixels=cfg.data.min_pixels, max_pixels=cfg.data.max_pixels)
            self.pad_id = self.processor.tokenizer.pad_token_id
        except BaseException:
            self.lock.release()
            raise

    def start_workers(self, total_opt_steps: int, with_rollout: bool) -> None:
        from ovlt_rl.workers.group import PolicyGroup, RolloutGroup, init_ray
        from ovlt_rl.workers.shared_storage import check_shared

        cfg = self.cfg
        init_ray(cfg, cfg.actor.num_workers + (cfg.rollout.num_workers if with_rollout else 0) + 1)
        self.policy = PolicyGroup(cfg, self.model_path)
        check_shared(self.out, self.policy.workers)  # checkpoints need one output folder for all ranks
        info = self.policy.call("setup", total_opt_steps)[0]
        log.info("policy: %d ranks, %.2fM parameters (%.2fM trainable) on %s", self.policy.world_size,
                 info["params"] / 1e6, info["trainable"] / 1e6, info["device"])
        self.rollout = RolloutGroup(cfg, self.model_path) if with_rollout else None
        from ovlt_rl.workers.policy import resolve_dtype

        self.policy_dtype = resolve_dtype(cfg.model.dtype, torch.device(info["device"]))  # what the weights are sent as
        self.sync_mode = (weight_sync_mode(self.cfg, info["device"], self.rollout.engine, can_ipc=self.rollout.can_ipc())
                          if with_rollout else None)
        if self.sync_mode == "nccl":
            import ray

            host, port = self.policy.free_port()
            first, world = sync_ranks(cfg, len(self.rollout.workers), self.rollout.engine)
            ray.get([self.policy.workers[0].init_weight_sync.remote(host, port, world)]
                    + [w.init_weight_sync.remote(host, port, first[i], world) for i, w in enumerate(self.rollout.workers)]
                    + [w.init_weight_sync.remote(host, port, world) for w in self.policy.workers[1:]])
        if with_rollout:
            log.info("weight sync: %s", self.sync_mode)

    def sync_weights(self) -> float:
        """Push the policy's weights to the rollout workers; returns seconds.

        object_store: policy rank 0 gathers the full state dict on the host and the rollout
        workers read it from Ray's object store. nccl: bucketed broadcast from policy rank 0.
        """
        import ray

        t0 = time.perf_counter()
        if self.sync_mode == "nccl":
            ray.get([w.send_weights.remote(self.cfg.model.dtype) for w in self.policy.workers]
                    + [w.receive_weights.remote() for w in self.rollout.workers])
        elif self.sync_mode == "ipc":
            self._sync_ipc()
        else:
            refs = [w.full_state_dict.remote() for w in self.policy.workers]  # a collective: every rank
            self.rollout.load_weights(refs[0])
            ray.get(refs[1:])
        return time.perf_counter() - t0

    def _sync_ipc(self) -> None:
        """Colocated vLLM: each chunk of the weights is packed on the policy's GPU (every rank, in
        step: the all-gathers are collectives) and loaded by vLLM from there through CUDA IPC; the
        next chunk is packed only after vLLM has read the buffer (ovlt_rl/workers/ipc_sync.py)."""
        import ray

        from ovlt_rl.workers.ipc_sync import merge_chunks
        from ovlt_rl.workers.weight_sync import DEFAULT_BUCKET_BYTES

        dtype = str(self.policy_dtype).removeprefix("torch.")
        self.rollout.start_ipc_update()
        ray.get([w.ipc_begin.remote(dtype, DEFAULT_BUCKET_BYTES) for w in self.policy.workers])
        while (chunk := merge_chunks(ray.get([w.ipc_next.remote() for w in self.policy.workers]))) is not None:
            self.rollout.ipc_update(chunk)
        self.rollout.finish_ipc_update()

    def resume(self, sampler, train) -> tuple[int, int]:
        """Load the newest checkpoint that verifies and loads (falling back to the one before it,
        with a warning, when it doesn't), if any: (step to continue after, non-finite streak).
        Then the run really starts: config.yaml is written."""
        from ovlt_rl.config_change import ConfigChangeRefused, check_resume_config

        loaded: dict[str, Any] = {}

        def load(path: Path) -> None:
            # The config check again, for the checkpoint really loaded (the early one in __init__
            # saw the newest that verifies; a fallback may land on an older one).
            check_resume_config(path / "config.yaml", self.cfg)
            state = self.ckpt.driver_state(path)
            self.policy.call("load_checkpoint", str(path))
            loaded.update(state)

        t0 = time.perf_counter()
        # raises if checkpoints exist but none can be resumed; a refused config is no load failure
        found = self.ckpt.resume(load, fatal=(ConfigChangeRefused,))
        if found is not None:  # outside the fallback: a data error here is the run's, not the checkpoint's
            sampler.load_state_dict(loaded["sampler"])
            # Rows whose images failed to decode before the checkpoint keep counting against
            # data.max_bad_fraction; checkpoints written before decode skips existed have none.
            if "decode_failures" not in loaded:
                log.warning("resume: %s predates decode-failure counts; counting from none", found[1])
            train.load_state_dict(loaded["decode_failures"] if "decode_failures" in loaded else [])
        load_s = time.perf_counter() - t0
        write_config(self.out, self.cfg)
        if found is None:
            return 0, 0
        step, path = found
        if self.rollout is not None:
            self.sync_weights()
        log.info("resume: checksums verified in %.2f s, state loaded in %.2f s", self.verify_s, load_s)
        log.info("resumed from %s (step %d)", path, step)
        return step, loaded["nonfinite_in_a_row"]

    def tracker(self, total_steps: int, start_step: int, desc: str):
        from ovlt_rl.tracking import Tracker

        t = self.cfg.trainer
        return Tracker(list(t.loggers), self.out, total_steps=total_steps, start_step=start_step,
                       project=t.project, experiment=t.experiment, config=asdict(self.cfg), desc=desc)

    def save_final_model(self, tracker) -> None:
        if self.cfg.trainer.save_hf:
            self.policy.call("save_hf", str(self.out / "hf"))
            tracker.write(f"model: {self.out / 'hf'}")

    def save_checkpoint(self, step: int, driver_state: dict[str, Any]) -> Path:
        return self.ckpt.save(step, lambda d: self.policy.call("save_checkpoint", d), driver_state,
                              extra_files={"config.yaml": to_yaml(self.cfg)})

    def shutdown(self) -> None:
        try:
            if getattr(self, "rollout", None) is not None:
                self.rollout.shutdown()
            if getattr(self, "policy", None) is not None:
                self.policy.shutdown()
        finally:
            self.lock.release()


def _close(run: "Run", reward_fn, tracker=None) -> None:
    """Release what a run holds, each even when one before it raises (workers and the output
    folder's lock must not leak): the tracker, the reward workers, then Ray's workers and the lock."""
    try:
        if tracker is not None:
            tracker.close()
    finally:
        try:
            if reward_fn is not None:
                reward_fn.close()
        finally:
            run.shutdown()


def write_config(out: Path, cfg: Config) -> Path:
    """Write `out/config.yaml` (once the run really starts); an earlier, different one is kept as
    config.N.yaml (N = 1, 2, ... in the order the runs started)."""
    import os

    text = to_yaml(cfg)
    path = out / "config.yaml"
    if path.is_file() and path.read_text() != text:
        n = 1 + max([int(p.stem.split(".")[1]) for p in out.glob("config.*.yaml") if p.stem.split(".")[1].isdigit()], default=0)
        os.replace(path, out / f"config.{n}.yaml")
    tmp = out / ".config.yaml.tmp"
    tmp.write_text(text)
    os.replace(tmp, path)
    return path


def ensure_data(cfg: Config) -> None:
    """Tiny recipes name `data.prepare_recipe`: if their files are missing, make them first with the
    data-preparation pipeline (synthetic task -> distillation -> filters -> mix) into `data.prepare_dir`."""
    from ovlt_rl.data.formats import source_exists

    files = list(cfg.data.train_files) + list(cfg.data.val_files)
    missing = [f for f in files if not source_exists(f)]
    if not cfg.data.prepare_recipe:
        if missing:
            raise FileNotFoundError(f"data files not found: {', '.join(missing)}")
        return
    from data_prep.pipeline import run_prepare
    from ovlt_rl.config import load_config

    out = cfg.data.prepare_dir or str(Path((missing or files)[0]).parent)
    prep = load_config("prepare", [f"recipe={cfg.data.prepare_recipe}", f"prepare.output_dir={out}"])
    if not missing:
        _check_prepared_with(prep, cfg.data.prepare_recipe, Path(out))
        return
    log.info("data files missing (%s): running `ovlt prepare recipe=%s` into %s", ", ".join(missing), cfg.data.prepare_recipe, out)
    run_prepare(prep)
    still = [f for f in files if not source_exists(f)]
    if still:
        raise FileNotFoundError(f"data preparation in {out} did not produce {', '.join(still)}")


def _check_prepared_with(prep: Any, recipe: str, out: Path) -> None:
    """Files made earlier by `ovlt prepare` with other settings than the recipe's are used (a smaller
    or custom preparation is legitimate), but never silently: a folder left by an older recipe
    (another distillation, other filters) trains on data the recipe no longer describes."""
    import json

    from omegaconf import OmegaConf

    manifest = out / "manifest.json"
    if not manifest.is_file():  # files put there by hand: the user's data, used as given
        return
    made = json.loads(manifest.read_text())["config"]["prepare"]
    want = OmegaConf.to_container(OmegaConf.structured(prep))["prepare"]

    def diff(a: Any, b: Any, path: str) -> list[str]:
        if isinstance(a, dict) and isinstance(b, dict):
            return [d for k in sorted(a.keys() | b.keys()) for d in diff(a.get(k), b.get(k), f"{path}.{k}")]
        return [] if a == b else [path]

    changed = [d for d in diff(made, want, "prepare") if d != "prepare.output_dir"]
    if changed:
        log.warning(
            "%s was made by `ovlt prepare` with other settings than recipe %s has now (%s differ); using it "
            "as it is. Delete %s to remake it with the recipe's settings.", out, recipe, ", ".join(changed), out,
        )


def absolute_paths(cfg: Config) -> None:
    """Make every path of the run absolute, so that Ray workers (whose working folder may differ,
    e.g. a job's copy of the repo) read and write the same places as the driver."""
    from ovlt_rl.models.paths import BUILTIN_MODELS, cached_hub_model

    def fix(p: str) -> str:
        return str(Path(p).expanduser().resolve()) if p else p

    cfg.trainer.output_dir = fix(cfg.trainer.output_dir)
    cfg.data.train_files = [fix(f) for f in cfg.data.train_files]
    cfg.data.val_files = [fix(f) for f in cfg.data.val_files]
    cfg.data.prepare_dir = fix(cfg.data.prepare_dir)
    cfg.data.image_dir = fix(cfg.data.image_dir)
    if cfg.model.path not in BUILTIN_MODELS and not cached_hub_model(cfg.model.path):
        cfg.model.path = fix(cfg.model.path)


def split_for_ranks(samples: list[Any], world: int) -> list[list[Any]]:
    """Deal samples to ranks round-robin (equal counts when world divides len(samples))."""
    return [samples[r::world] for r in range(world)]


def sampling_params(cfg: Config, *, validation: bool, seed: int | None) -> SamplingParams:
    r = cfg.rollout
    return SamplingParams(
        n=r.val_n if validation else r.n,
        temperature=r.val_temperature if validation else r.temperature,
        top_p=r.val_top_p if validation else r.top_p,
        top_k=r.top_k,
        max_new_tokens=cfg.data.max_response_length,
        stop=list(r.stop),
        seed=seed,
        logprobs=False,
    )


def accuracy_by_source(sources: list[str], correct: list[float]) -> dict[str, float]:
    """`val/accuracy/<data_source>` for each source: one overall number hides which family moved
    (a tiny model's greedy answers flip for a whole question template at once)."""
    totals: dict[str, list[float]] = {}
    for source, c in zip(sources, correct, strict=True):
        totals.setdefault(source, []).append(c)
    return {f"val/accuracy/{source}": sum(cs) / len(cs) for source, cs in sorted(totals.items())}


def validate(run: Run, dataset, step: int, reward_fn) -> dict[str, float]:
    """Generate on held-out prompts, grade with the evaluation grader, log a few generations."""
    import json

    from reward.grading import extract_answer, grade

    cfg = run.cfg
    n = len(dataset) if not cfg.data.max_val_samples else min(len(dataset), cfg.data.max_val_samples)
    prompts = dataset.present(range(n))  # rows whose images fail to decode are left out (counted)
    n = len(prompts)
    t0 = time.perf_counter()
    groups: list[list[Generation]] = []
    for s in range(0, n, cfg.data.val_batch_size):
        groups += run.rollout.generate(prompts[s : s + cfg.data.val_batch_size], sampling_params(cfg, validation=True, seed=cfg.trainer.seed))
    texts = [g.text for grp in groups for g in grp]
    per_sample = [p for p, grp in zip(prompts, groups) for _ in grp]  # each prompt once per generation (val_n)
    gts = [p["ground_truth"] for p in per_sample]
    correct = [grade(extract_answer(t), gt) for t, gt in zip(texts, gts)]
    extras = [
        {"data_source": p["data_source"], "extra_info": p["extra_info"], "response_length": len(g.token_ids)}
        for p, grp in zip(prompts, groups) for g in grp
    ]
    scores = reward_fn.score_batch(texts, gts, extras)
    ok = [s for s in scores.scores if s is not None]
    metrics = {
        "val/accuracy": sum(correct) / max(1, len(correct)),
        **accuracy_by_source([p["data_source"] for p in per_sample], correct),
        "val/reward": sum(ok) / max(1, len(ok)),
        "val/response_length": sum(len(g.token_ids) for grp in groups for g in grp) / max(1, len(texts)),
        "val/samples": float(len(texts)),
        "timing/val_s": time.perf_counter() - t0,
    }
    k = cfg.trainer.num_val_generations_logged
    if k:
        path = run.out / "generations.jsonl"
        with open(path, "a") as f:
            for p, t, gt, c in list(zip(prompts, texts, gts, correct))[:k]:
                f.write(json.dumps({"step": step, "prompt": p.get("prompt_text", ""), "response": t, "ground_truth": gt, "correct": c}) + "\n")
    return metrics


def _open_datasets(cfg: Config, processor, *, sft: bool):
    from ovlt_rl.data.dataset import PromptDataset, SFTDataset
    from ovlt_rl.data.formats import DataFormat
    from ovlt_rl.data.items import Items

    d = cfg.data
    fmt = DataFormat.from_config(d)
    common = dict(min_pixels=d.min_pixels, max_pixels=d.max_pixels, prompt_suffix=d.prompt_suffix,
                  max_bad_fraction=d.max_bad_fraction, data_format=fmt)
    if sft:
        train = SFTDataset(list(d.train_files), processor, max_length=d.max_prompt_length + d.max_response_length, **common)
    else:
        train = PromptDataset(list(d.train_files), processor, max_prompt_length=d.max_prompt_length, **common)
    val = PromptDataset(list(d.val_files), processor, max_prompt_length=d.max_prompt_length, **common) if d.val_files else None
    for name, ds in (("train", train), ("val", val)):
        if ds is not None and sum(ds.skipped.values()):
            log.warning("%s data: skipped %s", name, dict(ds.skipped))
    return Items(train), (Items(val) if val is not None else None)


def _total_steps(cfg: Config, n_rows: int, per_step: int) -> int:
    if cfg.trainer.total_steps:
        return cfg.trainer.total_steps
    steps = (n_rows // per_step) * cfg.trainer.total_epochs
    if steps < 1:
        raise ValueError(f"data.train_files: {n_rows} usable rows make no full batch of {per_step}")
    return steps


def _is_step(step: int, every: int, last: int) -> bool:
    return step == last or (every > 0 and step % every == 0)


# ---------------------------------------------------------------------------------------------
# GRPO


def run_grpo(cfg: Config) -> Path:
    import reward
    from ovlt_rl.algos import dynamic_sampling_keep, grpo_advantages, loss_denominator, rewards_tensor
    from ovlt_rl.data.loader import EpochIterator
    from ovlt_rl.workers.sequences import make_sample

    run = Run(cfg, "grpo")
    reward_fn = None
    try:  # until the loop's own try: release the workers and the output folder's lock on failure
        train, val = _open_datasets(cfg, run.processor, sft=False)
        a, r, d = cfg.actor, cfg.rollout, cfg.data
        total_steps = _total_steps(cfg, len(train), d.rollout_batch_size)
        minibatches = d.rollout_batch_size * r.n // a.global_batch_size
        sampler = EpochIterator(len(train), d.rollout_batch_size, seed=cfg.trainer.seed, shuffle=d.shuffle, drop_last=True)

        reward_fn = reward.load_from_config(cfg.reward)
        run.start_workers(total_opt_steps=total_steps * minibatches * a.ppo_epochs, with_rollout=True)
        start_step, nonfinite_in_a_row = run.resume(sampler, train)
        tracker = run.tracker(total_steps, start_step, "grpo")
    except BaseException:
        _close(run, reward_fn)
        raise
    try:
        if start_step == 0 and val is not None and cfg.trainer.val_before_train:
            m = validate(run, val, 0, reward_fn)
            tracker.log(0, m)
            tracker.write(f"step 0: val/accuracy {m['val/accuracy']:.3f}")

        for step in range(start_step + 1, total_steps + 1):
            t_step = time.perf_counter()
            timing: dict[str, float] = {}
            metrics: dict[str, Any] = {}

            # 1-3. prompts -> grouped rollouts -> rewards (refilled if dynamic sampling drops groups)
            prompts, groups, scores = [], [], []
            none_reasons: dict[str, int] = {}
            indices: list[int] = []
            for round_ in range(cfg.algorithm.max_sampling_rounds if cfg.algorithm.dynamic_sampling else 1):
                # A row whose image fails to decode is replaced by the next one that decodes
                # (ovlt_rl/data/items.py): the same on a resume, and the batch keeps its size.
                batch_prompts, batch_idx = train.batch(next(sampler))
                indices += batch_idx
                t0 = time.perf_counter()
                batch_groups = run.rollout.generate(batch_prompts, sampling_params(cfg, validation=False, seed=cfg.trainer.seed * 100003 + step * 97 + round_))
                timing["timing/generate_s"] = timing.get("timing/generate_s", 0.0) + time.perf_counter() - t0
                t0 = time.perf_counter()
                texts = [g.text for grp in batch_groups for g in grp]
                gts = [p["ground_truth"] for p, grp in zip(batch_prompts, batch_groups) for _ in grp]
                extras = [
                    {"data_source": p["data_source"], "extra_info": p["extra_info"], "response_length": len(g.token_ids)}
                    for p, grp in zip(batch_prompts, batch_groups) for g in grp
                ]
                bs = reward_fn.score_batch(texts, gts, extras)
                reward.check_unscorable(bs, cfg.reward.max_unscorable_fraction, reward_fn.name)
                timing["timing/reward_s"] = timing.get("timing/reward_s", 0.0) + time.perf_counter() - t0
                for k, v in bs.metrics().items():
                    metrics[k] = v
                for k, v in bs.none_reasons.items():
                    none_reasons[k] = none_reasons.get(k, 0) + v
                if cfg.algorithm.dynamic_sampling:
                    rw = rewards_tensor(bs.scores).view(len(batch_prompts), r.n)
                    keep = dynamic_sampling_keep(rw.flatten(), torch.arange(len(batch_prompts)).repeat_interleave(r.n)).view(len(batch_prompts), r.n)[:, 0]
                    metrics["dynamic_sampling/kept_groups"] = metrics.get("dynamic_sampling/kept_groups", 0) + int(keep.sum())
                    for i in range(len(batch_prompts)):
                        if keep[i] and len(prompts) < d.rollout_batch_size:
                            prompts.append(batch_prompts[i])
                            groups.append(batch_groups[i])
                            scores += bs.scores[i * r.n : (i + 1) * r.n]
                    if len(prompts) >= d.rollout_batch_size:
                        break
                else:
                    prompts, groups, scores = batch_prompts, batch_groups, bs.scores
            if cfg.algorithm.dynamic_sampling and len(prompts) < d.rollout_batch_size:
                # Not enough groups with signal: fill with the last round's groups (advantage 0) so
                # every step has the configured size and ranks stay balanced.
                for i in range(len(batch_prompts)):
                    if len(prompts) >= d.rollout_batch_size:
                        break
                    prompts.append(batch_prompts[i])
                    groups.append(batch_groups[i])
                    scores += bs.scores[i * r.n : (i + 1) * r.n]

            # 4. group-relative advantages
            rewards_t = rewards_tensor(scores)
            group_ids = torch.arange(len(prompts)).repeat_interleave(r.n)
            adv = grpo_advantages(rewards_t, group_ids, norm_by_std=cfg.algorithm.norm_adv_by_std)

            samples = []
            for gi, (p, grp) in enumerate(zip(prompts, groups)):
                for j, g in enumerate(grp):
                    s = make_sample(p, g.token_ids)
                    s["advantages"] = s["loss_mask"] * float(adv[gi * r.n + j])
                    samples.append(s)

            # 5. old and reference log-probs (each rank computes its share). A vLLM engine sharing
            # the policy's GPU sleeps until the weight sync (step 7) wakes it.
            run.rollout.sleep()
            world = run.policy.world_size
            shares = split_for_ranks(samples, world)

            def attach_logprobs(which: str, key: str) -> None:
                t0 = time.perf_counter()
                # At the sampling temperature, so the update is on-policy for the samples (token_logprobs).
                lps = run.policy.call_split("compute_logprobs", shares, which, a.micro_batch_size, r.temperature)
                timing[f"timing/{key}_s"] = time.perf_counter() - t0
                for share, share_lps in zip(shares, lps):
                    for s, lp in zip(share, share_lps):
                        s[key + "s"] = lp

            # With one update per rollout batch the policy still has the weights that sampled, so
            # update_policy takes the old log-probs from its own forward pass (detached) instead.
            if a.ppo_epochs * minibatches > 1:
                attach_logprobs("policy", "old_logprob")
            if a.use_kl_loss:
                attach_logprobs("ref", "ref_logprob")

            # 6. policy update: mini-batches of whole groups, each one optimizer step
            t0 = time.perf_counter()
            sums: dict[str, float] = {}
            skipped = 0
            for _epoch in range(a.ppo_epochs):
                for mb in range(minibatches):
                    mb_samples = samples[mb * a.global_batch_size : (mb + 1) * a.global_batch_size]
                    mask = torch.nn.utils.rnn.pad_sequence([s["loss_mask"] for s in mb_samples], batch_first=True)
                    mask[:, 0] = 0
                    denom = loss_denominator(mask, a.loss_agg_mode)
                    results = run.policy.call_split("update_policy", split_for_ranks(mb_samples, world), float(max(1, denom)), r.temperature)
                    for res in results:
                        for k, v in res.items():
                            sums[k] = sums.get(k, 0.0) + v
                    skipped += int(results[0]["actor/skipped"])
            timing["timing/update_s"] = time.perf_counter() - t0
            n_updates = a.ppo_epochs * minibatches
            tokens = sums.pop("actor/tokens")
            metrics.update(
                {
                    "actor/pg_loss": sums["actor/pg_loss"] / n_updates,
                    "actor/entropy": sums["actor/entropy_sum"] / max(1.0, tokens),
                    "actor/grad_norm": sums["actor/grad_norm"] / (n_updates * world),
                    "actor/lr": sums["actor/lr"] / (n_updates * world),
                    "actor/skipped_updates": float(skipped),
                }
            )
            if "actor/kl_loss" in sums:
                metrics["actor/kl_loss"] = sums["actor/kl_loss"] / n_updates
            for k in list(sums):
                if k.endswith("_wsum"):
                    metrics[k[: -len("_wsum")]] = sums[k] / max(1.0, tokens)
            nonfinite_in_a_row = nonfinite_in_a_row + 1 if skipped else 0
            if nonfinite_in_a_row >= a.max_nonfinite_in_a_row:
                raise RuntimeError(
                    f"{nonfinite_in_a_row} steps in a row had a non-finite loss or grad norm (actor.max_nonfinite_in_a_row); "
                    f"stopping. The last committed checkpoint is intact in {run.ckpt.root}"
                )

            # 7. weight sync, then check that rollout and policy agree on the same tokens
            timing["timing/sync_s"] = run.sync_weights()
            if r.check_logprob_sync:
                metrics["sync/logprob_mae"] = _logprob_agreement(run, prompts[:2], [g.token_ids for g in groups[0][:1] + groups[1 % len(groups)][:1]], a.micro_batch_size)

            # 8. metrics, validation, checkpoint
            resp_lens = [len(g.token_ids) for grp in groups for g in grp]
            n_tok = sum(resp_lens) + sum(len(p["input_ids"]) * r.n for p in prompts)
            step_s = time.perf_counter() - t_step
            metrics.update(
                {
                    "reward/mean": float(torch.nanmean(rewards_t)),
                    "data/indices": indices,  # dataset rows of this step (checks that a resume keeps the order)
                    "data/decode_errors": float(train.skipped["decode_error"]),  # rows skipped so far (run total)
                    "response_length/mean": sum(resp_lens) / len(resp_lens),
                    "response_length/clip_ratio": sum(g.finish_reason == "length" for grp in groups for g in grp) / len(resp_lens),
                    "throughput/tokens_per_s": n_tok / step_s,
                    "timing/step_s": step_s,
                    **{f"reward/none_{k}": float(v) for k, v in none_reasons.items()},
                    **timing,
                }
            )
            if val is not None and _is_step(step, cfg.trainer.val_every, total_steps):
                metrics.update(validate(run, val, step, reward_fn))
            tracker.log(step, metrics, postfix_keys=("reward/mean", "val/accuracy", "response_length/mean", "throughput/tokens_per_s"))
            tracker.advance()
            if _is_step(step, cfg.trainer.save_every, total_steps):
                run.save_checkpoint(step, {"step": step, "sampler": sampler.state_dict(), "nonfinite_in_a_row": nonfinite_in_a_row,
                                            "decode_failures": train.state_dict()})

        run.save_final_model(tracker)
    finally:
        _close(run, reward_fn, tracker)
    return run.out


def _logprob_agreement(run: Run, prompts: list[dict], responses: list[list[int]], micro: int) -> float:
    """Mean |rollout log-prob - policy log-prob| over the same response tokens after a sync."""
    from ovlt_rl.workers.sequences import make_sample

    rollout_lps = run.rollout.compute_logprobs(prompts, responses)
    samples = [make_sample(p, rsp) for p, rsp in zip(prompts, responses)]
    # Every rank must run the forward (FSDP collectives): give each rank the same samples.
    policy_lps = run.policy.call_split("compute_logprobs", [samples] * run.policy.world_size, "policy", micro)[0]
    diffs = []
    for p, rl, pl in zip(prompts, rollout_lps, policy_lps):
        pl = pl[len(p["input_ids"]) :]
        diffs += [abs(x - float(y)) for x, y in zip(rl, pl)]
    return sum(diffs) / max(1, len(diffs))


# ---------------------------------------------------------------------------------------------
# SFT


def _val_loss(run: Run, samples: list[dict]) -> float:
    """Token-mean NLL of held-out SFT samples (each rank scores its share)."""
    world = run.policy.world_size
    # Every rank needs the same number of forwards (FSDP collectives): pad the shares with repeats.
    shares = split_for_ranks(samples, world)
    longest = max(len(s) for s in shares)
    weights = [[1.0] * len(s) + [0.0] * (longest - len(s)) for s in shares]
    shares = [s + [s[0]] * (longest - len(s)) if s else [samples[0]] * longest for s in shares]
    total = count = 0.0
    for share, w, (nll, n) in zip(shares, weights, run.policy.call_split("eval_nll_per_sample", shares)):
        for wi, (a, b) in zip(w, zip(nll, n)):
            total += wi * a
            count += wi * b
    return total / max(1.0, count)


def run_sft(cfg: Config) -> Path:
    import reward
    from ovlt_rl.data.loader import EpochIterator
    from ovlt_rl.workers.sequences import sft_sample

    run = Run(cfg, "sft")
    reward_fn = None
    try:  # until the loop's own try: release the workers and the output folder's lock on failure
        train, val = _open_datasets(cfg, run.processor, sft=True)
        a = cfg.actor
        # Held-out rows for the validation loss: the last ones, never trained on.
        n_loss = int(len(train) * cfg.data.val_loss_fraction)
        n_train = len(train) - n_loss
        loss_rows = list(range(n_train, len(train)))
        total_steps = _total_steps(cfg, n_train, a.global_batch_size)
        sampler = EpochIterator(n_train, a.global_batch_size, seed=cfg.trainer.seed, shuffle=cfg.data.shuffle, drop_last=True)
        # Validation accuracy needs generation: one rollout worker receives the weights at validation.
        with_val = val is not None  # validated at the end at least (and every trainer.val_every steps)
        run.start_workers(total_opt_steps=total_steps, with_rollout=with_val)
        reward_fn = reward.load_from_config(cfg.reward) if with_val else None
        start_step, nonfinite_in_a_row = run.resume(sampler, train)
        tracker = run.tracker(total_steps, start_step, "sft")
    except BaseException:
        _close(run, reward_fn)
        raise
    world = run.policy.world_size
    try:
        if start_step == 0 and with_val and cfg.trainer.val_before_train:
            tracker.log(0, validate(run, val, 0, reward_fn))
        for step in range(start_step + 1, total_steps + 1):
            t0 = time.perf_counter()
            items, used = train.batch(next(sampler), within=n_train)  # refilled where an image fails to decode
            samples = [sft_sample(it) for it in items]
            mask = torch.nn.utils.rnn.pad_sequence([s["loss_mask"] for s in samples], batch_first=True)
            mask[:, 0] = 0
            denom = float(max(1, int(mask.sum())))
            results = run.policy.call_split("sft_step", split_for_ranks(samples, world), denom)
            skipped = int(results[0]["sft/skipped"])
            nonfinite_in_a_row = nonfinite_in_a_row + 1 if skipped else 0
            if nonfinite_in_a_row >= a.max_nonfinite_in_a_row:
                raise RuntimeError(f"{nonfinite_in_a_row} SFT steps in a row had a non-finite loss or grad norm; stopping "
                                   f"(last committed checkpoint intact in {run.ckpt.root})")
            step_s = time.perf_counter() - t0
            metrics = {
                "sft/loss": sum(res["sft/nll_sum"] for res in results) / denom,
                "sft/grad_norm": results[0]["sft/grad_norm"],
                "sft/lr": results[0]["sft/lr"],
                "sft/skipped_updates": float(skipped),
                "data/indices": used,
                "data/decode_errors": float(train.skipped["decode_error"]),
                "throughput/tokens_per_s": sum(int(len(s["input_ids"])) for s in samples) / step_s,
                "timing/step_s": step_s,
            }
            loss_items = train.present(loss_rows) if loss_rows and _is_step(step, cfg.trainer.val_every, total_steps) else []
            if loss_items:
                metrics["val/loss"] = _val_loss(run, [sft_sample(it) for it in loss_items])
            if with_val and _is_step(step, cfg.trainer.val_every, total_steps):
                run.sync_weights()
                metrics.update(validate(run, val, step, reward_fn))
            tracker.log(step, metrics, postfix_keys=("sft/loss", "val/accuracy", "throughput/tokens_per_s"))
            tracker.advance()
            if _is_step(step, cfg.trainer.save_every, total_steps):
                run.save_checkpoint(step, {"step": step, "sampler": sampler.state_dict(), "nonfinite_in_a_row": nonfinite_in_a_row,
                                            "decode_failures": train.state_dict()})
        run.save_final_model(tracker)
    finally:
        _close(run, reward_fn, tracker)
    return run.out
