"""RL algorithms as pure torch: group-relative advantages, policy/SFT losses, KL estimators.

No Ray, no models: tensors in, tensors out, so the workers and tests share one implementation.
"""

from ovlt_rl.algos.advantages import (
    dynamic_sampling_keep,
    grpo_advantages,
    kept_group_count,
    rewards_tensor,
    token_advantages,
)
from ovlt_rl.algos.kl import kl_loss, kl_penalty
from ovlt_rl.algos.losses import (
    AGG_MODES,
    aggregate,
    entropy_from_logits,
    log_probs_from_logits,
    loss_denominator,
    masked_nll,
    policy_loss,
)

__all__ = [
    "AGG_MODES",
    "aggregate",
    "dynamic_sampling_keep",
    "entropy_from_logits",
    "grpo_advantages",
    "kept_group_count",
    "kl_loss",
    "kl_penalty",
    "log_probs_from_logits",
    "loss_denominator",
    "masked_nll",
    "policy_loss",
    "rewards_tensor",
    "token_advantages",
]
