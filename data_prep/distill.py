"""Iteration-1 distillation: a captioner describes the image, a text reasoner answers from the caption.

This is how OpenVLThinker made its first SFT set: Qwen2.5-VL-3B captions each image, an
R1-distilled text model reads "caption + question" and reasons, and correct answers are kept
(the filters, data_prep/filters.py, do the keeping). Two small protocols, each with a
programmatic implementation (the embedded default) and an engine-backed one (real models
through the rollout engine, ovlt_rl/engines):

    Captioner.caption(rows) -> list[str | None]              one caption per row (None: failed)
    Reasoner.reason(rows, captions, k, seed) -> list[list[str]]   k responses per row

`distill(rows, captioner, reasoner, k, seed)` turns pool rows into SFT candidate rows whose
`response` is in the format the reward expects: "<think>...</think>\\n{conclusion}\\n<answer>X</answer>".
"""

from __future__ import annotations

import logging
import random
import re
from collections import Counter
from typing import Any, Callable, Protocol, Sequence

from data_prep.reasoner import DEFAULT_REFLECTION_PHRASES, FAMILIES, ProgrammaticReasoner, vague_caption
from ovlt_rl.data.schema import IMAGE_PLACEHOLDER, question_text
from ovlt_rl.engines.base import SamplingParams
from reward.grading import extract_answer

log = logging.getLogger(__name__)

Rows = list[dict[str, Any]]


class Captioner(Protocol):
    def caption(self, rows: Rows) -> list[str | None]:
        """A description of each row's image(s); None where no caption could be made."""
        ...


class Reasoner(Protocol):
    def reason(self, rows: Rows, captions: list[str], k: int, seed: int) -> list[list[str]]:
        """k responses per row (fewer, or none, where the reasoner failed), deterministic in seed."""
        ...


def bare_question(row: dict[str, Any]) -> str:
    """The question as text for a reader without the image: placeholders removed."""
    return question_text(row).replace(IMAGE_PLACEHOLDER, " ").strip()


# --------------------------------------------------------------------------- programmatic


class StoredCaptioner:
    """The caption already in the row: extra_info["caption"], i.e. the synthetic task's scene
    description, or a caption written by an earlier captioning pass (captions_step in the pipeline).

    With `vague_rate` it is a weak captioner: that share of the synthetic scenes (drawn from an RNG
    seeded with `seed`) get only the kind of picture, no values (data_prep.reasoner.vague_caption),
    as a small captioning model misses details a larger policy could read. `vague_families`
    limits that to some task families (None: all), e.g. ["chart"]: small captioners read bar
    values worst.
    """

    def __init__(self, vague_rate: float = 0.0, seed: int = 0, vague_families: Sequence[str] | None = None):
        if not 0.0 <= vague_rate <= 1.0:
            raise ValueError(f"vague_rate must be within [0, 1], got {vague_rate}")
        unknown = [f for f in vague_families or () if f not in FAMILIES]
        if unknown:
            raise ValueError(f"vague_families: unknown task families {unknown}; known: {', '.join(FAMILIES)}")
        self.vague_rate = vague_rate
        self.vague_families = None if vague_families is None else frozenset(vague_families)
        self._rng = random.Random(seed)

    def caption(self, rows: Rows) -> list[str | None]:
        out: list[str | None] = []
        for r in rows:
            cap = r["extra_info"].get("caption") if isinstance(r.get("extra_info"), dict) else None
            if not isinstance(cap, str) or not cap.strip():
                raise ValueError(
                    f"captioner=scene: row from {r.get('data_source')!r} has no extra_info['caption']; "
                    "only the synthetic task has scene descriptions (use captioner=engine for real data)"
                )
            # draw for every row, so one row's family does not shift the others' draws
            family = r["extra_info"].get("family")
            if self._rng.random() < self.vague_rate and (self.vague_families is None or family in self.vague_families):
                cap = vague_caption(cap, family)
            out.append(cap)
        return out


