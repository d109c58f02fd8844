"""The driver: the GRPO loop and the SFT loop, written to read like the algorithm.

    ovlt grpo recipe=tiny     ->  run_grpo(cfg)
    ovlt sft recipe=tiny      ->  run_sft(cfg)

One GRPO step (grpo_step):
  1. take `data.rollout_batch_size` prompts (with images)
  2. rollout workers generate `rollout.n` responses per prompt (a group)
  3. the reward scores every response (worker processes, with a timeout)
  4. group-relative advantages on the driver
  5. policy workers compute old log-probs; the reference copy computes reference log-probs
  6. the policy updates over mini-batches (each split into micro-batches per rank)
  7. new weights go to the rollout workers (and are checked against the policy's log-probs)
  8. metrics, validation, checkpoint
With `algorithm.overlap` (one-step off-policy, ovlt_rl/driver/ahead.py) steps 1-3 of the next
step run in a driver thread during 5-6, on the weights from before this step's update.

What both loops share (output folder, workers, resume, checkpoints, shutdown) is the Run in
ovlt_rl/driver/run.py; the pieces of a step are the other modules of ovlt_rl/driver/.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from ovlt_rl.config import Config
from ovlt_rl.driver.ahead import RolloutsAhead
from ovlt_rl.driver.datasets import open_datasets, total_steps
from ovlt_rl.driver.metrics import grpo_update_metrics, rollout_metrics, sft_update_metrics
from ovlt_rl.driver.rollouts import Rollouts, collect_groups, sampling_params, score_groups
from ovlt_rl.driver.run import Run, is_step
from ovlt_rl.driver.samples import advantage_samples, attach, batch_denominator, behaviour_logprobs, minibatches
from ovlt_rl.driver.timer import PhaseTimer
from ovlt_rl.driver.validation import logprob_agreement, val_loss, validate
from ovlt_rl.models.sequences import sft_sample

log = logging.getLogger("ovlt")


# ---------------------------------------------------------------------------------------------
# GRPO


def run_grpo(cfg: Config) -> Path:
    from ovlt_rl.data.loader import EpochIterator

    a, r, d = cfg.actor, cfg.rollout, cfg.data
    # RolloutsAhead outlives the Run: on an error the Run's workers go first, which ends a batch
    # still generating in its thread at once.
    with RolloutsAhead() as ahead, Run(cfg) as run:
        train, val = open_datasets(cfg, run.processor, sft=False)
        steps = total_steps(cfg, len(train), d.rollout_batch_size)
        n_minibatches = d.rollout_batch_size * r.n // a.global_batch_size
        sampler = EpochIterator(len(train), d.rollout_batch_size, seed=cfg.trainer.seed, shuffle=d.shuffle, drop_last=True)
        run.load_reward()
        run.start_workers(total_opt_steps=steps * n_minibatches * a.ppo_epochs, with_rollout=True)
        start_step = run.begin(sampler, train, steps, "grpo")
        if start_step == 0 and val is not None and cfg.trainer.val_before_train:
            m = validate(run, val, 0)
            run.tracker.log(0, m)
            run.tracker.write(f"step 0: val/accuracy {m['val/accuracy']:.3f}")
        if cfg.algorithm.overlap and (cfg.rollout.top_p < 1 or cfg.rollout.top_k > 0):
            log.warning("algorithm.overlap with rollout.top_p=%s, rollout.top_k=%s: the engine's log-probs are those of the "
                        "truncated sampling distribution, the policy's are not, so the ratio is off by the truncated mass "
                        "(about 1%% at top_p 0.99); docs/overlap.md", cfg.rollout.top_p, cfg.rollout.top_k)
        if start_step > 0 and cfg.algorithm.overlap:
            log.warning("resume with algorithm.overlap: step %d's rollouts are generated now, with the checkpoint's weights "
                        "(the interrupted run had sampled them one update earlier); the steps after run one step off-policy again",
                        start_step + 1)
        for step in range(start_step + 1, steps + 1):
            metrics = grpo_step(run, train, sampler, step, n_minibatches, ahead=ahead if cfg.algorithm.overlap else None, last=steps)
            if val is not None and is_step(step, cfg.trainer.val_every, steps):
                metrics.update(validate(run, val, step))
            run.end_step(step, metrics, postfix_keys=("reward/mean", "val/accuracy", "response_length/mean", "throughput/tokens_per_s"),
                         data_state=ahead.data_state)
        run.save_final_model()
    return run.out


def grpo_step(run: Run, train, sampler, step: int, n_minibatches: int, *, ahead: RolloutsAhead | None = None,
              last: int = 0) -> dict[str, Any]:
    """One GRPO step, phase by phase; returns the step's metrics (validation aside).

    `ahead` (algorithm.overlap): where this step's batch was generated during the step before,
    and where the next one (up to step `last`) is generated during this step's update.
    """
    cfg, a, r = run.cfg, run.cfg.actor, run.cfg.rollout
    timer = PhaseTimer()

    # 1-3. prompts -> groups of responses -> rewards (refilled if dynamic sampling drops groups)
    batch = None
    if ahead is not None:
        with timer.phase("rollout_wait"):
            batch = ahead.take(step)  # None on the first step and the first after a resume
    staleness = 1 if batch is not None else 0
    if batch is None:
        batch = generate_and_score(run, train, sampler, step, timer)
    decode_errors = train.skipped["decode_error"]  # before the next batch draws rows of its own
    if ahead is not None and step < last:  # overlap: the next batch on the weights from before this update
        ahead.start(step + 1, lambda: generate_ahead(run, train, sampler, step + 1), data_state=run.data_state())

    # 4. group-relative advantages, one sample per response
    samples, rewards = advantage_samples(batch, r.n, norm_by_std=cfg.algorithm.norm_adv_by_std)

    # 5. old and reference log-probs (each rank computes its share), at the sampling temperature so
    # that the update is on-policy for the samples. With one update per rollout batch the policy
    # still has the weights that sampled, so update_policy takes the old log-probs from its own
    # forward pass (detached) instead. A vLLM engine sharing the policy's GPU sleeps from here
    # until the weight sync (7) wakes it. Under overlap the old log-probs are the rollout engine's
    # (the policy that sampled), and nothing sleeps: the rollout workers are busy with the next
    # batch, a sleep call would queue behind it, and overlap is refused colocated anyway.
    like_sampling = dict(micro_batch_size=a.micro_batch_size, temperature=r.temperature)
    if ahead is not None:
        attach(samples, "old_logprobs", behaviour_logprobs(batch))
    else:
        run.rollout.sleep()
        if a.ppo_epochs * n_minibatches > 1:
            with timer.phase("old_logprob"):
                attach(samples, "old_logprobs", run.policy.compute_logprobs(samples, which="policy", **like_sampling))
    if a.use_kl_loss:
        with timer.phase("ref_logprob"):
            attach(samples, "ref_logprobs", run.policy.compute_logprobs(samples, which="ref", **like_sampling))

    # 6. policy update: mini-batches of whole groups, each one optimizer step
    with timer.phase("update"):
        results = []
        for _epoch in range(a.ppo_epochs):
            for mb in minibatches(samples, a.global_batch_size):
                denominator = batch_denominator(mb, a.loss_agg_mode)
                results.append(run.policy.update_policy(mb, denominator=denominator, temperature=r.temperature))
    update = grpo_update_metrics(results, run.policy.world_size)
    run.nonfinite.count(update["actor/skipped_updates"] > 0)
    if a.offload_optimizer:  # until the next step's first update (memory for vLLM and the log-prob passes)
        with timer.phase("offload"):
            update["actor/offloaded_gib"] = run.policy.offload_optimizer() / 2**30

    # 7. weight sync (once the rollout workers finished the batch running ahead), then check that
    # rollout and policy agree on the same tokens
    if ahead is not None:
        with timer.phase("rollout_wait"):
            ahead.wait()
    with timer.phase("sync"):
        run.weights.push()
    sync = {}
    if r.check_logprob_sync:  # on the first response of the first two groups
        responses = [g.token_ids for g in batch.groups[0][:1] + batch.groups[1 % len(batch.groups)][:1]]
        sync["sync/logprob_mae"] = logprob_agreement(run.policy, run.rollout, batch.prompts[:2], responses, a.micro_batch_size)

    # 8. metrics
    step_metrics = rollout_metrics(batch, rewards, r.n, decode_errors=decode_errors, step_s=timer.elapsed())
    overlap = {"rollout/staleness": float(staleness)} if ahead is not None else {}
    return {**batch.metrics, **update, **sync, **step_metrics, **overlap, **timer.metrics()}


def generate_and_score(run: Run, train, sampler, step: int, timer: PhaseTimer) -> Rollouts:
    """`data.rollout_batch_size` prompts with `rollout.n` scored responses each (GRPO steps 1-3),
    timed by `timer` (a batch generated ahead carries its own times, `timing/generate_s` and
    `timing/reward_s`, in its metrics)."""
    import reward

    cfg = run.cfg

    def generate(prompts: list[dict[str, Any]], round_: int):
        with timer.phase("generate"):
            seed = cfg.trainer.seed * 100003 + step * 97 + round_  # the same responses when a run is repeated or resumed
            return run.rollout.generate(prompts, sampling_params(cfg, validation=False, seed=seed))

    def score(prompts: list[dict[str, Any]], groups):
        with timer.phase("reward"):
            scored = score_groups(run.reward_fn, prompts, groups)
            reward.check_unscorable(scored, cfg.reward.max_unscorable_fraction, run.reward_fn.name)
        return scored

    # A row whose image fails to decode is replaced by the next one that decodes
    # (ovlt_rl/data/items.py): the same on a resume, and the batch keeps its size.
    return collect_groups(lambda: train.batch(next(sampler)), generate, score, want=cfg.data.rollout_batch_size, n=cfg.rollout.n,
                          dynamic_sampling=cfg.algorithm.dynamic_sampling, max_rounds=cfg.algorithm.max_sampling_rounds)


def generate_ahead(run: Run, train, sampler, step: int) -> Rollouts:
    """generate_and_score in the overlap thread, with the batch's own generation and reward times in its metrics."""
    timer = PhaseTimer()
    batch = generate_and_score(run, train, sampler, step, timer)
    batch.metrics.update(timer.metrics())
    return batch


