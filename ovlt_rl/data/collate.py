"""Batching dataset items: left padding for generation, right padding for SFT.

How it works: items hold unpadded 1-D `input_ids` (and `mm_token_type_ids`, `labels_mask`).
`collate_prompts` pads on the LEFT, so every prompt ends at the last column and generation appends
after it; `collate_sft` pads on the RIGHT. Both return `attention_mask` (0 on padding), the images'
`pixel_values` concatenated in item order (the Qwen2.5-VL vision tower takes all patches of the
batch in one tensor) and `image_grid_thw` concatenated to (n_images, 3), or None when no item has an
image. Every other key becomes a list, in item order.

Qwen2.5-VL computes its 3-D mRoPE positions inside the model (get_rope_index) from input_ids,
mm_token_type_ids, image_grid_thw and attention_mask; it numbers only the tokens the attention mask
keeps, so left padding gives each row the same positions as the row alone. Pass `attention_mask`
and `mm_token_type_ids` to the model: without `mm_token_type_ids`, transformers 5 silently falls
back to 1-D positions for image tokens. Padding uses `pad_token_id`, which the model never sees
unmasked. `model_inputs(batch)` picks exactly the tensors the model takes, leaving out the image
keys of a text-only batch (transformers 5 `generate` fails on an explicit `pixel_values=None`).
"""

from __future__ import annotations

from typing import Any, Sequence

import torch

_PADDED = ("input_ids", "mm_token_type_ids", "labels_mask")
_IMAGE = ("pixel_values", "image_grid_thw")
MODEL_INPUT_KEYS = ("input_ids", "attention_mask", "mm_token_type_ids", "pixel_values", "image_grid_thw")


def _pad(seqs: list[torch.Tensor], value: int, left: bool) -> torch.Tensor:
    width = max(len(s) for s in seqs)
    out = torch.full((len(seqs), width), value, dtype=seqs[0].dtype)
    for i, s in enumerate(seqs):
        if left:
            out[i, width - len(s) :] = s
        else:
            out[i, : len(s)] = s
    return out


def _collate(items: Sequence[dict[str, Any]], pad_token_id: int, left: bool) -> dict[str, Any]:
    if not items:
        raise ValueError("cannot collate an empty batch")
    batch: dict[str, Any] = {}
    for key in _PADDED:
        if key in items[0]:
            batch[key] = _pad([it[key] for it in items], pad_token_id if key == "input_ids" else 0, left)
    batch["attention_mask"] = _pad([torch.ones(len(it["input_ids"]), dtype=torch.long) for it in items], 0, left)
    for key in _IMAGE:
        parts = [it[key] for it in items if it.get(key) is not None]
        batch[key] = torch.cat(parts) if parts else None
    for key in items[0]:
        if key not in batch:
            batch[key] = [it[key] for it in items]
    return batch


def collate_prompts(items: Sequence[dict[str, Any]], pad_token_id: int) -> dict[str, Any]:
    """Left-padded batch for generation (see the module docstring)."""
    return _collate(items, pad_token_id, left=True)


def collate_sft(items: Sequence[dict[str, Any]], pad_token_id: int) -> dict[str, Any]:
    """Right-padded batch for SFT; `labels_mask` is 0 on padding."""
    return _collate(items, pad_token_id, left=False)


def model_inputs(batch: dict[str, Any]) -> dict[str, torch.Tensor]:
    """The keyword arguments for the model's forward/generate: the tensors above, None ones left out."""
    return {k: batch[k] for k in MODEL_INPUT_KEYS if batch.get(k) is not None}