class ProgrammaticTextReasoner:
    """data_prep.reasoner.ProgrammaticReasoner behind the Reasoner protocol.

    One reasoner per call, seeded with `seed`: the pipeline passes a seed per shard, so a shard's
    responses do not depend on which shards ran before it (resume gives the same data).
    """

    def __init__(self, wrong_rate: float, reflect_rate: float, verbose_rate: float,
                 reflection_phrases: Sequence[str] = DEFAULT_REFLECTION_PHRASES, restate_rate: float = 0.0):
        self.rates = dict(wrong_rate=wrong_rate, reflect_rate=reflect_rate, verbose_rate=verbose_rate)
        self.reflection_phrases = tuple(reflection_phrases)
        self.restate_rate = restate_rate

    def reason(self, rows: Rows, captions: list[str], k: int, seed: int) -> list[list[str]]:
        reasoner = ProgrammaticReasoner(seed=seed, reflection_phrases=self.reflection_phrases,
                                        restate_rate=self.restate_rate, **self.rates)
        out = []
        for r, cap in zip(rows, captions):
            family = r["extra_info"].get("family")
            try:
                out.append(reasoner.answer(cap, bare_question(r), family, k))
            except ValueError as e:  # a caption or question it cannot read: counted by distill()
                log.warning("programmatic reasoner skipped a row from %s: %s", r.get("data_source"), e)
                out.append([])
        return out


# --------------------------------------------------------------------------- engine-backed


def _rows_with_question(rows: Rows, texts: list[str], keep_images: bool) -> Rows:
    """Copies of rows whose user turn is replaced by `texts` (images kept or dropped)."""
    out = []
    for r, text in zip(rows, texts):
        images = (r.get("images") or []) if keep_images else []
        out.append({**r, "prompt": [{"role": "user", "content": text}], "images": images})
    return out


class EngineCaptioner:
    """A VLM captions each image through the rollout engine (greedy decoding).

    `to_prompts(rows) -> (items, indices)` makes the engine's prompt items
    (data_prep.engine_io.PromptMaker.items); rows without an item get no caption.
    """

    def __init__(self, engine, to_prompts: Callable[[Rows], tuple[list, list[int]]], prompt: str,
                 max_new_tokens: int = 512):
        self.engine, self.to_prompts, self.prompt, self.max_new_tokens = engine, to_prompts, prompt, max_new_tokens

    def caption(self, rows: Rows) -> list[str | None]:
        texts = [IMAGE_PLACEHOLDER * len(r.get("images") or []) + self.prompt for r in rows]
        items, index = self.to_prompts(_rows_with_question(rows, texts, keep_images=True))
        params = SamplingParams(n=1, temperature=0.0, max_new_tokens=self.max_new_tokens, logprobs=False)
        groups = self.engine.generate(items, params) if items else []
        out: list[str | None] = [None] * len(rows)
        for i, group in zip(index, groups):
            # a caption cut off by the token limit is still a caption; an empty one is not
            out[i] = group[0].text.strip() or None
        return out


class EngineReasoner:
    """A text reasoning model answers "caption + question" through the rollout engine, n=k."""

    def __init__(self, engine, to_prompts: Callable[[Rows], tuple[list, list[int]]], template: str,
                 temperature: float, top_p: float, max_new_tokens: int):
        self.engine, self.to_prompts, self.template = engine, to_prompts, template
        self.temperature, self.top_p, self.max_new_tokens = temperature, top_p, max_new_tokens

    def reason(self, rows: Rows, captions: list[str], k: int, seed: int) -> list[list[str]]:
        texts = [self.template.format(caption=c, question=bare_question(r)) for r, c in zip(rows, captions)]
        items, index = self.to_prompts(_rows_with_question(rows, texts, keep_images=False))
        params = SamplingParams(n=k, temperature=self.temperature, top_p=self.top_p,
                                max_new_tokens=self.max_new_tokens, seed=seed, logprobs=False)
        groups = self.engine.generate(items, params) if items else []
        # a response cut at the token limit has no finished reasoning: leave it out (distill
        # counts the short groups; the number cut is logged here)
        cut = sum(g.finish_reason != "stop" for group in groups for g in group)
        if cut:
            log.warning("reasoner: %d of %d responses hit max_new_tokens=%d and were left out",
                        cut, sum(len(g) for g in groups), self.max_new_tokens)
        out: list[list[str]] = [[] for _ in rows]
        for i, group in zip(index, groups):
            out[i] = [g.text for g in group if g.finish_reason == "stop"]
        return out