# ---------------------------------------------------------------------------------------------
# SFT


def run_sft(cfg: Config) -> Path:
    from ovlt_rl.data.loader import EpochIterator

    a = cfg.actor
    with Run(cfg) as run:
        train, val = open_datasets(cfg, run.processor, sft=True)
        # Held-out rows for the validation loss: the last ones, never trained on.
        n_loss = int(len(train) * cfg.data.val_loss_fraction)
        n_train = len(train) - n_loss
        loss_rows = list(range(n_train, len(train)))
        steps = total_steps(cfg, n_train, a.global_batch_size)
        sampler = EpochIterator(n_train, a.global_batch_size, seed=cfg.trainer.seed, shuffle=cfg.data.shuffle, drop_last=True)
        # Validation accuracy needs generation: one rollout worker receives the weights at validation
        # (at the end at least, and every trainer.val_every steps).
        run.start_workers(total_opt_steps=steps, with_rollout=val is not None)
        if val is not None:
            run.load_reward()
        start_step = run.begin(sampler, train, steps, "sft")
        if start_step == 0 and val is not None and cfg.trainer.val_before_train:
            run.tracker.log(0, validate(run, val, 0))
        for step in range(start_step + 1, steps + 1):
            metrics = sft_step(run, train, sampler, n_train)
            if is_step(step, cfg.trainer.val_every, steps):
                loss_items = train.present(loss_rows) if loss_rows else []
                if loss_items:
                    metrics["val/loss"] = val_loss(run.policy, [sft_sample(it) for it in loss_items])
                if val is not None:
                    run.weights.push()
                    metrics.update(validate(run, val, step))
            run.end_step(step, metrics, postfix_keys=("sft/loss", "val/accuracy", "throughput/tokens_per_s"))
        run.save_final_model()
    return run.out


def sft_step(run: Run, train, sampler, n_train: int) -> dict[str, Any]:
    """One optimizer step of masked cross-entropy over `actor.global_batch_size` samples; its metrics."""
    timer = PhaseTimer()
    items, used = train.batch(next(sampler), within=n_train)  # refilled where an image fails to decode
    samples = [sft_sample(it) for it in items]
    denominator = batch_denominator(samples, "token-mean")
    update = sft_update_metrics(run.policy.sft_step(samples, denominator=denominator), denominator)
    run.nonfinite.count(update["sft/skipped_updates"] > 0)
    step_s = timer.elapsed()
    return {
        **update,
        "data/indices": used,
        "data/decode_errors": float(train.skipped["decode_error"]),
        "throughput/tokens_per_s": sum(int(len(s["input_ids"])) for s in samples) / step_s,
        "timing/step_s": step_s,
    }
