"""Datasets over Parquet rows: RL prompts (`PromptDataset`) and SFT samples (`SFTDataset`).

How it works:
- Construction reads every file (schema.read_rows) and validates every row eagerly, in O(rows)
  without decoding pixels: prompt structure, question text, ground truth (RL) or response (SFT),
  "<image>" placeholders against images, special-token strings inside the text, each image's header
  and structure (PIL verify), and the exact token length, counted from the image sizes (an image
  resized by `fit_image` gives (h/28)*(w/28) image tokens) and one batched tokenizer call.
- A bad row is skipped, counted in `dataset.skipped[reason]` and logged with its file and row
  index. Reasons: bad_prompt, empty_question, missing_answer, missing_response, image_count_mismatch,
  special_tokens_in_text, bad_image, prompt_too_long (RL), too_long (SFT: prompt + response), and
  decode_error (found later, while training: see `__getitem__`). Nothing
  is ever truncated. If more than `max_bad_fraction` of a file's rows are bad, construction raises
  DatasetError naming the file and the counts.
- `__getitem__` decodes and resizes the images, runs the processor and returns a dict of 1-D
  tensors (no padding; collate.py pads) plus metadata, the chat-template text (`prompt_text`) and
  the resized PIL images (`images`) for engines that take raw prompts (vLLM). It checks that the
  token count matches what validation computed; an image that passed the cheap check but fails to
  decode raises ImageError naming the row. Training skips such a row (ovlt_rl/data/items.py):
  `record_decode_failure` counts it as decode_error against the same max_bad_fraction of its file.
- SFT items hold prompt + response + <|im_end|> and `labels_mask`: 1 on the response tokens and the
  closing <|im_end|>, 0 on the prompt (system, user, image tokens, assistant header). The response is
  tokenized on its own after the prompt, exactly as a model generates it.

Rows stay in memory (image bytes included), like verl's and EasyR1's datasets: ~5k RL rows or ~25k
SFT rows of compressed images are hundreds of MB to a few GB.
"""

from __future__ import annotations

import logging
import os
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import torch

from ovlt_rl.data import schema
from ovlt_rl.data.formats import DataFormat, read_source, source_exists
from ovlt_rl.data.images import ImageError, check_image, fit_image, fitted_size, load_image
from ovlt_rl.data.prompts import (
    chat_messages,
    count_placeholders,
    encode_prompt,
    image_token_count,
    render_prompt,
    special_token_pattern,
)

log = logging.getLogger(__name__)

# Per file, this many bad rows are logged one by one; the rest are summed up in one line.
_MAX_LOGGED_PER_FILE = 20


class DatasetError(ValueError):
    """Too many bad rows in a file, or no usable rows at all."""


@dataclass
class _Entry:
    """One validated row, with what validation computed about it."""

    row: dict[str, Any]
    file: Path
    row_index: int
    prompt_text: str  # chat template applied, one <|image_pad|> per image
    image_expansion: int  # tokens the processor adds when it expands the <|image_pad|>s
    response_ids: list[int] | None = None  # SFT: response tokens + <|im_end|>
    prompt_length: int = 0  # tokens, image tokens included (set after the batched tokenizer call)

    @property
    def source(self) -> str:
        return f"{self.file}#{self.row_index}"


class _RowSkipped(Exception):
    def __init__(self, reason: str, detail: str):
        super().__init__(detail)
        self.reason = reason


