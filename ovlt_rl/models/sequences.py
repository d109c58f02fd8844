"""Training sequences: prompt + response rows, batched, and their per-token log-probs.

One representation serves GRPO and SFT. A *sample* is a dict:

    input_ids      1-D LongTensor, the whole sequence (prompt with expanded image tokens + response)
    mm_token_type_ids  1-D LongTensor, 1 on image tokens (transformers 5 needs it for 3-D mRoPE
                   positions; without it image tokens silently get 1-D positions)
    loss_mask      1-D tensor, 1 where the token is one the policy predicts (the response / assistant turn)
    pixel_values, image_grid_thw   the prompt's images (absent for text-only rows)
    + per-token float tensors aligned with input_ids (old_logprobs, ref_logprobs, advantages)

`build_batch` right-pads samples into a batch. Right padding keeps Qwen2.5-VL's mRoPE positions
correct without help: the model derives 3-D positions from input_ids, image_grid_thw and the
attention mask, and trailing pads come after every real token. `ovlt_rl.workers.packing.pack_batch`
puts the same samples into one row without padding instead (a batch with `position_ids`).

`token_logprobs` runs the decoder once and applies the LM head only at the positions that predict
a masked token, in chunks, so fp32 logits for the whole batch over a 152k vocabulary never exist,
in the forward or kept for the backward (each chunk is recomputed there).
"""

from __future__ import annotations

from typing import Any

import torch


def make_sample(prompt: dict[str, Any], response_ids: list[int] | torch.Tensor) -> dict[str, Any]:
    """A GRPO sample from a PromptDataset item and one generated response."""
    p = prompt["input_ids"]
    r = torch.as_tensor(response_ids, dtype=p.dtype)
    sample = {
        "input_ids": torch.cat([p, r]),
        "mm_token_type_ids": torch.cat([prompt["mm_token_type_ids"], torch.zeros(len(r), dtype=torch.long)]),
        "loss_mask": torch.cat([torch.zeros(len(p)), torch.ones(len(r))]),
    }
    if prompt.get("pixel_values") is not None:
        sample["pixel_values"] = prompt["pixel_values"]
        sample["image_grid_thw"] = prompt["image_grid_thw"]
    return sample


def sft_sample(item: dict[str, Any]) -> dict[str, Any]:
    """A training sample from an SFTDataset item (its labels_mask marks the assistant tokens)."""
    sample = {"input_ids": item["input_ids"], "mm_token_type_ids": item["mm_token_type_ids"], "loss_mask": item["labels_mask"].float()}
    if item.get("pixel_values") is not None:
        sample["pixel_values"] = item["pixel_values"]
        sample["image_grid_thw"] = item["image_grid_thw"]
    return sample


def build_batch(samples: list[dict[str, Any]], pad_token_id: int, per_token_keys: tuple[str, ...] = ()) -> dict[str, Any]:
    """Right-pad samples into a batch dict of tensors."""
    lengths = [len(s["input_ids"]) for s in samples]
    L = max(lengths)
    B = len(samples)
    input_ids = torch.full((B, L), pad_token_id, dtype=torch.long)
    mm_types = torch.zeros((B, L), dtype=torch.long)
    attention_mask = torch.zeros((B, L), dtype=torch.long)
    loss_mask = torch.zeros((B, L))
    extra = {k: torch.zeros((B, L)) for k in per_token_keys}
    for i, s in enumerate(samples):
        n = lengths[i]
        input_ids[i, :n] = s["input_ids"]
        mm_types[i, :n] = s["mm_token_type_ids"]
        attention_mask[i, :n] = 1
        loss_mask[i, :n] = s["loss_mask"]
        for k in per_token_keys:
            extra[k][i, :n] = s[k]
    batch: dict[str, Any] = {"input_ids": input_ids, "mm_token_type_ids": mm_types, "attention_mask": attention_mask,
                             "loss_mask": loss_mask, **extra}
    with_images = [s for s in samples if s.get("pixel_values") is not None]
    if with_images:
        batch["pixel_values"] = torch.cat([s["pixel_values"] for s in with_images])
        batch["image_grid_thw"] = torch.cat([s["image_grid_thw"].reshape(-1, 3) for s in with_images])
    return batch


