"""Reading other projects' dataset layouts as ovlt rows (schema.py), unchanged on disk.

How it works: `read_source(spec, fmt)` returns schema rows (the dicts `schema.read_rows` returns)
from whatever `spec` names, so the datasets validate and encode them exactly like ovlt's own files.

Where the rows come from (`spec`):
- a `.parquet` file;
- a folder saved by HF datasets' `save_to_disk` (Arrow stream files listed in state.json, read with
  pyarrow; `folder@split` picks a split of a saved DatasetDict, default "train");
- a folder of `.parquet` files (EasyR1's `load_dataset("parquet", data_dir=...)`; `folder@split`
  keeps the files named `split-*` or under a `split/` folder);
- a `.json` (a list of objects) or `.jsonl` file (LLaMA-Factory's ShareGPT-style SFT data).

What the rows look like (`fmt.name`; column names set by the `*_key` fields):
- "ovlt" / "verl": verl's RL parquet, which ovlt's is a superset of: chat messages in `prompt_key`,
  images in `image_key`, `reward_model.ground_truth`, `data_source`, `extra_info`.
- "easyr1": EasyR1's RLHFDataset layout: the prompt text in `prompt_key` with one "<image>" per
  image, the answer in `answer_key`, images in `image_key`.
- "sharegpt": SFT rows, `messages_key` holding {"role", "content"} (or ShareGPT's {"from", "value"},
  human/gpt) messages ending with the assistant's response, images in `image_key`, an optional
  `system` column.

Images may be HF Image structs ({"bytes", "path"}), raw bytes, a path string, or a list of these.
Relative paths are taken from `image_dir` when set (EasyR1's `data.image_dir`, LLaMA-Factory's
`media_dir`), else from the data file's folder (EasyR1 without image_dir opens them from its
working folder: set image_dir to that folder). A row these rules can't read raises FormatError
naming the file, the row and the column; a row with a missing value is passed on to the dataset's
checks, which skip and count it (missing_answer, bad_prompt, ...).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from ovlt_rl.data import schema

FORMATS = ("ovlt", "verl", "easyr1", "sharegpt")
# ShareGPT's speaker names, as LLaMA-Factory's sharegpt tags default them.
_SHAREGPT_ROLES = {"human": "user", "gpt": "assistant", "system": "system", "user": "user", "assistant": "assistant"}


class FormatError(ValueError):
    """A data source or a row that the chosen format can't read; the message names where."""


@dataclass(frozen=True)
class DataFormat:
    """Which layout to read and its column names (DataConfig's fields of the same names)."""

    name: str = "ovlt"
    prompt_key: str = "prompt"
    answer_key: str = "answer"
    image_key: str = "images"
    messages_key: str = "messages"
    image_dir: str = ""

    @classmethod
    def from_config(cls, d) -> "DataFormat":
        """From the data section of the config tree (DataConfig)."""
        return cls(d.format, d.prompt_key, d.answer_key, d.image_key, d.messages_key, d.image_dir)

    def __post_init__(self):
        if self.name not in FORMATS:
            raise FormatError(f"unknown data format {self.name!r}; one of {', '.join(FORMATS)}")


def split_spec(spec: str | os.PathLike) -> tuple[Path, str | None]:
    """"path@split" -> (path, split); a path that exists as written is never split."""
    text = str(spec)
    if "@" in Path(text).name and not Path(text).exists():
        path, split = text.rsplit("@", 1)
        return Path(path), split
    return Path(text), None


def source_exists(spec: str | os.PathLike) -> bool:
    path, _ = split_spec(spec)
    return path.is_file() or path.is_dir()


def missing_sources(specs: list[str]) -> list[str]:
    """The data files (or folders) of `specs` that are not there."""
    return [s for s in specs if not source_exists(s)]


def require_sources(specs: list[str]) -> None:
    """FileNotFoundError naming every data file (or folder) of `specs` that is not there."""
    missing = missing_sources(specs)
    if missing:
        raise FileNotFoundError(f"data files not found: {', '.join(missing)}")


