"""Filters for SFT data. Each takes rows and returns (kept rows, stats).

stats always holds ``rows_in`` and ``rows_out`` plus counts per reason, so the pipeline can log
and record every step. The paper's filters, in the order the pipeline applies them:

    correctness   keep responses the reward scores as correct against the ground truth
    length        keep responses of fewer than `max_words` words (the paper: under 500)
    reflections   delete sentences containing a reflection phrase, or drop the sample
    dedup         drop repeats of (image, question, response)
    contamination drop rows whose image or question appears in an evaluation set
    pick_one      keep one response per question (shortest correct by default)
"""

from __future__ import annotations

import logging
import random
import re
from collections import Counter
from typing import Any, Iterable, Sequence

from data_prep.rows import image_hash, item_key, question_key, word_count

log = logging.getLogger(__name__)

Rows = list[dict[str, Any]]


def _stats(rows_in: int, kept: Rows, **reasons: int) -> dict[str, int]:
    return {"rows_in": rows_in, "rows_out": len(kept), **reasons}


# --------------------------------------------------------------------------- correctness


def reward_scores(rows: Rows, reward_fn) -> tuple[list[float | None], Counter]:
    """Score each row's response against its ground truth with a loaded reward (reward.load)."""
    if not rows:
        return [], Counter()
    batch = reward_fn.score_batch(
        [r["response"] for r in rows],
        [r["reward_model"]["ground_truth"] for r in rows],
        [{"data_source": r["data_source"], "extra_info": r["extra_info"]} for r in rows],
    )
    return list(batch.scores), Counter(batch.none_reasons)


def correctness(rows: Rows, reward_fn, min_reward: float = 1.0) -> tuple[Rows, dict]:
    """Keep rows whose reward is at least `min_reward`; unscorable rows are dropped and counted.

    With the openvlthinker reward a correct answer scores 1.0, or 0.5 when nothing stands
    between </think> and <answer>; the default min_reward 1.0 keeps only the former.
    """
    scores, unscorable = reward_scores(rows, reward_fn)
    if unscorable:
        log.warning("correctness: %d of %d responses could not be scored (%s)",
                    sum(unscorable.values()), len(rows), dict(unscorable))
    return correct_by_scores(rows, scores, min_reward)


# --------------------------------------------------------------------------- length


def length(rows: Rows, max_words: int = 500) -> tuple[Rows, dict]:
    """Keep responses with fewer than `max_words` words (data_prep.rows.word_count): with the
    default 500, a 499-word response stays and a 500-word one goes. 0 disables the filter."""
    if max_words <= 0:
        return list(rows), _stats(len(rows), list(rows), too_long=0)
    kept = [r for r in rows if word_count(r["response"]) < max_words]
    return kept, _stats(len(rows), kept, too_long=len(rows) - len(kept))


# --------------------------------------------------------------------------- reflections

# Text outside these is edited; the answer tag and the think tags are never touched.
_PROTECTED = re.compile(r"(<answer>.*?</answer>|</?think>)", re.DOTALL)
# A sentence ends at . ! or ? followed by spaces, or at a line break.
_SENTENCE_SEP = re.compile(r"((?<=[.!?])[ \t]+|[ \t]*\n\s*)")


def phrase_pattern(phrases: Sequence[str]) -> re.Pattern:
    """One case-insensitive pattern matching any phrase as whole words ("wait" not in "await")."""
    cleaned = [p.strip() for p in phrases if p.strip()]
    if not cleaned:
        raise ValueError("reflection filter: the phrase list is empty")
    alts = sorted((r"\s+".join(map(re.escape, p.split())) for p in cleaned), key=len, reverse=True)
    return re.compile(r"(?<!\w)(?:" + "|".join(alts) + r")(?!\w)", re.IGNORECASE)


def _remove_sentences(text: str, pattern: re.Pattern) -> tuple[str, int]:
    """Drop the sentences of `text` that match; returns (new text, sentences removed)."""
    parts = _SENTENCE_SEP.split(text)
    sentences, seps = parts[0::2], parts[1::2] + [""]
    out, removed = [], 0
    for sentence, sep in zip(sentences, seps):
        if pattern.search(sentence):
            removed += 1
            continue
        out.append(sentence + sep)
    new = "".join(out)
    # keep the text's own leading/trailing whitespace (the layout around the tags)
    lead = text[: len(text) - len(text.lstrip())]
    trail = text[len(text.rstrip()) :]
    return (lead + new.strip() + trail) if new.strip() else (lead + trail), removed


