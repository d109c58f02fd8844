"""The run skeleton both loops share: output folder and its lock, workers, resume, the
non-finite streak, per-step logging and checkpoints, the final model, and shutdown.

    with Run(cfg) as run:                                # closes everything however the block ends
        run.start_workers(total_opt_steps=..., with_rollout=...)
        start = run.begin(sampler, train, total_steps, "grpo")   # resume (or not), config.yaml, tracker
        for step in range(start + 1, total_steps + 1):
            ...                                          # the loop's own step
            run.nonfinite.count(skipped)                 # stops the run after too many in a row
            run.end_step(step, metrics, postfix_keys)    # log, and a checkpoint every trainer.save_every
        run.save_final_model()
"""

from __future__ import annotations

import logging
import os
from dataclasses import asdict
from pathlib import Path
from typing import Any

from ovlt_rl.config import Config, to_yaml
from ovlt_rl.driver.timer import PhaseTimer

log = logging.getLogger("ovlt")


class Run:
    """What both loops need: output folder, model path, processor, Ray workers, checkpoints, tracker."""

    def __init__(self, cfg: Config):
        from ovlt_rl.checkpoint import CheckpointManager
        from ovlt_rl.config_change import check_resume_config
        from ovlt_rl.data.formats import require_sources
        from ovlt_rl.models.loading import load_processor, resolve_model_path
        from ovlt_rl.models.paths import check_model_path
        from ovlt_rl.run_lock import OutputLock

        # Before anything starts: a bad path is one line naming it, not a Hub error from a worker.
        # (The reference model is a copy of model.path.)
        check_model_path(cfg.model.path, "model.path")
        absolute_paths(cfg)
        self.cfg = cfg
        self.out = Path(cfg.trainer.output_dir)
        self.policy = self.rollout = self.weights = self.reward_fn = self.tracker = None
        # Held until shutdown (or the process's end, however it ends): one run per output folder.
        self.lock = OutputLock(self.out).acquire()
        try:
            self.ckpt = CheckpointManager(self.out / "checkpoints", keep=cfg.trainer.keep_checkpoints)
            self.resume_timer = PhaseTimer()  # verifying, then loading a checkpoint (logged on resume)
            with self.resume_timer.phase("verify"):  # the sha256 checks (a 7B checkpoint: seconds to a minute)
                newest = self.ckpt.latest()  # raises if checkpoints exist but none is valid
            if newest is not None:  # before any work: a resume under a changed meaning stops here
                check_resume_config(newest[1] / "config.yaml", cfg)
            self.model_path = resolve_model_path(cfg.model.path)
            require_sources([*cfg.data.train_files, *cfg.data.val_files])  # a recipe's files: made before the run (ovlt/run_data.py)
            self.processor = load_processor(self.model_path, min_pixels=cfg.data.min_pixels, max_pixels=cfg.data.max_pixels)
            self.pad_id = self.processor.tokenizer.pad_token_id
        except BaseException:
            self.lock.release()
            raise

    def __enter__(self) -> Run:
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()

    # -- workers -----------------------------------------------------------------------------------

    def start_workers(self, total_opt_steps: int, with_rollout: bool) -> None:
        from ovlt_rl.workers.group import PolicyGroup, RolloutGroup, init_ray
        from ovlt_rl.workers.shared_storage import check_shared
        from ovlt_rl.workers.weight_syncer import WeightSyncer

        cfg = self.cfg
        init_ray(cfg, cfg.actor.num_workers + (cfg.rollout.num_workers if with_rollout else 0) + 1)
        self.policy = PolicyGroup(cfg, self.model_path)
        check_shared(self.out, self.policy.workers)  # checkpoints need one output folder for all ranks
        info = self.policy.setup(total_opt_steps=total_opt_steps)
        log.info("policy: %d ranks, %.2fM parameters (%.2fM trainable) on %s", self.policy.world_size,
                 info["params"] / 1e6, info["trainable"] / 1e6, info["device"])
        if with_rollout:
            self.rollout = RolloutGroup(cfg, self.model_path)
            self.weights = WeightSyncer(cfg, self.policy, self.rollout, info["device"])

    def load_reward(self) -> None:
        import reward

        self.reward_fn = reward.load_from_config(self.cfg.reward)

    # -- the loop's frame --------------------------------------------------------------------------

    def begin(self, sampler, train, total_steps: int, desc: str) -> int:
        """Resume from the newest usable checkpoint, if any, and open the tracker; the step to
        continue after (0: a fresh start). `sampler` and `train` are the loop's data order and
        dataset, whose state every checkpoint keeps."""
        from ovlt_rl.tracking import Tracker

        self.sampler, self.train, self.total_steps = sampler, train, total_steps
        start_step, in_a_row = self._resume()
        self.nonfinite = NonfiniteStreak(self.cfg.actor.max_nonfinite_in_a_row, in_a_row, self.ckpt.root)
        t = self.cfg.trainer
        self.tracker = Tracker(list(t.loggers), self.out, total_steps=total_steps, start_step=start_step,
                               project=t.project, experiment=t.experiment, config=asdict(self.cfg), desc=desc)
        return start_step

    def data_state(self) -> dict[str, Any]:
        """Where the data order stands: the sampler, and the rows whose images failed to decode."""
        return {"sampler": self.sampler.state_dict(), "decode_failures": self.train.state_dict()}

    def end_step(self, step: int, metrics: dict[str, Any], postfix_keys: tuple[str, ...], data_state: dict[str, Any] | None = None) -> None:
        """Log the step's metrics, then checkpoint every trainer.save_every steps and at the last.
        `data_state`: the data order to resume from, when it is not the current one (a batch
        generated ahead has drawn rows that this checkpoint's step has not trained)."""
        self.tracker.log(step, metrics, postfix_keys=postfix_keys)
        self.tracker.advance()
        if is_step(step, self.cfg.trainer.save_every, self.total_steps):
            driver_state = {"step": step, "nonfinite_in_a_row": self.nonfinite.in_a_row, **(data_state or self.data_state())}
            self.save_checkpoint(step, driver_state)

    def save_checkpoint(self, step: int, driver_state: dict[str, Any]) -> Path:
        return self.ckpt.save(step, self.policy.save_checkpoint, driver_state, extra_files={"config.yaml": to_yaml(self.cfg)})

    def save_final_model(self) -> None:
        if self.cfg.trainer.save_hf:
            self.policy.save_hf(str(self.out / "hf"), max_shard_size=self.cfg.trainer.hf_max_shard_size)
            self.tracker.write(f"model: {self.out / 'hf'}")

    def _resume(self) -> tuple[int, int]:
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
            self.policy.load_checkpoint(str(path))
            loaded.update(state)

        # raises if checkpoints exist but none can be resumed; a refused config is no load failure
        with self.resume_timer.phase("load"):
            found = self.ckpt.resume(load, fatal=(ConfigChangeRefused,))
            if found is not None:  # outside the fallback: a data error here is the run's, not the checkpoint's
                self.sampler.load_state_dict(loaded["sampler"])
                # Rows whose images failed to decode before the checkpoint keep counting against
                # data.max_bad_fraction; checkpoints written before decode skips existed have none.
                if "decode_failures" not in loaded:
                    log.warning("resume: %s predates decode-failure counts; counting from none", found[1])
                self.train.load_state_dict(loaded["decode_failures"] if "decode_failures" in loaded else [])
        write_config(self.out, self.cfg)
        if found is None:
            return 0, 0
        step, path = found
        if self.weights is not None:
            self.weights.push()
        log.info("resume: checksums verified in %.2f s, state loaded in %.2f s", self.resume_timer.seconds["verify"], self.resume_timer.seconds["load"])
        log.info("resumed from %s (step %d)", path, step)
        return step, loaded["nonfinite_in_a_row"]

    # -- the end -----------------------------------------------------------------------------------

    def close(self) -> None:
        """Release what the run holds, each even when one before it raises (workers and the output
        folder's lock must not leak): the tracker, the reward workers, the Ray workers, the lock."""
        try:
            if self.tracker is not None:
                self.tracker.close()
        finally:
            try:
                if self.reward_fn is not None:
                    self.reward_fn.close()
            finally:
                try:
                    if self.rollout is not None:
                        self.rollout.shutdown()
                    if self.policy is not None:
                        self.policy.shutdown()
                finally:
                    self.lock.release()


