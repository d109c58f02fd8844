"""The on-disk data schema: Parquet, a superset of verl's RL schema.

Every dataset ovlt reads or writes (RL prompts, SFT samples, evaluation sets, data-prep shards)
is a Parquet file whose rows look like this::

    {
      "data_source": "synthetic/count",            # where the row came from (str)
      "prompt": [{"role": "user",                  # chat messages; "<image>" marks where each
                  "content": "<image>How many ..."}],  # image of `images` goes, in order
      "images": [{"bytes": b"\\x89PNG...", "path": None}],   # like HF datasets' Image feature
      "ability": "visual-reasoning",               # free text, kept for verl interop
      "reward_model": {"style": "rule", "ground_truth": "3"},
      "extra_info": {"index": 0, "split": "train", ...},      # free-form dict
      "response": "<think>...</think> ... <answer>3</answer>",  # SFT rows only
    }

verl's RL parquet files load unchanged (they carry the same columns). One difference on write:
`extra_info` is stored as a JSON string column, so that rows with different keys (and different
value types) share one Arrow type and an empty dict is writable; `read_rows` turns it back into a
dict and also accepts verl's struct column. Tools that need verl's struct can `json.loads` it.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Iterable

import pyarrow as pa
import pyarrow.parquet as pq

IMAGE_PLACEHOLDER = "<image>"

_MESSAGE = pa.struct([("role", pa.string()), ("content", pa.string())])
_IMAGE = pa.struct([("bytes", pa.binary()), ("path", pa.string())])

SCHEMA = pa.schema(
    [
        ("data_source", pa.string()),
        ("prompt", pa.list_(_MESSAGE)),
        ("images", pa.list_(_IMAGE)),
        ("ability", pa.string()),
        ("reward_model", pa.struct([("style", pa.string()), ("ground_truth", pa.string())])),
        ("extra_info", pa.string()),
    ]
)
SFT_SCHEMA = SCHEMA.append(pa.field("response", pa.string()))


def make_row(
    *,
    data_source: str,
    question: str,
    ground_truth: str,
    images: list[bytes] | None = None,
    response: str | None = None,
    extra_info: dict[str, Any] | None = None,
    ability: str = "visual-reasoning",
) -> dict[str, Any]:
    """Build one row of the schema from its parts.

    `question` must already contain one "<image>" placeholder per image (callers put them where
    the image belongs; most single-image sources put it first).
    """
    images = images or []
    n_placeholders = question.count(IMAGE_PLACEHOLDER)
    if n_placeholders != len(images):
        raise ValueError(
            f"row from {data_source!r}: question has {n_placeholders} {IMAGE_PLACEHOLDER} "
            f"placeholders but {len(images)} images"
        )
    row = {
        "data_source": data_source,
        "prompt": [{"role": "user", "content": question}],
        "images": [{"bytes": b, "path": None} for b in images],
        "ability": ability,
        "reward_model": {"style": "rule", "ground_truth": str(ground_truth)},
        "extra_info": dict(extra_info or {}),
    }
    if response is not None:
        row["response"] = response
    return row


def write_rows(rows: Iterable[dict[str, Any]], path: str | os.PathLike) -> Path:
    """Write rows to a Parquet file atomically (temp file + rename); returns the path.

    Rows with a `response` key make an SFT file; all rows of one file must agree.
    """
    rows = list(rows)
    path = Path(path)
    sft = bool(rows) and "response" in rows[0]
    if any(("response" in r) != sft for r in rows):
        raise ValueError(f"{path}: some rows have a 'response' and some don't; write SFT and RL rows to separate files")
    schema = SFT_SCHEMA if sft else SCHEMA
    columns: dict[str, list] = {name: [] for name in schema.names}
    for r in rows:
        for name in schema.names:
            value = r.get(name) if name in ("ability", "images") else r[name]
            if name == "extra_info":
                value = json.dumps(value or {}, sort_keys=True, default=str)
            elif name == "images":
                value = value or []
            elif name == "ability":
                value = value or ""
            columns[name].append(value)
    table = pa.table(columns, schema=schema)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    pq.write_table(table, tmp)
    os.replace(tmp, path)
    return path


def read_rows(path: str | os.PathLike, columns: list[str] | None = None) -> list[dict[str, Any]]:
    """Read a Parquet file of this schema (or verl's) into a list of dicts; `extra_info` as a dict."""
    rows = pq.read_table(path, columns=columns).to_pylist()
    for r in rows:
        info = r.get("extra_info")
        if isinstance(info, str):
            r["extra_info"] = json.loads(info) if info else {}
        elif info is None and "extra_info" in r:
            r["extra_info"] = {}
    return rows


def question_text(row: dict[str, Any]) -> str:
    """The user turn's text (placeholders included): the last user message of `prompt`."""
    users = [m["content"] for m in row["prompt"] if m["role"] == "user"]
    if not users:
        raise ValueError(f"row from {row.get('data_source')!r} has no user message in 'prompt'")
    return users[-1]


def ground_truth(row: dict[str, Any]) -> str:
    return row["reward_model"]["ground_truth"]
