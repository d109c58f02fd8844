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
attention mask, and trailing pads come after every real token.

`token_logprobs` runs the decoder once and applies the LM head only at the positions that predict
a masked token, in chunks, so fp32 logits for the whole batch over a 152k vocabulary never exist.
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
    """Last hidden states [B, L, H] of the backbone (vision tower run on the batch's images)."""
    backbone, _ = _model_parts(model)
    kwargs = {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"],
              "mm_token_type_ids": batch["mm_token_type_ids"], "use_cache": False}
    if "pixel_values" in batch:
        kwargs["pixel_values"] = batch["pixel_values"]
        kwargs["image_grid_thw"] = batch["image_grid_thw"]
    return backbone(**kwargs).last_hidden_state


def head_logprobs(
    lm_head: torch.nn.Module,
    hidden: torch.Tensor,
    labels: torch.Tensor,
    *,
    with_entropy: bool = False,
    entropy_grad: bool = False,
    chunk_size: int = 1024,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """log p(label) (and entropy) for N rows of hidden states [N, H], in chunks of rows.

    The entropy joins the autograd graph only with `entropy_grad` (an entropy bonus); as a metric
    it is computed without one, which would otherwise keep a second [chunk, vocab] tensor per chunk.
    """
    lps, ents = [], []
    for s in range(0, hidden.shape[0], chunk_size):
        logits = lm_head(hidden[s : s + chunk_size]).float()
        logp = torch.log_softmax(logits, dim=-1)
        lps.append(logp.gather(-1, labels[s : s + chunk_size, None]).squeeze(-1))
        if with_entropy:
            with torch.set_grad_enabled(entropy_grad and torch.is_grad_enabled()):
                lp_e = logp if entropy_grad else logp.detach()
                ents.append(-(lp_e.exp() * lp_e).sum(-1))
    lp = torch.cat(lps) if lps else hidden.new_zeros(0)
    ent = (torch.cat(ents) if ents else hidden.new_zeros(0)) if with_entropy else None
    return lp, ent


def token_logprobs(
    model: torch.nn.Module, batch: dict[str, Any], *, with_entropy: bool = False, entropy_grad: bool = False,
    chunk_size: int = 1024,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Per-token log-probs [B, L] of the batch's own tokens where loss_mask is 1 (0 elsewhere).

    Position t holds log p(input_ids[t] | input_ids[:t]); the LM head runs only at the positions
    that predict a masked token.
    """
    hidden = hidden_states(model, batch)
    mask = batch["loss_mask"].bool()
    mask[:, 0] = False  # the first token has no prediction
    # Hidden state at t-1 predicts token t.
    pred_pos = mask.roll(-1, dims=1)
    h = hidden[pred_pos]
    labels = batch["input_ids"][mask]
    _, lm_head = _model_parts(model)
    lp, ent = head_logprobs(lm_head, h, labels, with_entropy=with_entropy, entropy_grad=entropy_grad, chunk_size=chunk_size)
    out = torch.zeros(mask.shape, dtype=lp.dtype, device=lp.device)
    out[mask] = lp
    ent_out = None
    if with_entropy:
        ent_out = torch.zeros(mask.shape, dtype=ent.dtype, device=ent.device)
        ent_out[mask] = ent
    return out, ent_out


def sequence_logprobs(model: torch.nn.Module, batch: dict[str, Any]) -> list[torch.Tensor]:
    """Log-probs of each row's response tokens (for build_sequences batches), one tensor per row."""
    lp, _ = token_logprobs(model, batch)
    rows = []
    for i, (p, r) in enumerate(zip(batch["prompt_lengths"], batch["response_lengths"])):
        rows.append(lp[i, p : p + r])
    return rows