def build_sequences(prompts: list[dict[str, Any]], responses: list[list[int]], pad_token_id: int) -> dict[str, Any]:
    """Batch of prompt+response sequences, with `response_lengths` for slicing results back."""
    samples = [make_sample(p, r) for p, r in zip(prompts, responses)]
    batch = build_batch(samples, pad_token_id)
    batch["response_lengths"] = [len(r) for r in responses]
    batch["prompt_lengths"] = [len(p["input_ids"]) for p in prompts]
    return batch


def _model_parts(model: torch.nn.Module) -> tuple[torch.nn.Module, torch.nn.Module]:
    """(backbone, lm_head) of a Qwen2.5-VL ForConditionalGeneration model."""
    return model.model, model.lm_head


def hidden_states(model: torch.nn.Module, batch: dict[str, Any]) -> torch.Tensor:
    """Last hidden states [rows, L, H] of the backbone (vision tower run on the batch's images).

    A padded batch passes its attention mask; a packed one (`position_ids` [4, 1, T]) passes its
    per-sample positions and no mask, from which transformers finds the sample boundaries.
    """
    backbone, _ = _model_parts(model)
    kwargs = {"input_ids": batch["input_ids"], "use_cache": False}
    if hasattr(backbone, "visual"):  # Qwen2.5-VL (a text-only model, e.g. a reasoner, has no mRoPE types)
        kwargs["mm_token_type_ids"] = batch["mm_token_type_ids"]
    if "position_ids" in batch:
        kwargs["position_ids"] = batch["position_ids"]
    else:
        kwargs["attention_mask"] = batch["attention_mask"]
    if "pixel_values" in batch:
        kwargs["pixel_values"] = batch["pixel_values"]
        kwargs["image_grid_thw"] = batch["image_grid_thw"]
    return backbone(**kwargs).last_hidden_state


def _head_chunk(lm_head: torch.nn.Module, hidden: torch.Tensor, labels: torch.Tensor, with_entropy: bool,
                entropy_grad: bool, temperature: float) -> tuple[torch.Tensor, torch.Tensor]:
    """log p(label) and entropy (empty unless asked) of one chunk of rows, in fp32, at `temperature`."""
    z = lm_head(hidden).float()
    if temperature != 1.0:
        z = z / temperature
    lse = torch.logsumexp(z, dim=-1)
    lp = z.gather(-1, labels[:, None]).squeeze(-1) - lse
    if not with_entropy:
        return lp, z.new_zeros(0)
    with torch.set_grad_enabled(entropy_grad and torch.is_grad_enabled()):
        zz = z if entropy_grad else z.detach()
        p = torch.softmax(zz, dim=-1)
        ent = lse if entropy_grad else lse.detach()
        ent = ent - (p * zz).sum(-1)  # H = logsumexp(z) - sum p z
    return lp, ent


