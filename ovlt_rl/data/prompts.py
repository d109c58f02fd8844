"""Prompt formatting: schema messages with "<image>" placeholders to Qwen chat-format model inputs.

How it works:
1. `chat_messages` turns each message's content string into Qwen's content list, splitting at the
   "<image>" placeholders: "<image>How many?" -> [{"type": "image"}, {"type": "text", "text": "How
   many?"}]. An optional prompt suffix (e.g. OpenVLThinker's "You FIRST think ...") goes on its own
   line at the end of the last user turn.
2. `render_prompt` applies the processor's chat template with add_generation_prompt=True; the text
   holds one <|vision_start|><|image_pad|><|vision_end|> per image (what vLLM takes, with the images).
3. `encode_prompt` runs the processor on text + images: it expands each <|image_pad|> to
   (grid_h * grid_w) / merge^2 copies, so `input_ids` counts the image tokens, and returns
   pixel_values and image_grid_thw. `mm_token_type_ids` (1 on image tokens) is added here whatever
   the transformers version, since Qwen2.5-VL's mRoPE needs it to place image tokens in 3-D.
"""

from __future__ import annotations

import re
from typing import Any

import torch

from ovlt_rl.data.schema import IMAGE_PLACEHOLDER

# The instruction OpenVLThinker's GRPO prompts end with (EasyR1 format prompt, see references.md).
OPENVLTHINKER_PROMPT_SUFFIX = (
    "You FIRST think about the reasoning process as an internal monologue and then provide the final answer."
)


def count_placeholders(messages: list[dict[str, Any]]) -> int:
    return sum(m["content"].count(IMAGE_PLACEHOLDER) for m in messages)


def chat_messages(messages: list[dict[str, Any]], *, suffix: str | None = None) -> list[dict[str, Any]]:
    """Schema messages ({"role", "content": str}) to chat-template messages with content lists."""
    last_user = max((i for i, m in enumerate(messages) if m["role"] == "user"), default=None)
    if last_user is None:
        raise ValueError("the prompt has no user message")
    out = []
    for i, m in enumerate(messages):
        text = m["content"]
        if suffix and i == last_user:
            text = f"{text.rstrip()}\n{suffix}"
        content: list[dict[str, Any]] = []
        for j, chunk in enumerate(text.split(IMAGE_PLACEHOLDER)):
            if j > 0:
                content.append({"type": "image"})
            if chunk:
                content.append({"type": "text", "text": chunk})
        out.append({"role": m["role"], "content": content})
    return out


def render_prompt(processor, chat: list[dict[str, Any]]) -> str:
    """The chat template applied, ending with the assistant header (add_generation_prompt=True)."""
    return processor.apply_chat_template(chat, add_generation_prompt=True, tokenize=False)


def special_token_pattern(tokenizer) -> re.Pattern:
    """Matches any special token string (e.g. "<|im_end|>", "<|image_pad|>") inside raw text.

    Such a string in a question or response would be tokenized as the control token itself (an
    early end of turn, an image slot without an image). Non-special added tokens (Qwen's
    "<tool_call>") are ordinary text here.
    """
    specials = {t.content for t in tokenizer.added_tokens_decoder.values() if t.special}
    tokens = sorted(specials | set(tokenizer.all_special_tokens), key=len, reverse=True)
    return re.compile("|".join(re.escape(t) for t in tokens))


def image_token_count(width: int, height: int, *, patch_size: int, merge_size: int) -> int:
    """Image tokens for an image already sized to multiples of patch_size * merge_size."""
    return (height // patch_size) * (width // patch_size) // (merge_size * merge_size)


def encode_prompt(processor, prompt_text: str, images: list) -> dict[str, torch.Tensor | None]:
    """Run the processor on one prompt; 1-D input_ids and mm_token_type_ids, image tensors or None."""
    enc = processor(text=[prompt_text], images=images or None, return_tensors="pt")
    input_ids = enc["input_ids"][0]
    return {
        "input_ids": input_ids,
        "mm_token_type_ids": mm_token_type_ids(input_ids, processor.image_token_id),
        "pixel_values": enc["pixel_values"] if images else None,
        "image_grid_thw": enc["image_grid_thw"] if images else None,
    }


def mm_token_type_ids(input_ids: torch.Tensor, image_token_id: int) -> torch.Tensor:
    """1 on image tokens, 0 elsewhere (the modality ids Qwen2.5-VL's get_rope_index reads)."""
    return (input_ids == image_token_id).long()
