"""Group-relative advantages (GRPO, Dr.GRPO) and DAPO-style dynamic sampling.

GRPO samples a *group* of responses per prompt and scores each one. Instead of a learned
value function, the baseline of a response is the mean reward of its group:

    A_i = (r_i - mean_g) / (std_g + eps)      (GRPO, norm_by_std=True)
    A_i =  r_i - mean_g                       (Dr.GRPO, norm_by_std=False)

Dr.GRPO (Liu et al., 2025, "Understanding R1-Zero-Like Training") drops the division by
std because it up-weights groups that are nearly all right or all wrong (tiny std), a
difficulty bias.

Unscorable samples. The reward contract lets a reward function return ``None`` (or fail,
time out, or return a non-finite number); the driver turns those into NaN rewards. Such a
sample says nothing about the quality of the response, so it is left out of its group's
statistics and gets advantage 0 (no gradient from its tokens). Treating it as reward 0
instead would push the policy away from responses that merely could not be graded.

Groups without signal. A group whose scorable rewards are all equal (all right, all wrong),
or that has fewer than two scorable members, has no relative signal: every advantage is 0,
exactly, never NaN. DAPO (Yu et al., 2025) drops such groups and samples more prompts to
refill the batch ("dynamic sampling"); ``dynamic_sampling_keep`` is the mask for that.

Standard deviation: the unbiased estimator (Bessel's correction, divide by n - 1), the same
as ``torch.std``'s default that verl and EasyR1 use, so that advantages here equal theirs for
the same rewards. It is undefined for one member, which is one more reason why size-1 groups
get 0.
"""

from __future__ import annotations

import math
from collections.abc import Hashable, Sequence

import torch

from ovlt_rl.algos._mask import as_bool_mask

GroupIds = torch.Tensor | Sequence[Hashable]


def rewards_tensor(values: Sequence[float | None]) -> torch.Tensor:
    """Turn reward-function outputs (float or None) into the float32 [B] tensor used here.

    ``None`` becomes NaN, the "unscorable" marker. A non-finite float is an error: the reward
    layer is where non-finite results are counted and turned into ``None``; reaching this point
    with one means that layer was bypassed.
    """
    out = []
    for i, v in enumerate(values):
        if v is None:
            out.append(math.nan)
            continue
        v = float(v)
        if not math.isfinite(v):
            raise ValueError(f"rewards[{i}] is {v}: non-finite rewards must arrive as None (unscorable)")
        out.append(v)
    return torch.tensor(out, dtype=torch.float32)


def _group_index(group_ids: GroupIds, n: int, device: torch.device) -> tuple[torch.Tensor, int]:
    """Map arbitrary group ids (ints, strings, uids) to dense indices 0..G-1.

    Returns (index LongTensor [n] on ``device``, G). Dense indices let every per-group
    statistic be one ``index_add_`` instead of a Python loop over groups.
    """
    if isinstance(group_ids, torch.Tensor):
        if group_ids.dim() != 1 or group_ids.numel() != n:
            raise ValueError(f"group_ids must have shape [{n}], got {tuple(group_ids.shape)}")
        if group_ids.is_floating_point():
            raise ValueError("group_ids must be an integer tensor (or a list of hashables), got floating point")
        uniq, inverse = torch.unique(group_ids, return_inverse=True)
        return inverse.to(device), int(uniq.numel())
    if isinstance(group_ids, (str, bytes)) or len(group_ids) != n:
        raise ValueError(f"group_ids must be a sequence of {n} ids, got {type(group_ids).__name__} "
                         f"of length {len(group_ids)}")
    dense: dict[Hashable, int] = {}
    index = [dense.setdefault(g, len(dense)) for g in group_ids]
    return torch.tensor(index, dtype=torch.long, device=device), len(dense)


def _check_rewards(rewards: torch.Tensor) -> None:
    if not isinstance(rewards, torch.Tensor) or rewards.dim() != 1 or not rewards.is_floating_point():
        shape = tuple(rewards.shape) if isinstance(rewards, torch.Tensor) else type(rewards).__name__
        raise ValueError(f"rewards must be a 1-D floating tensor (NaN = unscorable), got {shape}")
    if torch.isinf(rewards).any():
        bad = torch.nonzero(torch.isinf(rewards)).flatten().tolist()
        raise ValueError(f"rewards has infinite values at {bad}; unscorable rewards must be NaN")


