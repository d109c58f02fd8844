"""Attention for packed rows (several samples in one row, no padding), as a transformers
attention implementation named "ovlt_packed".

transformers 5 passes the text position ids to every attention call; in a packed row they restart
at each sample (see `ovlt_rl.workers.packing`). This function finds the sample boundaries there
(the rule transformers' own `find_packed_sequence_indices` uses: a new sample wherever the position
does not grow by one) and attends within each sample, causally:

- on CUDA in bf16/fp16: one call of torch's variable-length flash attention
  (`torch.nn.attention.varlen.varlen_attn`) over the whole row, no mask, no padding;
- otherwise (CPU, fp32, or a torch without varlen_attn): transformers' SDPA on each sample in turn.

The varlen plumbing (finding the function, probing it, torch's API versions) is shared with the
vision tower's window attention and lives in `ovlt_rl.models.varlen`.

Calls without packed position ids (an attention mask given, or no text positions) go to
transformers' SDPA unchanged, so a model set to "ovlt_packed" still runs padded batches exactly
as "sdpa" does. `use_packed_attention(model)` switches a Qwen2.5-VL model's text decoder to it;
the vision tower has its own (`ovlt_rl.models.vision_attention`: it attends within windows).
"""

from __future__ import annotations

import functools

import torch

from ovlt_rl.models.varlen import varlen_attention, varlen_usable

NAME = "ovlt_packed"


@functools.lru_cache(maxsize=8)
def segments(text_positions: torch.Tensor) -> tuple[torch.Tensor, list[int], int]:
    """(cu_seqlens int32 [N+1] on the device, the same as a list, longest length) of a packed row.

    Cached by tensor identity: transformers passes the same position tensor to every layer (and
    checkpointing replays it), so the device-to-host copy happens once per forward, not per layer.
    """
    if text_positions.dim() != 2 or text_positions.shape[0] != 1:
        raise ValueError(f"packed attention needs text positions of shape [1, T], got {tuple(text_positions.shape)}")
    pos = text_positions[0]
    starts = torch.ones_like(pos, dtype=torch.bool)
    starts[1:] = pos[1:] - pos[:-1] != 1
    bounds = torch.cat([starts.nonzero().flatten(), pos.new_tensor([pos.numel()])]).tolist()
    cu = torch.tensor(bounds, dtype=torch.int32, device=pos.device)
    return cu, bounds, max(b - a for a, b in zip(bounds[:-1], bounds[1:]))


def kernel_for(device_type: str, dtype: torch.dtype) -> str:
    """Which attention packed rows get on this device and dtype (for logs and benchmark records)."""
    return "torch varlen flash attention" if varlen_usable(device_type, dtype, causal=True) else "SDPA per sample"


# Eager under torch.compile (actor.compile): the sample bounds are read on the host and cached by
# tensor identity (`segments`), which dynamo would trace through (one host sync per layer).
@torch.compiler.disable
def packed_attention(module, query, key, value, attention_mask, position_ids=None, dropout=0.0, scaling=None, **kwargs):
    """transformers attention interface: (module, q, k, v, mask, ...) -> ([B, T, H, D], None)."""
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    if position_ids is None or attention_mask is not None or query.shape[0] != 1:
        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout, scaling=scaling, **kwargs)
    if dropout:
        raise ValueError("ovlt_packed attention has no dropout (Qwen2.5-VL trains with attention_dropout 0)")
    cu, bounds, max_len = segments(position_ids)
    out = varlen_attention(query, key, value, cu, max_len, scaling, causal=True)  # None: not usable here
    if out is not None:
        return out, None
    pieces = [
        sdpa_attention_forward(module, query[:, :, a:b], key[:, :, a:b], value[:, :, a:b], None, scaling=scaling)[0]
        for a, b in zip(bounds[:-1], bounds[1:])
    ]
    return torch.cat(pieces, dim=1), None


def register() -> None:
    """Make "ovlt_packed" known to transformers (attention and mask builders); idempotent."""
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface, flash_attention_mask, sdpa_mask

    def mask(*args, attention_mask=None, **kwargs):
        # Packed rows (no padding mask): no mask at all, like flash attention; the boundaries come
        # from the position ids. Padded batches: exactly the mask SDPA would get.
        if attention_mask is None:
            return flash_attention_mask(*args, attention_mask=None, **kwargs)
        return sdpa_mask(*args, attention_mask=attention_mask, **kwargs)

    AttentionInterface.register(NAME, packed_attention)
    AttentionMaskInterface.register(NAME, mask)


def use_packed_attention(model: torch.nn.Module) -> None:
    """Switch a Qwen2.5-VL model's text decoder to "ovlt_packed" (vision tower unchanged)."""
    register()
    model.set_attn_implementation({"text_config": NAME})
    got = model.config.get_text_config()._attn_implementation
    if got != NAME:
        raise RuntimeError(f"could not set the text attention to {NAME!r} (it is {got!r})")