def strip_reflections(response: str, pattern: re.Pattern) -> tuple[str, int]:
    """The response without its reflective sentences (answer and tags kept); and how many went."""
    pieces = _PROTECTED.split(response)
    removed = 0
    for i in range(0, len(pieces), 2):  # even pieces are free text, odd ones protected
        pieces[i], n = _remove_sentences(pieces[i], pattern)
        removed += n
    return "".join(pieces), removed


def _sections(response: str) -> tuple[str | None, str]:
    """(think content or None when there is no think block, text between </think> and <answer>)."""
    think = None
    m = re.search(r"<think>(.*?)</think>", response, re.DOTALL)
    if m:
        think = m.group(1)
    after = response.split("</think>")[-1].split("<answer>")[0] if "</think>" in response else ""
    return think, after


def reflections(rows: Rows, phrases: Sequence[str], mode: str = "remove_sentences") -> tuple[Rows, dict]:
    """Remove reflections ("wait", "let me double-check", ...), as the paper did.

    mode "remove_sentences": delete every sentence containing a phrase (anywhere in it, also
    mid-sentence), outside the <answer> tag; a sample whose reasoning or conclusion becomes
    empty is dropped (counted as "emptied"). mode "drop_sample": drop any sample containing a
    phrase outside <answer>. mode "off": keep everything.
    """
    if mode == "off":
        return list(rows), _stats(len(rows), list(rows))
    if mode not in ("remove_sentences", "drop_sample"):
        raise ValueError(f"reflection filter: unknown mode {mode!r}; expected remove_sentences, drop_sample or off")
    pattern = phrase_pattern(phrases)
    kept: Rows = []
    edited = dropped = emptied = sentences = 0
    for r in rows:
        text = r["response"]
        outside = "".join(_PROTECTED.split(text)[0::2])
        if not pattern.search(outside):
            kept.append(r)
            continue
        if mode == "drop_sample":
            dropped += 1
            continue
        new, n = strip_reflections(text, pattern)
        think, concl = _sections(new)
        old_think, old_concl = _sections(text)
        if (think is not None and not think.strip()) or (old_concl.strip() and not concl.strip()):
            emptied += 1
            continue
        edited += 1
        sentences += n
        kept.append({**r, "response": new})
    return kept, _stats(len(rows), kept, edited=edited, sentences_removed=sentences, dropped=dropped, emptied=emptied)


# --------------------------------------------------------------------------- duplicates


def dedup(rows: Rows, boilerplate: Sequence[str] = ()) -> tuple[Rows, dict]:
    """Drop rows repeating an earlier row's image, normalised question and response
    (response compared with whitespace collapsed); the first one stays."""
    seen: set[tuple[str, str, str]] = set()
    kept: Rows = []
    for r in rows:
        key = (*item_key(r, boilerplate), " ".join(r["response"].split()))
        if key in seen:
            continue
        seen.add(key)
        kept.append(r)
    return kept, _stats(len(rows), kept, duplicates=len(rows) - len(kept))


# --------------------------------------------------------------------------- contamination


class EvalIndex:
    """Image hashes and normalised questions of evaluation sets."""

    def __init__(self, eval_rows: Iterable[dict[str, Any]], boilerplate: Sequence[str] = ()):
        self.images: set[str] = set()
        self.questions: set[str] = set()
        self.boilerplate = tuple(boilerplate)
        self.rows = 0
        for r in eval_rows:
            self.rows += 1
            h = image_hash(r)
            if h:
                self.images.add(h)
            q = question_key(r, self.boilerplate)
            if q:
                self.questions.add(q)

    @classmethod
    def from_files(cls, paths: Sequence[str], boilerplate: Sequence[str] = ()) -> "EvalIndex":
        from ovlt_rl.data.schema import read_rows

        rows: Rows = []
        for p in paths:
            rows += read_rows(p, columns=["data_source", "prompt", "images"])
        return cls(rows, boilerplate)


def contamination(rows: Rows, index: EvalIndex, keys: Sequence[str] = ("image", "question")) -> tuple[Rows, dict]:
    """Drop training rows whose image hash (key "image") or normalised question (key "question")
    appears in the evaluation sets. Counts say which key matched first."""
    unknown = [k for k in keys if k not in ("image", "question")]
    if unknown:
        raise ValueError(f"contamination: unknown keys {unknown}; expected image and/or question")
    kept: Rows = []
    by = Counter()
    for r in rows:
        if "image" in keys and (h := image_hash(r)) and h in index.images:
            by["same_image"] += 1
            continue
        if "question" in keys and question_key(r, index.boilerplate) in index.questions:
            by["same_question"] += 1
            continue
        kept.append(r)
    return kept, _stats(len(rows), kept, same_image=by["same_image"], same_question=by["same_question"])