class _Rows:
    """Reading and eager validation shared by both datasets."""

    def __init__(
        self,
        path_or_paths: str | os.PathLike | Sequence[str | os.PathLike],
        processor,
        *,
        min_pixels: int | None,
        max_pixels: int | None,
        prompt_suffix: str | None,
        max_bad_fraction: float,
        sft: bool,
        response_key: str | None,
        max_tokens: int,
        too_long_reason: str,
        data_format: DataFormat,
    ):
        if isinstance(path_or_paths, (str, os.PathLike)):
            path_or_paths = [path_or_paths]
        self.paths = [Path(p) for p in path_or_paths]
        if not self.paths:
            raise DatasetError("no data files given")
        if not 0.0 <= max_bad_fraction <= 1.0:
            raise ValueError(f"max_bad_fraction must be in [0, 1], got {max_bad_fraction}")
        self.processor = processor
        self.tokenizer = processor.tokenizer
        ip = processor.image_processor
        self.patch_size, self.merge_size = int(ip.patch_size), int(ip.merge_size)
        self.factor = self.patch_size * self.merge_size
        proc_min, proc_max = int(ip.size["shortest_edge"]), int(ip.size["longest_edge"])
        self.processor_bounds = (proc_min, proc_max)
        self.min_pixels = proc_min if min_pixels is None else int(min_pixels)
        self.max_pixels = proc_max if max_pixels is None else int(max_pixels)
        if not (proc_min <= self.min_pixels <= self.max_pixels <= proc_max):
            # Outside them the processor, which resizes again with its own bounds, would silently
            # override these.
            raise ValueError(
                f"min_pixels={self.min_pixels}, max_pixels={self.max_pixels} must lie within the processor's "
                f"bounds [{proc_min}, {proc_max}]; load it with load_processor(path, min_pixels=..., max_pixels=...)"
            )
        self.prompt_suffix = prompt_suffix
        self.max_bad_fraction = max_bad_fraction
        self.sft = sft
        self.response_key = response_key
        self.max_tokens = int(max_tokens)
        self.too_long_reason = too_long_reason
        self.data_format = data_format
        self.im_end_id = self.tokenizer.convert_tokens_to_ids("<|im_end|>")
        self.special = special_token_pattern(self.tokenizer)
        self.skipped: Counter = Counter()
        self.entries: list[_Entry] = []
        self.rows_per_file: dict[Path, int] = {}
        self.bad_per_file: Counter = Counter()  # at construction, plus images that fail to decode later
        for path in self.paths:
            self._read_file(path)
        if not self.entries:
            raise DatasetError(f"no usable rows in {', '.join(map(str, self.paths))} (skipped: {dict(self.skipped)})")

    # -- validation ---------------------------------------------------------------------------

    def _read_file(self, path: Path) -> None:
        if not source_exists(path):
            raise FileNotFoundError(f"data file not found: {path}")
        rows = read_source(path, self.data_format)
        if not rows:
            log.warning("%s has no rows", path)
        skipped: Counter = Counter()
        candidates: list[_Entry] = []

        def skip(index: int, reason: str, detail: str) -> None:
            skipped[reason] += 1
            if sum(skipped.values()) <= _MAX_LOGGED_PER_FILE:
                log.warning("skipping %s#%d (%s): %s", path, index, reason, detail)

        for index, row in enumerate(rows):
            try:
                candidates.append(self._check_row(row, path, index))
            except _RowSkipped as e:
                skip(index, e.reason, str(e))

        # One batched tokenizer call for all prompts; the text holds one <|image_pad|> per image.
        texts = [e.prompt_text for e in candidates]
        lengths = [len(ids) for ids in self.tokenizer(texts, add_special_tokens=False)["input_ids"]] if texts else []
        for entry, text_len in zip(candidates, lengths):
            entry.prompt_length = text_len + entry.image_expansion
            total = entry.prompt_length + (len(entry.response_ids) if entry.response_ids is not None else 0)
            if total > self.max_tokens:
                skip(entry.row_index, self.too_long_reason, f"{total} tokens > limit {self.max_tokens}")
                continue
            self.entries.append(entry)

        n_bad = sum(skipped.values())
        if n_bad > _MAX_LOGGED_PER_FILE:
            log.warning("%s: %d more bad rows not logged one by one", path, n_bad - _MAX_LOGGED_PER_FILE)
        self.skipped.update(skipped)
        self.rows_per_file[path] = len(rows)
        self.bad_per_file[path] += n_bad
        if rows and n_bad / len(rows) > self.max_bad_fraction:
            raise DatasetError(
                f"{path}: {n_bad} of {len(rows)} rows are bad ({n_bad / len(rows):.0%} > max_bad_fraction "
                f"{self.max_bad_fraction:.0%}): {dict(skipped)}"
            )

    def _check_row(self, row: dict[str, Any], path: Path, index: int) -> _Entry:
        prompt = row.get("prompt")
        if not prompt or any(not isinstance(m.get("content"), str) for m in prompt):
            raise _RowSkipped("bad_prompt", "no prompt messages, or a message without text content")
        try:
            question = schema.question_text(row)
        except ValueError as e:
            raise _RowSkipped("bad_prompt", str(e)) from None
        if not question.replace(schema.IMAGE_PLACEHOLDER, "").strip():
            raise _RowSkipped("empty_question", "the question has no text")
        texts = [m["content"] for m in prompt]
        if not self.sft:
            gt = (row.get("reward_model") or {}).get("ground_truth")
            if gt is None or not str(gt).strip():
                raise _RowSkipped("missing_answer", "no ground truth")
        response = None
        if self.sft or self.response_key:
            key = "response" if self.sft else self.response_key
            response = row.get(key)
            if not isinstance(response, str) or not response.strip():
                raise _RowSkipped("missing_response", f"no {key!r}")
            texts.append(response)
        found = next((m.group(0) for t in texts if (m := self.special.search(t))), None)
        if found:
            raise _RowSkipped("special_tokens_in_text", f"the text contains the special token {found!r}")
        images = row.get("images") or []
        n_placeholders = count_placeholders(prompt)
        if n_placeholders != len(images):
            raise _RowSkipped(
                "image_count_mismatch", f"{n_placeholders} {schema.IMAGE_PLACEHOLDER} placeholders but {len(images)} images"
            )
        image_expansion = 0
        for k, image in enumerate(images):
            try:
                w, h = fitted_size(
                    *check_image(image, path.parent), min_pixels=self.min_pixels, max_pixels=self.max_pixels, factor=self.factor
                )
                # The processor applies smart_resize once more, with its own bounds, to what it gets:
                # a no-op, except where smart_resize is not idempotent (min_pixels == max_pixels,
                # as in the paper's 262144/262144, can move a size back and forth).
                lo, hi = self.processor_bounds
                w, h = fitted_size(w, h, min_pixels=lo, max_pixels=hi, factor=self.factor)
            except ImageError as e:
                raise _RowSkipped("bad_image", f"image {k}: {e}") from None
            # The template already holds one <|image_pad|> per image: add the expansion only.
            image_expansion += image_token_count(w, h, patch_size=self.patch_size, merge_size=self.merge_size) - 1
        prompt_text = render_prompt(self.processor, chat_messages(prompt, suffix=self.prompt_suffix))
        response_ids = None
        if self.sft:
            response_ids = [*self.tokenizer(response, add_special_tokens=False)["input_ids"], self.im_end_id]
        return _Entry(row, path, index, prompt_text, image_expansion, response_ids)

    # -- items ----------------------------------------------------------------------------------

    def encode(self, i: int) -> dict[str, Any]:
        entry = self.entries[i]
        row = entry.row
        try:
            images = [
                fit_image(load_image(img, entry.file.parent), min_pixels=self.min_pixels, max_pixels=self.max_pixels, factor=self.factor)
                for img in row.get("images") or []
            ]
        except ImageError as e:
            raise ImageError(f"{entry.source}: {e}") from e
        enc = encode_prompt(self.processor, entry.prompt_text, images)
        if len(enc["input_ids"]) != entry.prompt_length:
            raise RuntimeError(
                f"{entry.source}: the prompt encodes to {len(enc['input_ids'])} tokens but validation counted "
                f"{entry.prompt_length}; the processor resized the images differently from fit_image"
            )
        item = {
            **enc,
            "prompt_text": entry.prompt_text,
            "images": images,
            "ground_truth": schema.ground_truth(row) if row.get("reward_model") else None,
            "data_source": row.get("data_source"),
            "extra_info": row.get("extra_info") or {},
            "index": i,
            "source": entry.source,
        }
        if self.response_key and not self.sft:
            item["response"] = row[self.response_key]
        return item

    def lengths(self) -> list[int]:
        return [e.prompt_length + len(e.response_ids or ()) for e in self.entries]

    def record_decode_failure(self, i: int, error: Exception | str) -> None:
        """Count item `i`, whose image passed the cheap check but failed to decode, as a bad row of
        its file (reason decode_error) and log it; DatasetError once the file's bad rows (those of
        construction included) exceed max_bad_fraction. Call once per item."""
        entry = self.entries[i]
        self.skipped["decode_error"] += 1
        self.bad_per_file[entry.file] += 1
        error = str(error).removeprefix(f"{entry.source}: ")  # `encode` names the row already
        log.warning("skipping %s (decode_error): %s", entry.source, error)
        n_bad, n_rows = self.bad_per_file[entry.file], self.rows_per_file[entry.file]
        if n_bad / n_rows > self.max_bad_fraction:
            raise DatasetError(
                f"{entry.file}: {n_bad} of {n_rows} rows are bad ({n_bad / n_rows:.0%} > max_bad_fraction "
                f"{self.max_bad_fraction:.0%}), the last an image that failed to decode at row {entry.row_index}: {error}"
            )


