"""Identity of schema rows: which image, which question, how long a response is.

Filters, de-duplication, contamination checks and mixes all need to say "the same question":
the same image bytes and the same question text after normalisation. The rules live here once.
"""

from __future__ import annotations

import hashlib
import re
from typing import Any, Sequence

from ovlt_rl.data.schema import IMAGE_PLACEHOLDER, question_text

_TAGS = re.compile(r"</?(?:think|answer)>")
_SPACE = re.compile(r"\s+")
_EDGE_PUNCT = " \t\n.?!:;,"


def image_hash(row: dict[str, Any]) -> str:
    """sha256 over the row's image bytes, in order ("" for a row without images).

    An image given only by path is hashed by its file content, so the same picture stored two
    ways gets the same hash.
    """
    images = row.get("images") or []
    if not images:
        return ""
    h = hashlib.sha256()
    for i, img in enumerate(images):
        data = img.get("bytes")
        if data is None:
            path = img.get("path")
            if not path:
                raise ValueError(f"row from {row.get('data_source')!r}: image {i} has neither bytes nor a path")
            with open(path, "rb") as f:
                data = f.read()
        h.update(hashlib.sha256(data).digest())
    return h.hexdigest()


def normalize_question(text: str, boilerplate: Sequence[str] = ()) -> str:
    """Question text for comparison: image placeholders and instruction boilerplate removed,
    lower case, whitespace collapsed, punctuation at the ends stripped."""
    text = text.replace(IMAGE_PLACEHOLDER, " ")
    low = text.lower()
    for b in boilerplate:
        b = b.strip().lower()
        if b:
            low = low.replace(b, " ")
    return _SPACE.sub(" ", low).strip(_EDGE_PUNCT)


def question_key(row: dict[str, Any], boilerplate: Sequence[str] = ()) -> str:
    return normalize_question(question_text(row), boilerplate)


def item_key(row: dict[str, Any], boilerplate: Sequence[str] = ()) -> tuple[str, str]:
    """(image hash, normalised question): one question about one image."""
    return image_hash(row), question_key(row, boilerplate)


def word_count(response: str) -> int:
    """Words of a response: whitespace-separated tokens after the think/answer tags are replaced
    by spaces (so "<think>Okay" is one word and a tag alone is none)."""
    return len(_TAGS.sub(" ", response).split())