# --------------------------------------------------------------------------- response format

_THINK_OPEN = re.compile(r"^\s*<think>\s*")
_BOXED = re.compile(r"\\boxed\{")


def _unbox(text: str) -> str:
    """Replace each \\boxed{X} by X (braces balanced)."""
    out, i = [], 0
    while (m := _BOXED.search(text, i)) is not None:
        out.append(text[i : m.start()])
        depth, j = 1, m.end()
        while j < len(text) and depth:
            depth += (text[j] == "{") - (text[j] == "}")
            j += 1
        out.append(text[m.end() : j - 1] if depth == 0 else text[m.end() :])
        i = j
    out.append(text[i:])
    return "".join(out)


def to_reward_format(text: str) -> str | None:
    """A reasoner's output as "<think>{reasoning}</think>\\n{conclusion}\\n<answer>{answer}</answer>".

    Already in that form: kept. R1-style output ("reasoning </think> conclusion with \\boxed{X}"):
    the reasoning goes into <think>, the boxed answer into <answer>, the conclusion stays (boxes
    unwrapped; "The answer is X." when the model wrote none). None when no final answer is found
    (no <answer> tag and no \\boxed{}), since an answerless sample cannot be checked.
    """
    text = text.strip()
    if "<answer>" in text and "</answer>" in text and "</think>" in text:
        return text
    has_box = "\\boxed{" in text
    if not has_box:
        return None
    answer = extract_answer(text)
    if not answer:
        return None
    if "</think>" in text:
        think, _, rest = text.partition("</think>")
    else:  # no separate conclusion: the last paragraph holding the box is the conclusion
        head, sep, tail = text.rpartition("\n\n")
        think, rest = (head, tail) if sep and "\\boxed{" in tail else (text, "")
    think = _THINK_OPEN.sub("", think).strip()
    conclusion = _unbox(rest).strip() or f"The answer is {answer}."
    if not think:
        return None
    return f"<think>{think}</think>\n{conclusion}\n<answer>{answer}</answer>"


# --------------------------------------------------------------------------- the step


def distill(rows: Rows, captioner: Captioner, reasoner: Reasoner, k: int, seed: int) -> tuple[Rows, dict]:
    """Caption each row, reason k times from caption + question; SFT candidate rows and counts.

    Each output row is the input row plus `response`, and extra_info["caption"] (the caption
    used) and extra_info["sample"] (which of the k). Rows without a caption, responses without
    a final answer, and rows the reasoner could not handle are counted, not silently lost.
    """
    stats = Counter(rows_in=len(rows))
    captions = captioner.caption(rows)
    if len(captions) != len(rows):
        raise RuntimeError(f"captioner returned {len(captions)} captions for {len(rows)} rows")
    ok = [(r, c) for r, c in zip(rows, captions) if c]
    stats["no_caption"] = len(rows) - len(ok)
    responses = reasoner.reason([r for r, _ in ok], [c for _, c in ok], k, seed) if ok else []
    if len(responses) != len(ok):
        raise RuntimeError(f"reasoner returned {len(responses)} groups for {len(ok)} rows")
    out: Rows = []
    for (row, cap), group in zip(ok, responses):
        if not group:
            stats["reasoner_failed"] += 1
        stats["responses"] += len(group)
        stats["short_groups"] += int(0 < len(group) < k)
        for j, text in enumerate(group):
            response = to_reward_format(text)
            if response is None:
                stats["no_answer"] += 1
                continue
            out.append({**row, "response": response, "extra_info": {**row["extra_info"], "caption": cap, "sample": j}})
    stats["rows_out"] = len(out)
    return out, dict(stats)
