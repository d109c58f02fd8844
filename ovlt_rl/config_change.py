"""What a resume may change in the config.

A resumed run continues the state in its checkpoint, so a config that changes what that state
means (another model or data, another algorithm, lr or batch shape) would make one run out of
two different ones without anybody noticing. On resume the new config is compared with the
`config.yaml` saved in the checkpoint:

- fields in HARMLESS_ON_RESUME (how long to run, how often to save, validate and log, and knobs
  that change memory or speed but not the maths) may change; each change is logged;
- every other field of the tree is a "meaning" field: a change stops the run with an error naming
  the fields, unless `trainer.allow_config_change=true`, which lets it through with a warning.

A field the tree gained since the checkpoint was written counts as changed from its default: the
run that wrote the checkpoint used the default, so a new value there is a change like any other
(refused if it is a meaning field). A field that moved (RENAMED) is compared at its new place; a
field the tree lost is logged (those retired because nothing read them could not have changed a
run: algorithm.adv_estimator, model.tiny_seed, reference.enabled). User dictionaries
(`reward.kwargs`) are compared whole: a key added, removed or changed in them is a change of
that field.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

log = logging.getLogger("ovlt")

HARMLESS_ON_RESUME: tuple[str, ...] = (
    # how long, how often, where to report: the trajectory so far is unchanged
    "trainer.total_steps",  # with a cosine schedule or warmup the lr curve stretches to the new length
    "trainer.total_epochs",
    "trainer.save_every",
    "trainer.keep_checkpoints",
    "trainer.val_every",
    "trainer.val_before_train",
    "trainer.loggers",
    "trainer.project",
    "trainer.experiment",
    "trainer.num_val_generations_logged",
    "trainer.save_hf",
    "trainer.hf_max_shard_size",  # how the final HF folder is split into files
    "trainer.output_dir",  # the folder may be moved
    "trainer.ray_address",
    "trainer.ray_num_cpus",
    "trainer.allow_config_change",
    # memory and speed only: the same gradients (micro-batches accumulate to the mini-batch) and samples
    "actor.micro_batch_size",
    "actor.max_tokens_per_micro_batch",
    "actor.logprob_max_tokens_per_micro_batch",
    "actor.reshard_after_forward",
    "actor.offload_optimizer",
    "actor.compile",
    "model.gradient_checkpointing",
    "rollout.micro_batch_size",
    "rollout.hf_fast_decode",
    "rollout.hf_decode_compile",
    "rollout.check_logprob_sync",
    "rollout.vllm_enforce_eager",
    "rollout.cpu_kv_cache_gib",
    "rollout.gpu_memory_utilization",
    "rollout.enable_prefix_caching",
    "rollout.weight_sync",  # how the same weights reach the rollout workers
    "data.val_batch_size",
    # validation only: what is measured, not what is trained
    "rollout.val_temperature",
    "rollout.val_top_p",
    "rollout.val_n",
    "data.max_val_samples",
    # limits and safety stops on reward code and the run: they stop or count, they don't change the maths
    "reward.num_workers",
    "reward.max_output_bytes",  # how much of reward code's output reaches the log
    "reward.timeout",
    "reward.max_memory_mb",
    "reward.max_cpu_seconds",
    "reward.max_file_size_mb",
    "reward.max_processes",
    "reward.isolate_network",
    "reward.max_unscorable_fraction",
    "actor.max_nonfinite_in_a_row",
    # sections that `ovlt sft` and `ovlt grpo` don't read
    "prepare",
    "eval",
    "cycle",
)


class ConfigChangeRefused(ValueError):
    """A resume with a config whose meaning fields differ from the checkpoint's."""


RENAMED: dict[str, str] = {
    f"prepare.distill.{k}": f"prepare.simulate.{k}"
    for k in ("wrong_rate", "reflect_rate", "verbose_rate", "restate_rate", "vague_rate", "vague_families")
}
"""Old key -> new key, for checkpoints whose config.yaml predates a move."""

OPAQUE = ("reward.kwargs",)
"""Dictionaries of the user's own keys: compared as one value."""


def _flatten(tree: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(tree, dict) and tree and prefix[:-1] not in OPAQUE:
        out: dict[str, Any] = {}
        for k, v in tree.items():
            out.update(_flatten(v, f"{prefix}{k}."))
        return out
    return {prefix[:-1]: tree}


def _harmless(key: str) -> bool:
    return any(key == h or key.startswith(h + ".") for h in HARMLESS_ON_RESUME)


def config_changes(saved: dict[str, Any], new: dict[str, Any],
                   defaults: dict[str, Any]) -> tuple[list[str], list[str], list[str]]:
    """(harmless changes, meaning changes, fields the tree lost), each as 'key: old -> new'.

    `defaults` is the config tree's defaults: what the saved run used for a field it did not have yet."""
    a, b, d = _flatten(saved), _flatten(new), _flatten(defaults)
    a = {RENAMED.get(k, k): v for k, v in a.items()}
    harmless, meaning = [], []
    for key in sorted(b):
        if key in a:
            old, note = a[key], ""
        elif key in d:  # gained since the checkpoint was written
            old, note = d[key], " (the default: the saved config predates this field)"
        else:
            raise KeyError(f"{key}: in the config but not in the config tree's defaults")
        if old != b[key]:
            (harmless if _harmless(key) else meaning).append(f"{key}: {old!r} -> {b[key]!r}{note}")
    lost = [f"{k} (only in the saved config)" for k in sorted(a.keys() - b.keys())]
    return harmless, meaning, lost


def check_resume_config(saved_yaml: Path, cfg: Any) -> list[str]:
    """Compare `cfg` with the checkpoint's saved config; log every change, raise
    ConfigChangeRefused for meaning changes unless cfg.trainer.allow_config_change. Returns the
    changes let through."""
    from omegaconf import OmegaConf

    if not saved_yaml.is_file():
        raise ConfigChangeRefused(f"{saved_yaml} is missing: the checkpoint's config can't be compared with this one")
    import yaml

    try:  # OmegaConf's YAML loader is yaml's SafeLoader: no python tags, nothing constructed but plain data
        saved = OmegaConf.to_container(OmegaConf.load(saved_yaml))
    except (OSError, ValueError, yaml.YAMLError) as e:
        raise ConfigChangeRefused(f"{saved_yaml}: unreadable ({type(e).__name__}), so this resume can't be checked; "
                                  "move that checkpoint away to resume from an earlier one") from None
    if not isinstance(saved, dict):
        raise ConfigChangeRefused(f"{saved_yaml}: not a config (a {type(saved).__name__})")
    new = OmegaConf.to_container(OmegaConf.structured(cfg))
    defaults = OmegaConf.to_container(OmegaConf.structured(type(cfg)))
    harmless, meaning, one_side = config_changes(saved, new, defaults)
    for line in harmless:
        log.info("resume: config changed (allowed): %s", line)
    for line in one_side:
        log.info("resume: config field %s", line)
    if meaning and not cfg.trainer.allow_config_change:
        raise ConfigChangeRefused(
            f"resuming {saved_yaml.parent} with a config that changes the run's meaning: {'; '.join(meaning)}. "
            "Use the checkpoint's values, start a new trainer.output_dir, or pass trainer.allow_config_change=true "
            "to continue the checkpoint under the new values."
        )
    for line in meaning:
        log.warning("resume: config changed (trainer.allow_config_change=true): %s", line)
    return harmless + meaning