class NonfiniteStreak:
    """Steps in a row whose update was skipped for a non-finite loss or grad norm (the policy
    workers skip such an optimizer step); the `limit`-th stops the run before that step is logged
    or checkpointed. Its count goes into every checkpoint, so a resume keeps counting."""

    def __init__(self, limit: int, in_a_row: int, checkpoints: Path):
        self.limit, self.in_a_row, self.checkpoints = limit, in_a_row, checkpoints

    def count(self, skipped: bool) -> None:
        self.in_a_row = self.in_a_row + 1 if skipped else 0
        if self.in_a_row >= self.limit:
            raise RuntimeError(
                f"{self.in_a_row} steps in a row had a non-finite loss or grad norm (actor.max_nonfinite_in_a_row); "
                f"stopping. The last committed checkpoint is intact in {self.checkpoints}"
            )


def is_step(step: int, every: int, last: int) -> bool:
    """Whether `step` is one of every `every` steps (0: none) or the last one."""
    return step == last or (every > 0 and step % every == 0)


def write_config(out: Path, cfg: Config) -> Path:
    """Write `out/config.yaml` (once the run really starts); an earlier, different one is kept as
    config.N.yaml (N = 1, 2, ... in the order the runs started)."""
    text = to_yaml(cfg)
    path = out / "config.yaml"
    if path.is_file() and path.read_text() != text:
        n = 1 + max([int(p.stem.split(".")[1]) for p in out.glob("config.*.yaml") if p.stem.split(".")[1].isdigit()], default=0)
        os.replace(path, out / f"config.{n}.yaml")
    tmp = out / ".config.yaml.tmp"
    tmp.write_text(text)
    os.replace(tmp, path)
    return path


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
