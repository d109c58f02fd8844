"""The transformers rollout engine: `model.generate` with images, n samples per prompt.

Used where vLLM is absent (CPU, tests, machines without a vLLM build) and by data preparation
and evaluation on small models. Prompts are `PromptDataset` items; each chunk of prompts is
left-padded into one batch and expanded `n` times with `num_return_sequences`, so a group's
responses share the prompt's image features computation.

Two generation paths give the same tokens under greedy decoding:
- fast (`fast_decode="on"`, or "auto" on CUDA): `fast_decode.StaticCacheDecoder` prefills with the
  HF model and decodes with its own loop over a static KV cache, captured in a CUDA graph on GPUs;
  each prompt is prefilled once and its cache copied to its n samples.
- plain (`"off"`, or "auto" on CPU): transformers `generate`, each chunk of prompts left-padded into
  one batch and expanded `n` times with `num_return_sequences`.

Log-probs (at the sampling temperature, as `compute_logprobs(..., temperature=)`; 1 when greedy):
the fast path takes them in the decode loop; the
plain path would need the full-vocabulary logits of every step kept in memory (`output_logits`,
B*T*V floats), so it runs one teacher-forced forward over prompt+response instead. GRPO asks for
them only under `algorithm.overlap` (the behaviour policy's log-probs); on-policy, the policy
workers compute the old log-probs themselves.

A model whose vision tower uses "sdpa" is switched to ovlt's window attention
(`ovlt_rl.models.vision_attention`) for both paths, as the policy workers do: same numbers, far
fewer attention calls. A model passed in (`model=`) is switched in place.
"""

from __future__ import annotations

import logging
from typing import Any, Iterable

import torch

from ovlt_rl.engines.base import Generation, SamplingParams, forbidden_token_ids
from ovlt_rl.models.vision_attention import use_window_attention

log = logging.getLogger(__name__)

# YAML reads a bare on/off as a boolean, so a command-line `rollout.hf_fast_decode=on` arrives as "True".
_FAST_DECODE = {"auto": None, "on": True, "true": True, "off": False, "false": False}


def use_fast_decode(choice: str | bool, device: torch.device) -> bool:
    """Resolve rollout.hf_fast_decode: "on", "off", or "auto" (on for CUDA devices)."""
    key = str(choice).lower()
    if key not in _FAST_DECODE:
        raise ValueError(f"rollout.hf_fast_decode: unknown {choice!r}; use auto, on or off")
    on = _FAST_DECODE[key]
    return device.type == "cuda" if on is None else on


def batch_prompts(prompts: list[dict[str, Any]], pad_token_id: int, device: torch.device | str) -> dict[str, torch.Tensor]:
    """Left-pad prompt items into model inputs (input_ids, attention_mask, mm_token_type_ids, pixel_values, image_grid_thw)."""
    from ovlt_rl.data.collate import collate_prompts, model_inputs

    return {k: v.to(device) for k, v in model_inputs(collate_prompts(prompts, pad_token_id)).items()}