class PromptDataset:
    """RL prompts: each item is the encoded prompt of one row (see the module docstring).

    min_pixels/max_pixels default to the processor's bounds. `response_key`, if set, names a column
    whose text each item carries as `item["response"]` (rows without it are skipped as
    missing_response), e.g. reference answers to compare against. `data_format` reads verl's and
    EasyR1's layouts (formats.py).
    """

    def __init__(
        self,
        path_or_paths,
        processor,
        *,
        min_pixels: int | None = None,
        max_pixels: int | None = None,
        max_prompt_length: int,
        prompt_suffix: str | None = None,
        max_bad_fraction: float = 0.1,
        response_key: str | None = None,
        data_format: DataFormat = DataFormat(),
    ):
        self._rows = _Rows(
            path_or_paths,
            processor,
            min_pixels=min_pixels,
            max_pixels=max_pixels,
            prompt_suffix=prompt_suffix,
            max_bad_fraction=max_bad_fraction,
            sft=False,
            response_key=response_key,
            max_tokens=max_prompt_length,
            too_long_reason="prompt_too_long",
            data_format=data_format,
        )

    @property
    def skipped(self) -> Counter:
        return self._rows.skipped

    @property
    def lengths(self) -> list[int]:
        """Prompt length in tokens (image tokens included) of each item."""
        return self._rows.lengths()

    def __len__(self) -> int:
        return len(self._rows.entries)

    def source(self, i: int) -> str:
        """"file#row" of item `i`."""
        return self._rows.entries[i].source

    def record_decode_failure(self, i: int, error: Exception | str) -> None:
        """See `_Rows.record_decode_failure`: count, log, and stop past max_bad_fraction."""
        self._rows.record_decode_failure(i, error)

    def __getitem__(self, i: int) -> dict[str, Any]:
        return self._rows.encode(i)


