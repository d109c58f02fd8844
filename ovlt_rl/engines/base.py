"""The rollout engine interface: what every engine (hf, vllm) takes and returns.

An engine holds one copy of the policy for generation. The controller (through rollout worker
actors), data preparation (self-improvement sampling, captioning) and evaluation all call it the
same way:

    engine = make_engine(cfg.rollout, model_path, device)
    groups = engine.generate(prompts, SamplingParams(n=5, temperature=1.0, max_new_tokens=512))
    groups[i][j].token_ids   # the j-th response to prompt i

`prompts` are items of `ovlt_rl.data.dataset.PromptDataset` (dicts with `input_ids`,
`pixel_values`, `image_grid_thw`, and `prompt_text` + `images` for engines that tokenize
themselves).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Iterable, Protocol

import torch


@dataclass
class SamplingParams:
    n: int = 1
    """Responses per prompt."""
    temperature: float = 1.0
    """0 means greedy."""
    top_p: float = 1.0
    top_k: int = -1
    """-1: no top-k."""
    max_new_tokens: int = 512
    stop: list[str] = field(default_factory=list)
    """Extra stop strings; the tokenizer's EOS tokens always stop."""
    repetition_penalty: float = 1.0
    seed: int | None = None
    """Seed for this call's sampling (None: the engine's running generator)."""
    logprobs: bool = True
    """Return the sampling log-prob of each generated token when the engine can do it cheaply."""

    @property
    def logprob_temperature(self) -> float:
        """The temperature of the returned log-probs: the sampling one (1 when greedy). A trainer
        taking these as the behaviour policy's (one-step off-policy) divides its logits the same way."""
        return self.temperature if self.temperature > 0 else 1.0


@dataclass
class Generation:
    token_ids: list[int]
    """Generated tokens, without the prompt, up to and including the stop token (EOS)."""
    text: str
    """Decoded `token_ids` without special tokens."""
    finish_reason: str
    """"stop" (EOS or a stop string) or "length" (hit max_new_tokens)."""
    logprobs: list[float] | None = None
    """Log-prob of each token of `token_ids` under the sampling distribution, if computed."""


# Tokens a response must never contain: a generated <|image_pad|> would be taken for an image
# placeholder in the training forward ("Image features and image tokens do not match"), and
# the vision markers are meaningless in a response. Engines forbid them while sampling.
VISION_TOKENS = ("<|image_pad|>", "<|video_pad|>", "<|vision_start|>", "<|vision_end|>", "<|vision_pad|>")


def forbidden_token_ids(tokenizer) -> list[int]:
    """Ids of VISION_TOKENS known to `tokenizer`."""
    vocab = tokenizer.get_vocab()
    return sorted(vocab[t] for t in VISION_TOKENS if t in vocab)


class RolloutEngine(Protocol):
    def generate(self, prompts: list[dict[str, Any]], params: SamplingParams) -> list[list[Generation]]:
        """`params.n` generations for each prompt, in prompt order."""
        ...

    def load_state_dict(self, tensors: Iterable[tuple[str, torch.Tensor]]) -> None:
        """Replace the weights (names as in the HF model's state_dict), e.g. after a policy update."""
        ...

    def compute_logprobs(self, prompts: list[dict[str, Any]], responses: list[list[int]]) -> list[list[float]]:
        """Log-probs of each response's tokens given its prompt (used to check weight sync against the policy)."""
        ...
