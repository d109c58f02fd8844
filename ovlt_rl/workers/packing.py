"""Padding-free micro-batches: planning by token budget and packing samples into one row.

Planning. `plan_micro_batches` groups a rank's samples into micro-batches, either a fixed number
of samples each (`micro_batch_size`) or greedily under a token budget (`max_tokens`), from
samples sorted by length. The cost of a micro-batch is what the model computes on: the sum of
the lengths when packed, rows x longest row when padded. Every rank of an FSDP group must run
the same number of micro-batches (each forward and backward is a collective), so
`split_to_count` brings a rank's plan up to the group's largest count by splitting its largest
micro-batches; only a rank with fewer samples than that count needs dummy micro-batches.

Packing. `pack_batch` concatenates the samples of a micro-batch into a single row of T tokens,
with Qwen2.5-VL's position ids computed per sample (each sample's positions restart at 0):

    position_ids [4, 1, T]: row 0 the text positions (0..L_i-1 per sample), rows 1-3 the 3-D
                            mRoPE positions (temporal, height, width) from the model's own
                            `get_rope_index`, run on each sample alone

and no attention mask. transformers reads row 0 to find the sample boundaries (a new sample
wherever the position does not grow by one): its eager/sdpa mask builders then make a
block-diagonal causal mask, flash-attention and ovlt's packed attention run variable-length
attention over the same boundaries. So attention never crosses samples and every token sees the
positions it would see alone. The per-token tensors the losses use (loss_mask, old log-probs,
advantages, ...) stay in the padded [B, L] layout of `build_batch`, so the loss code does not
change; `token_logprobs` maps the packed row back to that layout.
"""

from __future__ import annotations

from typing import Any, Callable

import torch

from ovlt_rl.models.sequences import build_batch


def _cost(group: list[int], lengths: list[int], padded: bool) -> int:
    if not group:
        return 0
    return len(group) * max(lengths[i] for i in group) if padded else sum(lengths[i] for i in group)


def plan_micro_batches(lengths: list[int], *, micro_batch_size: int, max_tokens: int, padded: bool) -> list[list[int]]:
    """Indices of the samples of each micro-batch.

    max_tokens <= 0: groups of `micro_batch_size` samples of similar length (sorted ascending).
    max_tokens > 0: as few micro-batches as fit the budget. Padded: consecutive samples in
    ascending length while rows x longest <= max_tokens. Packed: first-fit decreasing on the sum
    of lengths. A sample longer than the budget gets a micro-batch of its own (see
    `over_budget`); nothing is dropped or truncated.
    """
    if micro_batch_size < 1:
        raise ValueError(f"micro_batch_size must be >= 1, got {micro_batch_size}")
    order = sorted(range(len(lengths)), key=lambda i: lengths[i])
    if max_tokens <= 0:
        return [order[s : s + micro_batch_size] for s in range(0, len(order), micro_batch_size)]
    if padded:
        groups: list[list[int]] = []
        cur: list[int] = []
        for i in order:  # ascending: the sample being added is the longest of `cur`
            if cur and (len(cur) + 1) * lengths[i] > max_tokens:
                groups.append(cur)
                cur = []
            cur.append(i)
        if cur:
            groups.append(cur)
        return groups
    groups, loads = [], []
    for i in reversed(order):
        for g, load in enumerate(loads):
            if load + lengths[i] <= max_tokens:
                groups[g].append(i)
                loads[g] += lengths[i]
                break
        else:
            groups.append([i])
            loads.append(lengths[i])
    return groups


def over_budget(lengths: list[int], max_tokens: int) -> int:
    """How many samples are longer than the token budget (each then runs alone)."""
    return sum(n > max_tokens for n in lengths) if max_tokens > 0 else 0


def split_to_count(groups: list[list[int]], lengths: list[int], target: int, *, padded: bool) -> tuple[list[list[int]], int]:
    """Split the costliest micro-batches until there are `target` of them.

    Returns (groups, dummies): `dummies` > 0 only when every micro-batch is down to one sample
    and the count is still short; the caller then runs that many dummy micro-batches (a real
    sample whose loss is multiplied by 0), so that its collectives match the other ranks'.
    """
    groups = [list(g) for g in groups]
    if len(groups) > target:
        raise ValueError(f"{len(groups)} micro-batches is more than the target {target}")
    while len(groups) < target:
        splittable = [g for g in groups if len(g) > 1]
        if not splittable:
            return groups, target - len(groups)
        big = max(splittable, key=lambda g: _cost(g, lengths, padded))
        groups.remove(big)
        halves: tuple[list[int], list[int]] = ([], [])
        for i in sorted(big, key=lambda i: -lengths[i]):  # longest first, each to the lighter half
            min(halves, key=lambda h: sum(lengths[j] for j in h)).append(i)
        groups += [sorted(h, key=lambda i: lengths[i]) for h in halves]
    return groups, 0


def mrope_positions(backbone: torch.nn.Module, sample: dict[str, Any]) -> torch.Tensor:
    """The [3, L] mRoPE position ids of one sample on its own, by the model's `get_rope_index`."""
    ids = sample["input_ids"]
    mm = sample["mm_token_type_ids"]
    grid = sample.get("image_grid_thw")
    if grid is None and bool(mm.any()):
        raise ValueError("sample has image tokens (mm_token_type_ids) but no image_grid_thw")
    pos, _ = backbone.get_rope_index(
        input_ids=ids[None], mm_token_type_ids=mm[None], image_grid_thw=None if grid is None else grid.reshape(-1, 3)
    )
    return pos[:, 0]


def pack_batch(
    samples: list[dict[str, Any]],
    pad_token_id: int,
    positions: Callable[[dict[str, Any]], torch.Tensor],
    per_token_keys: tuple[str, ...] = (),
) -> dict[str, Any]:
    """One packed row of `samples` for the model, per-token tensors in the padded [B, L] layout.

    Keys: input_ids, mm_token_type_ids [1, T]; position_ids [4, 1, T]; pixel_values and
    image_grid_thw (images in sample order, as the image tokens appear in the row); valid [B, L]
    (True on real tokens: the packed row is the padded batch's valid tokens in row-major order);
    loss_mask and `per_token_keys` [B, L]. No attention_mask: the position ids carry the boundaries.
    """
    batch = build_batch(samples, pad_token_id, per_token_keys)
    valid = batch.pop("attention_mask").bool()
    batch["input_ids"] = batch["input_ids"][valid][None]
    batch["mm_token_type_ids"] = batch["mm_token_type_ids"][valid][None]
    text = torch.cat([torch.arange(len(s["input_ids"])) for s in samples])
    mrope = torch.cat([positions(s) for s in samples], dim=1)
    batch["position_ids"] = torch.cat([text[None], mrope.to(text.dtype)])[:, None, :]
    batch["valid"] = valid
    return batch