# --------------------------------------------------------------------------- one per question


def pick_one(rows: Rows, policy: str = "shortest", seed: int = 0, boilerplate: Sequence[str] = ()) -> tuple[Rows, dict]:
    """Keep one response per question (same image and normalised question).

    "shortest" / "longest" by word count (ties: the earlier row), "random" seeded per question.
    Questions keep the order of their first row.
    """
    if policy not in ("shortest", "longest", "random"):
        raise ValueError(f"pick_one: unknown policy {policy!r}; expected shortest, longest or random")
    groups: dict[tuple[str, str], Rows] = {}
    for r in rows:
        groups.setdefault(item_key(r, boilerplate), []).append(r)
    kept: Rows = []
    for key, group in groups.items():
        if policy == "random":
            kept.append(random.Random(f"{seed}/{key[0]}/{key[1]}").choice(group))
        else:
            sign = 1 if policy == "shortest" else -1
            kept.append(min(enumerate(group), key=lambda t: (sign * word_count(t[1]["response"]), t[0]))[1])
    return kept, _stats(len(rows), kept, questions=len(groups))


# --------------------------------------------------------------------------- the chain


def select_sft(
    candidates: Rows,
    reward_fn,
    *,
    min_reward: float = 1.0,
    max_words: int = 500,
    reflection_mode: str = "remove_sentences",
    reflection_phrases: Sequence[str] = (),
    dedup_rows: bool = True,
    eval_index: EvalIndex | None = None,
    contamination_keys: Sequence[str] = ("image", "question"),
    boilerplate: Sequence[str] = (),
    pick: str = "shortest",
    seed: int = 0,
    scores: list[float | None] | None = None,
) -> tuple[Rows, list[dict]]:
    """The SFT filters: correctness, length, dedup, contamination, one response per question, and
    reflections. Returns (rows, one stats dict per step with its "step").

    Order matters for reflections: mode "drop_sample" is a filter on candidates and runs before
    the pick (a question keeps a clean response when it has one); mode "remove_sentences" edits
    the picked response and runs after it, so that "shortest" compares responses as written
    (otherwise deleting sentences would make edited responses win the pick).

    `scores` (reward per candidate) may be given to skip re-scoring, e.g. when one set of
    candidates feeds several filter variants.
    """
    steps: list[dict] = []

    def run(name: str, fn, rows: Rows, *args, **kwargs) -> Rows:
        kept, stats = fn(rows, *args, **kwargs)
        steps.append({"step": name, **stats})
        log.debug("%s: %d -> %d %s", name, stats["rows_in"], stats["rows_out"],
                 {k: v for k, v in stats.items() if k not in ("rows_in", "rows_out") and v})
        return kept

    if scores is None:
        rows = run("correctness", correctness, candidates, reward_fn, min_reward)
    else:
        rows = run("correctness", correct_by_scores, candidates, scores, min_reward)
    rows = run("length", length, rows, max_words)
    if reflection_mode == "drop_sample":
        rows = run("reflections", reflections, rows, reflection_phrases, reflection_mode)
    if dedup_rows:
        rows = run("dedup", dedup, rows, boilerplate)
    if eval_index is not None and contamination_keys:
        rows = run("contamination", contamination, rows, eval_index, contamination_keys)
    rows = run("pick_one", pick_one, rows, pick, seed, boilerplate)
    if reflection_mode == "remove_sentences":
        rows = run("reflections", reflections, rows, reflection_phrases, reflection_mode)
    return rows, steps


def correct_by_scores(rows: Rows, scores: list[float | None], min_reward: float = 1.0) -> tuple[Rows, dict]:
    """The correctness filter on precomputed reward scores (aligned with rows)."""
    if len(scores) != len(rows):
        raise ValueError(f"correctness: {len(scores)} scores for {len(rows)} rows")
    kept = [r for r, s in zip(rows, scores) if s is not None and s >= min_reward]
    n_none = sum(1 for s in scores if s is None)
    return kept, _stats(len(rows), kept, incorrect=len(rows) - len(kept) - n_none, unscorable=n_none)
