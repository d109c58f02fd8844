"""Schema rows -> rollout-engine prompt items, and the engine itself, for data preparation.

Engines take `PromptDataset` items (ovlt_rl/data/dataset.py). The dataset reads parquet files,
so a batch of rows is written to a temporary parquet file and read back through it: the same
validation, chat template, image resizing and token counting as training. Rows the dataset
skips (bad image, prompt too long, ...) are returned as skipped, with the dataset's reasons.
"""

from __future__ import annotations

import tempfile
from collections import Counter
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

from ovlt_rl.data.schema import write_rows

Rows = list[dict[str, Any]]
_UID = "prep_uid"  # position of a row in its batch, carried through extra_info to map items back


class PromptMaker:
    """Turns rows into engine prompt items with the training data settings (cfg.data)."""

    def __init__(self, processor, data_cfg, prompt_suffix: str | None):
        self.processor = processor
        self.min_pixels, self.max_pixels = data_cfg.min_pixels, data_cfg.max_pixels
        self.max_prompt_length = data_cfg.max_prompt_length
        self.prompt_suffix = prompt_suffix or None
        self.skipped: Counter = Counter()

    def items(self, rows: Rows) -> tuple[list[dict[str, Any]], list[int]]:
        """(prompt items, the index in `rows` of each item); rows the dataset rejects are counted
        in `skipped` and have no item."""
        from ovlt_rl.data.dataset import DatasetError, PromptDataset

        if not rows:
            return [], []
        tagged = [{**r, "extra_info": {**r["extra_info"], _UID: i}} for i, r in enumerate(rows)]
        # the dataset validates ground truths; prompts made for captioning have none to check
        for r in tagged:
            r["reward_model"] = r.get("reward_model") or {"style": "rule", "ground_truth": "-"}
        tagged = [{k: v for k, v in r.items() if k != "response"} for r in tagged]
        with tempfile.TemporaryDirectory(prefix="ovlt-prompts-") as tmp:
            path = write_rows(tagged, Path(tmp) / "batch.parquet")
            try:
                ds = PromptDataset(path, self.processor, min_pixels=self.min_pixels, max_pixels=self.max_pixels,
                                   max_prompt_length=self.max_prompt_length, prompt_suffix=self.prompt_suffix,
                                   max_bad_fraction=1.0)
            except DatasetError:  # no usable row at all in this batch
                self.skipped["unusable_prompt"] += len(rows)
                return [], []
            self.skipped.update(ds.skipped)
            items = [ds[i] for i in range(len(ds))]
        return items, [it["extra_info"][_UID] for it in items]


class TextPromptMaker:
    """Prompt items for a text-only model (e.g. an R1-distilled reasoner): the tokenizer's chat
    template over the user turn, no images. Same item keys as PromptDataset items."""

    def __init__(self, tokenizer, max_prompt_length: int):
        self.tokenizer = tokenizer
        self.max_prompt_length = max_prompt_length
        self.skipped: Counter = Counter()

    def items(self, rows: Rows) -> tuple[list[dict[str, Any]], list[int]]:
        import torch

        from ovlt_rl.data.schema import question_text

        items, index = [], []
        for i, r in enumerate(rows):
            if r.get("images"):
                self.skipped["images_for_text_model"] += 1
                continue
            chat = [{"role": "user", "content": question_text(r)}]
            text = self.tokenizer.apply_chat_template(chat, add_generation_prompt=True, tokenize=False)
            ids = self.tokenizer(text, add_special_tokens=False)["input_ids"]
            if len(ids) > self.max_prompt_length:
                self.skipped["prompt_too_long"] += 1
                continue
            input_ids = torch.tensor(ids, dtype=torch.long)
            items.append({
                "input_ids": input_ids, "mm_token_type_ids": torch.zeros_like(input_ids),
                "pixel_values": None, "image_grid_thw": None, "prompt_text": text, "images": [],
                "ground_truth": r["reward_model"]["ground_truth"] if r.get("reward_model") else None,
                "data_source": r.get("data_source"), "extra_info": r.get("extra_info") or {}, "index": i,
            })
            index.append(i)
        return items, index


def _prompt_maker(cfg, path: str, prompt_suffix: str | None):
    """PromptMaker with the training image bounds (cfg.data) for Qwen2.5-VL folders,
    TextPromptMaker for text-only models."""
    from ovlt_rl.models.loading import is_vision_language, load_processor

    if is_vision_language(path):
        processor = load_processor(path, min_pixels=cfg.data.min_pixels, max_pixels=cfg.data.max_pixels)
        return PromptMaker(processor, cfg.data, prompt_suffix)
    from transformers import AutoTokenizer

    return TextPromptMaker(AutoTokenizer.from_pretrained(path), cfg.data.max_prompt_length)


def load_engine(cfg, model_path: str, prompt_suffix: str | None = None):
    """The rollout engine of cfg.rollout.engine (hf on CPU) for `model_path` in this process, on
    prepare.device, and the prompt maker for it."""
    from ovlt_rl.engines import make_engine
    from ovlt_rl.models.loading import resolve_model_path
    from ovlt_rl.workers.engine_pool import resolve_device

    path = resolve_model_path(model_path)
    return make_engine(cfg, path, resolve_device(cfg.prepare.device)), _prompt_maker(cfg, path, prompt_suffix)


@contextmanager
def load_engines(cfg, model_path: str, prompt_suffix: str | None = None) -> Iterator[list[tuple[Any, Any]]]:
    """prepare.num_engines (engine, prompt maker) pairs for `model_path`: the engine in this process
    for 1, Ray actors of rollout.gpus_per_worker GPUs each for more (ovlt_rl/workers/engine_pool.py),
    stopped on exit. Each engine has its own maker: the pipeline runs one thread per engine, and
    a maker counts its skipped prompts and holds a tokenizer, neither of which is shared across
    threads (sum the counts with `skipped_counts`)."""
    from ovlt_rl.models.loading import resolve_model_path
    from ovlt_rl.workers.engine_pool import EnginePool

    path = resolve_model_path(model_path)
    with EnginePool(cfg, path, cfg.prepare.num_engines, cfg.prepare.device, what="prepare") as pool:
        yield [(engine, _prompt_maker(cfg, path, prompt_suffix)) for engine in pool.engines]


def skipped_counts(pairs: list[tuple[Any, Any]]) -> dict[str, int]:
    """The prompts the makers of `pairs` skipped, by reason, over all engines."""
    total: Counter = Counter()
    for _, maker in pairs:
        total.update(maker.skipped)
    return dict(total)
