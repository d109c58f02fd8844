"""What every source adapter shares: reading records, images, choices, and counted skips.

An adapter reads a local copy of a dataset in its published form and yields schema rows
(ovlt_rl/data/schema.py). Multiple-choice questions follow the evaluation prompts of the
original (references.md): the question, then "Choices:\\n(A) ...\\n(B) ...", and the ground
truth is the option letter; the options also go to extra_info["choices"] for the
multiple_choice reward. Free-form questions keep their answer text as the ground truth.
A record that cannot become a verifiable row is skipped and counted by reason, never guessed.
"""

from __future__ import annotations

import io
import json
import os
from collections import Counter
from pathlib import Path
from typing import Any, Iterable, Iterator, Sequence

import pyarrow.parquet as pq
from PIL import Image

from ovlt_rl.data.schema import IMAGE_PLACEHOLDER, make_row

LETTERS = "ABCDEFGHIJKLMNOPQRSTUVWXYZ"


class Skip(Exception):
    """A record that cannot become a row; the message is the counted reason."""


def format_choices(question: str, choices: Sequence[str]) -> str:
    lines = [f"({LETTERS[i]}) {c}" for i, c in enumerate(choices)]
    return question.rstrip() + "\nChoices:\n" + "\n".join(lines)


def letter_for_index(index: Any, choices: Sequence[str]) -> str:
    try:
        i = int(index)
    except (TypeError, ValueError):
        raise Skip("answer_not_an_index") from None
    if not 0 <= i < len(choices):
        raise Skip("answer_index_out_of_range")
    return LETTERS[i]


def letter_for_text(answer: str, choices: Sequence[str]) -> str:
    """The letter of the option whose text is `answer` (case and spacing ignored)."""
    want = " ".join(str(answer).split()).lower()
    hits = [i for i, c in enumerate(choices) if " ".join(str(c).split()).lower() == want]
    if len(hits) != 1:
        raise Skip("answer_not_among_choices" if not hits else "answer_matches_several_choices")
    return LETTERS[hits[0]]


def check_image(data: bytes) -> bytes:
    """The bytes unchanged if PIL can read them as an image; Skip("bad_image") otherwise."""
    try:
        with Image.open(io.BytesIO(data)) as im:
            im.verify()
    except Exception:
        raise Skip("bad_image") from None
    return data


def read_file_image(candidates: Iterable[Path]) -> bytes:
    for p in candidates:
        if p.is_file():
            return check_image(p.read_bytes())
    raise Skip("missing_image")


def hf_image_bytes(value: Any, root: Path) -> bytes:
    """Bytes of an HF datasets Image value ({"bytes", "path"}), raw bytes, or a path string."""
    if value is None:
        raise Skip("no_image")
    if isinstance(value, (bytes, bytearray)):
        return check_image(bytes(value))
    if isinstance(value, dict):
        if value.get("bytes"):
            return check_image(value["bytes"])
        value = value.get("path")
        if not value:
            raise Skip("no_image")
    if isinstance(value, str):
        return read_file_image([root / value, Path(value)])
    raise Skip("no_image")


def parquet_records(path: Path, split: str) -> Iterator[dict[str, Any]]:
    """Records of a parquet file, or of a folder's parquet files (HF layout: data/train-*.parquet).

    In a folder, files whose name starts with the split are read when there are any, else all.
    """
    if path.is_file():
        files = [path]
    elif path.is_dir():
        files = sorted(path.rglob("*.parquet"))
        of_split = [f for f in files if f.name.startswith(split)]
        files = of_split or files
    else:
        raise FileNotFoundError(f"{path}: no such file or folder")
    if not files:
        raise FileNotFoundError(f"{path}: no parquet files")
    for f in files:
        pf = pq.ParquetFile(f)
        for batch in pf.iter_batches(batch_size=256):
            yield from batch.to_pylist()


def load_json(path: Path) -> Any:
    if path.suffix == ".jsonl":
        with open(path) as f:
            return [json.loads(line) for line in f if line.strip()]
    with open(path) as f:
        return json.load(f)


def build_row(source: str, question: str, ground_truth: str, images: list[bytes], extra: dict[str, Any],
              choices: Sequence[str] | None = None) -> dict[str, Any]:
    """A schema row: image placeholders first, then the question (and its choices)."""
    question = question.replace(IMAGE_PLACEHOLDER, " ").strip()
    if not question:
        raise Skip("empty_question")
    gt = str(ground_truth).strip()
    if not gt:
        raise Skip("empty_answer")
    extra = dict(extra)
    if choices:
        question = format_choices(question, choices)
        extra["choices"] = [str(c) for c in choices]
    return make_row(
        data_source=source,
        question=IMAGE_PLACEHOLDER * len(images) + question,
        ground_truth=gt,
        images=images,
        extra_info=extra,
    )


class Counts:
    """Rows read, made and skipped by reason, for the manifest."""

    def __init__(self) -> None:
        self.records = 0
        self.rows = 0
        self.skipped: Counter = Counter()

    def as_dict(self) -> dict[str, Any]:
        return {"records": self.records, "rows": self.rows, "skipped": dict(self.skipped)}


def root_of(path: Path, image_root: str) -> Path:
    if image_root:
        return Path(image_root).expanduser()
    return path if path.is_dir() else path.parent


def env_path(p: str) -> Path:
    return Path(os.path.expandvars(p)).expanduser()