class HFEngine:
    """A Qwen2.5-VL model in eval mode, generating with transformers.

    `fast_decode` ("auto", "on", "off"; rollout.hf_fast_decode) picks the generation path (module
    docstring); `decode_compile` is the torch.compile backend for the fast path's decode step on
    GPUs (None: eager; rollout.hf_decode_compile). `micro_batch_size` sequences are generated at once.
    """

    NAME = "hf"

    def __init__(
        self,
        model_path: str,
        *,
        device: str | torch.device = "cpu",
        dtype: torch.dtype = torch.float32,
        micro_batch_size: int = 64,
        attn_implementation: str = "sdpa",
        model: torch.nn.Module | None = None,
        processor: Any = None,
        fast_decode: str | bool = "auto",
        decode_compile: str | None = "inductor",
    ):
        from ovlt_rl.models.loading import is_vision_language, load_model, load_processor, load_text_model

        self.device = torch.device(device)
        # A text-only model (e.g. data preparation's reasoner): its tokenizer, transformers' generate.
        self.vision = model is not None or is_vision_language(model_path)
        if not self.vision:
            from transformers import AutoTokenizer

            if str(fast_decode).lower() == "on":
                raise ValueError(f"rollout.hf_fast_decode=on: the fast path is for Qwen2.5-VL models; {model_path} is text-only")
            fast_decode = "off"
            self.processor = None
            self.tokenizer = AutoTokenizer.from_pretrained(model_path)
            self.model = load_text_model(model_path, dtype=dtype, device=self.device, attn_implementation=attn_implementation)
        else:
            self.processor = processor if processor is not None else load_processor(model_path)
            self.tokenizer = self.processor.tokenizer
            self.model = model if model is not None else load_model(
                model_path, dtype=dtype, device=self.device, attn_implementation=attn_implementation
            )
        self.model.eval()
        if self.vision and self.model.model.visual.config._attn_implementation == "sdpa":
            # The vision tower's windows in one or a few attention calls per layer instead of one
            # SDPA call per window (the same numbers); the fast path's prefill already did this.
            use_window_attention(self.model)
        self.micro_batch_size = micro_batch_size
        gen = self.model.generation_config
        eos = gen.eos_token_id if gen.eos_token_id is not None else self.tokenizer.eos_token_id
        self.eos_ids = set(eos if isinstance(eos, list) else [eos])
        self.pad_id = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else next(iter(self.eos_ids))
        self.forbidden = forbidden_token_ids(self.tokenizer)
        self.fast = None
        if use_fast_decode(fast_decode, self.device):
            from ovlt_rl.engines.fast_decode import StaticCacheDecoder

            # torch.compile only on GPUs: on CPU inductor needs a C++ toolchain and the gain is on launch overheads.
            self.fast = StaticCacheDecoder(self.model, eos_ids=sorted(self.eos_ids), pad_id=self.pad_id, forbidden=self.forbidden,
                                           compile=decode_compile if self.device.type == "cuda" else None)

    # -- generation -------------------------------------------------------------------------

    @torch.no_grad()
    def generate(self, prompts: list[dict[str, Any]], params: SamplingParams) -> list[list[Generation]]:
        if params.seed is not None:
            torch.manual_seed(params.seed)
        per_chunk = max(1, self.micro_batch_size // max(1, params.n))
        out: list[list[Generation]] = []
        for start in range(0, len(prompts), per_chunk):
            out.extend(self._generate_chunk(prompts[start : start + per_chunk], params))
        return out

    def _generate_chunk(self, prompts: list[dict[str, Any]], params: SamplingParams) -> list[list[Generation]]:
        if self.fast is not None:
            return self._generate_chunk_fast(prompts, params)
        inputs = batch_prompts(prompts, self.pad_id, self.device)
        if not self.vision:
            inputs.pop("mm_token_type_ids", None)  # Qwen2.5-VL's mRoPE input; generate refuses unknown inputs
        greedy = params.temperature <= 0 or params.top_k == 1
        kwargs: dict[str, Any] = dict(
            max_new_tokens=params.max_new_tokens,
            num_return_sequences=params.n,
            do_sample=not greedy,
            pad_token_id=self.pad_id,
            eos_token_id=sorted(self.eos_ids),
            repetition_penalty=params.repetition_penalty,
            suppress_tokens=self.forbidden or None,
        )
        if not greedy:
            kwargs.update(temperature=params.temperature, top_p=params.top_p, top_k=params.top_k if params.top_k > 0 else 0)
        else:
            # Greedy decoding ignores these; pass neutral values so transformers doesn't warn.
            kwargs.update(temperature=None, top_p=None, top_k=None)
        if params.stop:
            kwargs.update(stop_strings=list(params.stop), tokenizer=self.tokenizer)
        seqs = self.model.generate(**inputs, **kwargs)
        responses = seqs[:, inputs["input_ids"].shape[1] :].tolist()
        groups: list[list[Generation]] = []
        for i in range(len(prompts)):
            group = []
            for j in range(params.n):
                group.append(self._finish(responses[i * params.n + j], None, params))
            groups.append(group)
        if params.logprobs:
            self._attach_logprobs(prompts, groups, params.logprob_temperature)
        return groups

    def _generate_chunk_fast(self, prompts: list[dict[str, Any]], params: SamplingParams) -> list[list[Generation]]:
        rows = self.fast.generate(prompts, params, lambda chunk: batch_prompts(chunk, self.pad_id, self.device))
        groups = []
        for i in range(len(prompts)):
            groups.append([self._finish(*rows[i * params.n + j], params) for j in range(params.n)])
        return groups

    def _finish(self, ids: list[int], logprobs: list[float] | None, params: SamplingParams) -> Generation:
        """Cut a generated row after its first EOS or stop string (both kept) and drop what follows."""
        cut = len(ids)
        for k, t in enumerate(ids):
            if t in self.eos_ids:
                cut = k + 1
                break
        stopped_by_string = False
        if params.stop:
            k = self._stop_string_end(ids[:cut], params.stop)
            if k is not None:
                cut, stopped_by_string = k, True
        ids = ids[:cut]
        text = self.tokenizer.decode(ids, skip_special_tokens=True)
        stopped = stopped_by_string or (bool(ids) and ids[-1] in self.eos_ids)
        reason = "stop" if stopped or len(ids) < params.max_new_tokens else "length"
        return Generation(token_ids=ids, text=text, finish_reason=reason,
                          logprobs=logprobs[:cut] if logprobs is not None else None)

    def _stop_string_end(self, ids: list[int], stops: list[str]) -> int | None:
        """Length of the shortest prefix of `ids` whose text contains a stop string (None: no stop string).

        A prefix's text is a prefix of the longer text, so "contains a stop string" turns true once
        and stays true: binary search, log2(len) decodes. (The plain path stops there too, but
        transformers then pads the row, and the pad token would otherwise be taken for an EOS.)
        """
        def hit(k: int) -> bool:
            text = self.tokenizer.decode(ids[:k], skip_special_tokens=True)
            return any(s in text for s in stops)

        if not ids or not hit(len(ids)):
            return None
        lo, hi = 1, len(ids)
        while lo < hi:
            mid = (lo + hi) // 2
            if hit(mid):
                hi = mid
            else:
                lo = mid + 1
        return lo

    def _attach_logprobs(self, prompts: list[dict[str, Any]], groups: list[list[Generation]], temperature: float) -> None:
        flat_prompts, flat_resp = [], []
        for p, group in zip(prompts, groups):
            for g in group:
                flat_prompts.append(p)
                flat_resp.append(g.token_ids)
        lps = self.compute_logprobs(flat_prompts, flat_resp, temperature=temperature)
        k = 0
        for group in groups:
            for g in group:
                g.logprobs = lps[k]
                k += 1

    # -- log-probs and weights -----------------------------------------------------------------

    @torch.no_grad()
    def compute_logprobs(self, prompts: list[dict[str, Any]], responses: list[list[int]], temperature: float = 1.0) -> list[list[float]]:
        """Teacher-forced log-probs of each response token given its prompt, of softmax(logits / temperature)."""
        from ovlt_rl.models.sequences import build_sequences, sequence_logprobs

        out: list[list[float]] = []
        for start in range(0, len(prompts), self.micro_batch_size):
            batch = build_sequences(prompts[start : start + self.micro_batch_size], responses[start : start + self.micro_batch_size], self.pad_id)
            batch = {k: (v.to(self.device) if torch.is_tensor(v) else v) for k, v in batch.items()}
            lp = sequence_logprobs(self.model, batch, temperature=temperature)
            for row, n in zip(lp, batch["response_lengths"]):
                out.append(row[:n].float().cpu().tolist())
        return out

    @torch.no_grad()
    def load_state_dict(self, tensors: Iterable[tuple[str, torch.Tensor]] | dict[str, torch.Tensor]) -> int:
        """Copy weights in place (names of the HF model's state_dict); returns how many tensors were set."""
        items = tensors.items() if isinstance(tensors, dict) else tensors
        params = dict(self.model.state_dict())
        n = 0
        for name, t in items:
            if name not in params:
                raise KeyError(f"weight sync: the rollout model has no parameter {name!r}")
            params[name].copy_(t.to(params[name].device, params[name].dtype))
            n += 1
        return n