def _arrow_files(folder: Path, split: str | None) -> list[Path]:
    if (folder / "dataset_dict.json").is_file():  # a saved DatasetDict: one saved Dataset per split
        splits = json.loads((folder / "dataset_dict.json").read_text())["splits"]
        split = split or "train"
        if split not in splits:
            raise FormatError(f"{folder}: no split {split!r} (splits: {', '.join(splits)}); name one as {folder}@SPLIT")
        return _arrow_files(folder / split, None)
    state = json.loads((folder / "state.json").read_text())
    return [folder / f["filename"] for f in state["_data_files"]]


def _read_records(spec: str | os.PathLike) -> tuple[list[dict[str, Any]], list[str], Path]:
    """The source's rows as dicts, its column names, and the folder its relative image paths start from."""
    path, split = split_spec(spec)
    if path.is_file():
        if split is not None:
            raise FormatError(f"{spec}: a split (@{split}) only applies to a dataset folder")
        if path.suffix == ".parquet":
            return _records(pq.read_table(path), path.parent)
        if path.suffix in (".json", ".jsonl"):
            text = path.read_text(encoding="utf-8")
            try:
                rows = json.loads(text) if path.suffix == ".json" else [json.loads(line) for line in text.splitlines() if line.strip()]
            except json.JSONDecodeError as e:
                raise FormatError(f"{path}: not valid JSON ({e})") from None
            if not isinstance(rows, list) or not all(isinstance(r, dict) for r in rows):
                raise FormatError(f"{path}: expected a list of objects (one per sample)")
            return rows, sorted({k for r in rows for k in r}), path.parent
        raise FormatError(f"{path}: unknown file type {path.suffix!r} (.parquet, .json or .jsonl)")
    if not path.is_dir():
        raise FileNotFoundError(f"data not found: {path}")
    if (path / "state.json").is_file() or (path / "dataset_dict.json").is_file():
        tables = []
        for f in _arrow_files(path, split):
            with pa.OSFile(str(f)) as source:  # read in full: to_pylist copies the rows anyway
                tables.append(pa.ipc.open_stream(source).read_all())
        return _records(pa.concat_tables(tables), path)
    files = sorted(path.rglob("*.parquet"))
    if split is not None:
        files = [f for f in files if f.name.startswith(f"{split}-") or split in f.relative_to(path).parts[:-1]]
    if not files:
        raise FormatError(f"{spec}: no .parquet files (nor a save_to_disk dataset) in the folder")
    return _records(pa.concat_tables([pq.read_table(f) for f in files], promote_options="default"), path)


def _records(table: pa.Table, folder: Path) -> tuple[list[dict[str, Any]], list[str], Path]:
    return table.to_pylist(), table.column_names, folder


def _image(value: Any, base: Path, where: str) -> dict[str, Any]:
    if isinstance(value, (bytes, bytearray)):
        return {"bytes": bytes(value), "path": None}
    if isinstance(value, str):
        return {"bytes": None, "path": str(base / value)}  # an absolute value stays as it is
    if isinstance(value, dict) and ("bytes" in value or "path" in value):
        path = value.get("path")
        return {"bytes": value.get("bytes"), "path": str(base / path) if path else None}
    raise FormatError(f"{where}: an image must be bytes, a path or {{'bytes', 'path'}}, got {type(value).__name__}")


def _images(row: dict[str, Any], key: str, base: Path, where: str) -> list[dict[str, Any]]:
    value = row.get(key)
    if value is None:
        return []
    if not isinstance(value, list):
        value = [value]
    return [_image(v, base, f"{where} column {key!r}") for v in value]


def _ground_truth(value: Any, where: str) -> str | None:
    if value is None or isinstance(value, str):
        return value
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return str(value)
    raise FormatError(f"{where}: the ground truth must be a string or a number (ovlt's rewards get strings), got {type(value).__name__}")


def _extra_info(value: Any, where: str) -> dict[str, Any]:
    """verl's extra_info: a struct, or a JSON object as text; anything else names the row."""
    if isinstance(value, str):
        try:
            value = json.loads(value) if value else {}
        except json.JSONDecodeError as e:
            raise FormatError(f"{where}: extra_info is not valid JSON ({e})") from None
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise FormatError(f"{where}: extra_info must be an object, got {type(value).__name__}")
    return dict(value)


