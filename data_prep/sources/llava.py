"""The "llava" form: MathV360K and its LLaVA-OneVision-Data subsets (conversations + image).

All eleven of the paper's sources are published for training inside MathV360K (Math-LLaVA),
and lmms-lab/LLaVA-OneVision-Data re-publishes them as parquet subsets, e.g.
"FigureQA(MathV360K)", "GEOS(MathV360K)", "MapQA(MathV360K)". Two layouts are read:

    parquet (LLaVA-OneVision-Data): id, image {bytes, path}, conversations [{from, value}], data_source
    JSON (MathV360K train_samples_all_tuning.json): [{id, image: "FigureQA/images/1.png", conversations}]
        with image paths relative to `image_root` (default: the JSON file's folder)

Each human/gpt pair of a conversation becomes one row. The question is the human turn with the
"<image>" placeholder removed (its own "Choices:" block, when it has one, is kept as written);
the ground truth is the gpt turn's final answer ("The answer is X", "Answer: X" or a short
reply), mapped to the option letter when the question lists options. Long free-text replies
are skipped (not verifiable).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Iterator

from data_prep.sources.common import LETTERS, Skip, build_row, hf_image_bytes, load_json, parquet_records

Record = dict[str, Any]

_ANSWER_MARK = re.compile(r"(?:final\s+|correct\s+)?answer\s*(?:is|:)\s*", re.IGNORECASE)
_OPTION = re.compile(r"^\s*\(?([A-Z])[).:]\s*(.+?)\s*$")
_LETTER = re.compile(r"^\(?([A-Z])\)?[.:]?$")
MAX_ANSWER_WORDS = 10  # longer replies without an "answer is" mark are explanations, not answers


def records(path: Path, split: str) -> Iterator[Record]:
    if path.suffix in (".json", ".jsonl"):
        recs = load_json(path)
    else:
        recs = parquet_records(path, split)
    for rec in recs:
        turns = rec.get("conversations") or []
        for t in range(0, len(turns) - 1, 2):
            human, gpt = turns[t], turns[t + 1]
            yield {"id": rec.get("id"), "image": rec.get("image"), "human": human.get("value") or "",
                   "gpt": gpt.get("value") or "", "turn": t // 2,
                   "well_formed": human.get("from") == "human" and gpt.get("from") == "gpt"}


def parse_choices(question: str) -> dict[str, str]:
    """Option letter -> text from a "Choices:" block ("(A) 3" or "A. 3" lines), or {}."""
    _, sep, block = question.partition("Choices:")
    if not sep:
        return {}
    out = {}
    for line in block.splitlines():
        m = _OPTION.match(line)
        if m:
            out[m.group(1)] = m.group(2)
        elif line.strip() and out:
            break  # the block ended
    return out


def parse_answer(reply: str, choices: dict[str, str]) -> str:
    text = reply.strip()
    marks = list(_ANSWER_MARK.finditer(text))
    if marks:
        text = text[marks[-1].end():]
    elif len(text.split()) > MAX_ANSWER_WORDS:
        raise Skip("long_answer")
    text = text.strip().rstrip(".").strip()
    if not text:
        raise Skip("empty_answer")
    if not choices:
        return text
    m = _LETTER.match(text)
    if m and m.group(1) in choices:
        return m.group(1)
    m = _OPTION.match(text)  # "(B) 3"
    if m and m.group(1) in choices:
        return m.group(1)
    want = " ".join(text.split()).lower()
    hits = [k for k, v in choices.items() if " ".join(v.split()).lower() == want]
    if len(hits) != 1:
        raise Skip("answer_not_among_choices")
    return hits[0]


def convert(name: str, rec: Record, root: Path, split: str) -> dict:
    if not rec["well_formed"]:
        raise Skip("malformed_turn")
    image = hf_image_bytes(rec.get("image"), root)
    question = rec["human"]
    choices = parse_choices(question)
    answer = parse_answer(rec["gpt"], choices)
    extra = {"split": split, "form": "llava", "id": rec.get("id"), "turn": rec["turn"]}
    if choices:
        extra["choices"] = [choices[k] for k in LETTERS if k in choices]
    return build_row(name, question, answer, [image], extra)
