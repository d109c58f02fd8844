"""Datasets on disk the way verl, EasyR1 and LLaMA-Factory users have them, for the format tests.

The `datasets` library is not a dependency, so `save_to_disk` folders are written here in its
layout (one Arrow stream file per shard, state.json listing them, dataset_info.json, and
dataset_dict.json for a DatasetDict), with the column types its Image feature stores.
"""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

IMAGE = pa.struct([("bytes", pa.binary()), ("path", pa.string())])


def save_to_disk(table: pa.Table, folder: Path) -> Path:
    """`Dataset.save_to_disk(folder)`'s layout for one shard."""
    folder.mkdir(parents=True, exist_ok=True)
    with pa.OSFile(str(folder / "data-00000-of-00001.arrow"), "wb") as sink, pa.ipc.new_stream(sink, table.schema) as w:
        w.write_table(table)
    (folder / "state.json").write_text(json.dumps({
        "_data_files": [{"filename": "data-00000-of-00001.arrow"}], "_fingerprint": "0", "_format_columns": None,
        "_format_kwargs": {}, "_format_type": None, "_output_all_columns": False, "_split": folder.name,
    }))
    (folder / "dataset_info.json").write_text(json.dumps({"citation": "", "description": "", "features": {}}))
    return folder


def save_dataset_dict(splits: dict[str, pa.Table], folder: Path) -> Path:
    """`DatasetDict.save_to_disk(folder)`'s layout."""
    for name, table in splits.items():
        save_to_disk(table, folder / name)
    (folder / "dataset_dict.json").write_text(json.dumps({"splits": list(splits)}))
    return folder


def easyr1_table(pngs: list[bytes], answers: list[str], *, prompt_key: str = "problem", answer_key: str = "answer",
                 image_key: str = "images") -> pa.Table:
    """Rows like hiyouga/geometry3k's: a prompt text with "<image>", the answer, a list of HF Images."""
    return pa.table({
        image_key: pa.array([[{"bytes": p, "path": None}] for p in pngs], pa.list_(IMAGE)),
        prompt_key: [f"<image>How many red circles are there? Write the number in \\boxed{{}}." for _ in pngs],
        answer_key: answers,
    })


def verl_rows(pngs: list[bytes], answers: list[str], *, prompt_key: str = "prompt", image_key: str = "images") -> list[dict]:
    """Rows as verl's examples/data_preprocess/geo3k.py writes them (extra_info a struct column)."""
    return [
        {
            "data_source": "hiyouga/geometry3k",
            prompt_key: [{"role": "user", "content": "<image>How many red circles are there? End with 'Answer: N'."}],
            image_key: [{"bytes": p, "path": None}],
            "ability": "math",
            "reward_model": {"style": "rule", "ground_truth": a},
            "extra_info": {"split": "train", "index": i, "answer": a, "question": "How many red circles are there?"},
        }
        for i, (p, a) in enumerate(zip(pngs, answers))
    ]


def write_verl_parquet(rows: list[dict], path: Path) -> Path:
    pq.write_table(pa.Table.from_pylist(rows), path)
    return path