def head_logprobs(
    lm_head: torch.nn.Module,
    hidden: torch.Tensor,
    labels: torch.Tensor,
    *,
    with_entropy: bool = False,
    entropy_grad: bool = False,
    chunk_size: int = 1024,
    temperature: float = 1.0,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """log p(label) (and entropy) for N rows of hidden states [N, H], in chunks of rows.

    `temperature` divides the logits first: the distribution a sampler at that temperature draws
    from (GRPO scores its samples under the rollout's temperature; see `token_logprobs`).

    With autograd on, each chunk runs under activation checkpointing: only its hidden rows are
    kept, and the backward recomputes that chunk's logits (one more LM-head matmul, ~2% of a
    7B step) instead of holding bf16 logits and fp32 softmax temporaries for every chunk, which
    for 16k response tokens over 152k vocabulary would be ~15 GB. The entropy joins the graph
    only with `entropy_grad` (an entropy bonus); as a metric it is computed without one.
    """
    from torch.utils.checkpoint import checkpoint

    use_ckpt = torch.is_grad_enabled() and hidden.requires_grad
    lps, ents = [], []
    for s in range(0, hidden.shape[0], chunk_size):
        args = (lm_head, hidden[s : s + chunk_size], labels[s : s + chunk_size], with_entropy, entropy_grad, temperature)
        lp, ent = checkpoint(_head_chunk, *args, use_reentrant=False) if use_ckpt else _head_chunk(*args)
        lps.append(lp)
        ents.append(ent)
    lp = torch.cat(lps) if lps else hidden.new_zeros(0, dtype=torch.float32)
    ent = (torch.cat(ents) if ents else hidden.new_zeros(0, dtype=torch.float32)) if with_entropy else None
    return lp, ent


def predicted_tokens(loss_mask: torch.Tensor) -> torch.Tensor:
    """The tokens a loss counts, as a new bool mask: `loss_mask` without each sample's first token,
    which no position predicts (log-probs there are 0, not a prediction). [L] or [B, L]."""
    mask = loss_mask.bool().clone()
    mask[..., 0] = False
    return mask


def token_logprobs(
    model: torch.nn.Module, batch: dict[str, Any], *, with_entropy: bool = False, entropy_grad: bool = False,
    chunk_size: int = 1024, temperature: float = 1.0,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Per-token log-probs [B, L] of the batch's own tokens where loss_mask is 1 (0 elsewhere).

    Position t holds log p(input_ids[t] | input_ids[:t]); the LM head runs only at the positions
    that predict a masked token. The result is in the padded [B, L] layout of `loss_mask` for
    padded and packed batches alike.

    With `temperature` T the log-probs (and entropy) are those of softmax(logits / T), the
    distribution that a rollout sampling at T drew from. GRPO's old, reference and current
    log-probs all use the rollout temperature, so the clipped ratio and the KL are on-policy for
    the samples (verl and EasyR1 divide the logits the same way); 1 is the model's own distribution.
    """
    hidden = hidden_states(model, batch)
    mask = predicted_tokens(batch["loss_mask"])
    # The model's layout: the padded [B, L] itself, or one packed row of the valid tokens (in the
    # same row-major order, so `out[mask] = lp` below fills the same tokens in both cases).
    row_mask = mask[batch["valid"]][None] if "position_ids" in batch else mask
    # Hidden state at t-1 predicts token t. (A sample's first token is never in the mask, so in
    # a packed row no sample is predicted from the one before it.)
    pred_pos = row_mask.roll(-1, dims=1)
    h = hidden[pred_pos]
    labels = batch["input_ids"][row_mask]
    _, lm_head = _model_parts(model)
    lp, ent = head_logprobs(lm_head, h, labels, with_entropy=with_entropy, entropy_grad=entropy_grad, chunk_size=chunk_size,
                            temperature=temperature)
    out = torch.zeros(mask.shape, dtype=lp.dtype, device=lp.device)
    out[mask] = lp
    ent_out = None
    if with_entropy:
        ent_out = torch.zeros(mask.shape, dtype=ent.dtype, device=ent.device)
        ent_out[mask] = ent
    return out, ent_out


def sequence_logprobs(model: torch.nn.Module, batch: dict[str, Any], temperature: float = 1.0) -> list[torch.Tensor]:
    """Log-probs of each row's response tokens (for build_sequences batches), one tensor per row,
    of softmax(logits / temperature)."""
    lp, _ = token_logprobs(model, batch, temperature=temperature)
    rows = []
    for i, (p, r) in enumerate(zip(batch["prompt_lengths"], batch["response_lengths"])):
        rows.append(lp[i, p : p + r])
    return rows