class SFTDataset:
    """SFT samples: prompt + assistant response, with `labels_mask` on the response (+ <|im_end|>).

    Samples longer than `max_length` tokens (prompt with image tokens + response + <|im_end|>) are
    skipped and counted as too_long, never truncated. `data_format` reads ShareGPT-style
    "messages + images" files (formats.py).
    """

    def __init__(
        self,
        path_or_paths,
        processor,
        *,
        min_pixels: int | None = None,
        max_pixels: int | None = None,
        max_length: int,
        prompt_suffix: str | None = None,
        max_bad_fraction: float = 0.1,
        data_format: DataFormat = DataFormat(),
    ):
        self._rows = _Rows(
            path_or_paths,
            processor,
            min_pixels=min_pixels,
            max_pixels=max_pixels,
            prompt_suffix=prompt_suffix,
            max_bad_fraction=max_bad_fraction,
            sft=True,
            response_key=None,
            max_tokens=max_length,
            too_long_reason="too_long",
            data_format=data_format,
        )

    @property
    def skipped(self) -> Counter:
        return self._rows.skipped

    @property
    def lengths(self) -> list[int]:
        """Total length in tokens (prompt with image tokens + response + <|im_end|>) of each item."""
        return self._rows.lengths()

    def __len__(self) -> int:
        return len(self._rows.entries)

    def source(self, i: int) -> str:
        """"file#row" of item `i`."""
        return self._rows.entries[i].source

    def record_decode_failure(self, i: int, error: Exception | str) -> None:
        """See `_Rows.record_decode_failure`: count, log, and stop past max_bad_fraction."""
        self._rows.record_decode_failure(i, error)

    def __getitem__(self, i: int) -> dict[str, Any]:
        item = self._rows.encode(i)
        response_ids = torch.tensor(self._rows.entries[i].response_ids, dtype=torch.long)
        n_prompt = len(item["input_ids"])
        item["input_ids"] = torch.cat([item["input_ids"], response_ids])
        item["mm_token_type_ids"] = torch.cat([item["mm_token_type_ids"], torch.zeros_like(response_ids)])
        labels_mask = torch.zeros(len(item["input_ids"]), dtype=torch.long)
        labels_mask[n_prompt:] = 1
        item["labels_mask"] = labels_mask
        item["prompt_length"] = n_prompt
        item["response"] = self._rows.entries[i].row["response"]
        return item