def _messages(value: Any, where: str) -> list[dict[str, str]]:
    if not isinstance(value, list):
        raise FormatError(f"{where}: expected a list of messages, got {type(value).__name__}")
    out = []
    for m in value:
        if not isinstance(m, dict):
            raise FormatError(f"{where}: a message must be an object, got {type(m).__name__}")
        role, content = (m.get("role"), m.get("content")) if "role" in m else (m.get("from"), m.get("value"))
        if role not in _SHAREGPT_ROLES:
            raise FormatError(f"{where}: unknown message role {role!r}")
        out.append({"role": _SHAREGPT_ROLES[role], "content": content})
    return out


def _convert(row: dict[str, Any], fmt: DataFormat, base: Path, source: str, where: str) -> dict[str, Any]:
    images = _images(row, fmt.image_key, base, where)
    data_source = row.get("data_source") or source
    if fmt.name in ("ovlt", "verl"):
        rm = row.get("reward_model") or {}
        out = {
            "data_source": data_source,
            "prompt": row.get(fmt.prompt_key),
            "images": images,
            "ability": row.get("ability") or "",
            "reward_model": {"style": rm.get("style") or "rule", "ground_truth": _ground_truth(rm.get("ground_truth"), where)},
            "extra_info": _extra_info(row.get("extra_info"), where),
        }
        if "response" in row:
            out["response"] = row["response"]
        return out
    if fmt.name == "easyr1":
        prompt = row.get(fmt.prompt_key)
        return {
            "data_source": data_source,
            "prompt": [{"role": "user", "content": prompt}] if prompt is not None else [],
            "images": images,
            "ability": "",
            "reward_model": {"style": "rule", "ground_truth": _ground_truth(row.get(fmt.answer_key), where)},
            "extra_info": {},
        }
    # sharegpt: the last message is the response to learn; the ones before it are the prompt.
    messages = _messages(row.get(fmt.messages_key), f"{where} column {fmt.messages_key!r}")
    if row.get("system") and not any(m["role"] == "system" for m in messages):
        messages.insert(0, {"role": "system", "content": row["system"]})
    last = messages[-1] if messages else None
    response = last["content"] if last and last["role"] == "assistant" else None
    answer = row.get(fmt.answer_key)
    return {
        "data_source": data_source,
        "prompt": messages[:-1] if response is not None else messages,
        "images": images,
        "ability": "",
        "reward_model": {"style": "rule", "ground_truth": _ground_truth(answer, where)} if answer is not None else None,
        "extra_info": {},
        "response": response,
    }


def read_source(spec: str | os.PathLike, fmt: DataFormat = DataFormat()) -> list[dict[str, Any]]:
    """Rows of `spec` in ovlt's schema (see the module docstring)."""
    path, _ = split_spec(spec)
    if fmt.name == "ovlt" and path.suffix == ".parquet" and fmt == DataFormat():
        rows = schema.read_rows(path)  # ovlt's own files: as they always were read
        for i, row in enumerate(rows):  # ground truths as in every other layout (a verl list is an error)
            if row.get("reward_model"):
                row["reward_model"]["ground_truth"] = _ground_truth(row["reward_model"].get("ground_truth"), f"{spec} row {i}")
        return rows
    records, columns, folder = _read_records(spec)
    base = Path(fmt.image_dir or folder).resolve()
    needed = {"easyr1": [fmt.prompt_key], "sharegpt": [fmt.messages_key]}.get(fmt.name, [fmt.prompt_key])
    missing = [c for c in needed if c not in columns]
    if records and missing:
        raise FormatError(
            f"{spec}: no column {missing[0]!r} for data.format={fmt.name} (columns: {', '.join(columns)}); "
            f"name the right one with data.{'messages_key' if fmt.name == 'sharegpt' else 'prompt_key'}"
        )
    source = path.stem if path.is_file() else path.name
    return [_convert(r, fmt, base, source, f"{spec} row {i}") for i, r in enumerate(records)]