def _group_stats(rewards: torch.Tensor, index: torch.Tensor, num_groups: int):
    """Per-group (count, mean, unbiased std, has_signal) over scorable (non-NaN) members, in float64.

    float64 because rewards are few and the variance of near-equal rewards loses digits in
    float32; the cost is nothing next to a forward pass.
    """
    r = rewards.double()
    scorable = ~torch.isnan(r)
    r0 = torch.where(scorable, r, 0.0)
    zeros = torch.zeros(num_groups, dtype=torch.float64, device=r.device)
    count = zeros.index_add(0, index, scorable.double())
    mean = zeros.index_add(0, index, r0) / count.clamp(min=1)
    dev = torch.where(scorable, r - mean[index], 0.0)
    var = zeros.index_add(0, index, dev * dev) / (count - 1).clamp(min=1)
    # "All equal" is decided by max == min, not by std == 0: the mean of equal floats such as
    # three 0.1s is not exactly 0.1, so r - mean would be a tiny nonzero number.
    rmax = zeros.scatter_reduce(0, index, torch.where(scorable, r, -math.inf), "amax", include_self=False)
    rmin = zeros.scatter_reduce(0, index, torch.where(scorable, r, math.inf), "amin", include_self=False)
    has_signal = (count >= 2) & (rmax > rmin)
    return scorable, mean, var.sqrt(), has_signal


def grpo_advantages(rewards: torch.Tensor, group_ids: GroupIds, *, norm_by_std: bool = True,
                    eps: float = 1e-6) -> torch.Tensor:
    """Group-relative advantage per sample, [B], same dtype as ``rewards``.

    rewards: float [B]; NaN marks an unscorable sample (reward ``None``).
    group_ids: [B] integer tensor or a sequence of hashables (e.g. prompt uids); samples with
        equal ids form a group. Groups need not be contiguous or of equal size.
    norm_by_std: True gives GRPO, ``(r - mean) / (std + eps)``; False gives Dr.GRPO, ``r - mean``.
    eps: added to the std (not the variance), as verl and EasyR1 do.

    mean and std (unbiased) use only the scorable members of each group. Unscorable samples,
    members of groups with fewer than two scorable members, and members of groups whose
    scorable rewards are all equal get exactly 0.
    """
    _check_rewards(rewards)
    if eps < 0:
        raise ValueError(f"eps must be >= 0, got {eps}")
    index, num_groups = _group_index(group_ids, rewards.numel(), rewards.device)
    if rewards.numel() == 0:
        return rewards.clone()
    scorable, mean, std, has_signal = _group_stats(rewards, index, num_groups)
    centred = rewards.double() - mean[index]
    adv = centred / (std[index] + eps) if norm_by_std else centred
    adv = torch.where(scorable & has_signal[index], adv, 0.0)
    return adv.to(rewards.dtype)


def dynamic_sampling_keep(rewards: torch.Tensor, group_ids: GroupIds) -> torch.Tensor:
    """Per-sample bool mask [B]: True where the sample's group carries a learning signal.

    DAPO-style dynamic sampling drops every group whose scorable rewards are all equal: all its
    advantages are 0, so it only dilutes the batch. Groups with fewer than two scorable members
    are dropped for the same reason. The mask is constant within a group, so indexing a batch
    with it removes whole groups; the unscorable members of a kept group stay in it (their
    advantage is 0). A group is kept exactly when ``grpo_advantages`` gives it nonzero values.
    """
    _check_rewards(rewards)
    index, num_groups = _group_index(group_ids, rewards.numel(), rewards.device)
    if rewards.numel() == 0:
        return torch.zeros(0, dtype=torch.bool, device=rewards.device)
    _, _, _, has_signal = _group_stats(rewards, index, num_groups)
    return has_signal[index]


def kept_group_count(keep: torch.Tensor, group_ids: GroupIds) -> int:
    """Number of distinct groups kept by a ``dynamic_sampling_keep`` mask.

    The driver compares this with the number of prompts it wants per update and samples more
    prompts while it falls short (DAPO's refill loop). Raises if the mask is not constant within
    a group, since then it did not come from ``dynamic_sampling_keep``.
    """
    if keep.dtype != torch.bool or keep.dim() != 1:
        raise ValueError(f"keep must be a 1-D bool tensor, got {keep.dtype} {tuple(keep.shape)}")
    index, num_groups = _group_index(group_ids, keep.numel(), keep.device)
    kept = torch.zeros(num_groups, dtype=torch.long, device=keep.device).index_add(0, index, keep.long())
    size = torch.zeros(num_groups, dtype=torch.long, device=keep.device).index_add(0, index, torch.ones_like(index))
    if ((kept != 0) & (kept != size)).any():
        raise ValueError("keep mask differs within a group; build it with dynamic_sampling_keep")
    return int((kept > 0).sum())


def token_advantages(advantages: torch.Tensor, response_mask: torch.Tensor) -> torch.Tensor:
    """Broadcast per-sequence advantages [B] to response tokens [B, T]; 0 outside the mask.

    GRPO gives every token of a response the same (outcome) advantage. Zeroing masked positions
    keeps padding out of any sum even if a caller forgets to mask later.
    """
    if advantages.dim() != 1 or response_mask.dim() != 2 or response_mask.shape[0] != advantages.shape[0]:
        raise ValueError(f"need advantages [B] and response_mask [B, T], got {tuple(advantages.shape)} "
                         f"and {tuple(response_mask.shape)}")
    mask = as_bool_mask(response_mask, "response_mask")
    return torch.where(mask, advantages.unsqueeze(-1), torch.zeros((), dtype=advantages.dtype,
                                                                   device=advantages.device))
