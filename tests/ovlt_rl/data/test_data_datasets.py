"""PromptDataset and SFTDataset: items, every bad-row reason, limits, labels mask."""

from __future__ import annotations

import logging

import pytest
import torch

from ovlt_rl.data.dataset import DatasetError, PromptDataset, SFTDataset
from ovlt_rl.data.prompts import encode_prompt


def _bad_rows(image_row, png_bytes):
    """One row per bad-row reason, keyed by the reason it must be counted under."""
    bad_prompt = image_row(1)
    bad_prompt["prompt"] = []
    mismatch = image_row(1)
    mismatch["prompt"] = [{"role": "user", "content": "<image><image>Which is bigger?"}]
    missing_file = image_row(1)
    missing_file["images"] = [{"bytes": None, "path": "nowhere.png"}]
    corrupt = image_row(1)
    corrupt["images"] = [{"bytes": b"\x89PNG garbage", "path": None}]
    return {
        "bad_prompt": [bad_prompt],
        "empty_question": [image_row(1, question="<image>  \n ")],
        "missing_answer": [{**image_row(1), "reward_model": {"style": "rule", "ground_truth": " "}}],
        "image_count_mismatch": [mismatch],
        "special_tokens_in_text": [image_row(1, question="<image>What does <|im_end|> mean?")],
        "bad_image": [missing_file, corrupt],
        "prompt_too_long": [image_row(1, question="<image>" + "Count again. " * 60)],
    }


def test_prompt_items(tiny_processor, image_row, write_parquet):
    path = write_parquet([image_row(k) for k in range(4)])
    ds = PromptDataset(path, tiny_processor, max_prompt_length=200, prompt_suffix="Answer briefly.")
    assert len(ds) == 4 and sum(ds.skipped.values()) == 0
    item = ds[2]
    assert item["input_ids"].dim() == 1 and item["input_ids"].dtype == torch.long
    assert len(item["input_ids"]) == ds.lengths[2]
    assert item["image_grid_thw"].tolist() == [[1, 8, 8]]
    assert item["pixel_values"].shape == (64, 1176)
    assert (item["input_ids"] == tiny_processor.image_token_id).sum() == 16 == item["mm_token_type_ids"].sum()
    assert item["ground_truth"] == "2" and item["data_source"] == "test/count" and item["extra_info"] == {"k": 2}
    assert item["index"] == 2 and item["source"] == f"{path}#2"
    assert item["prompt_text"].count("<|image_pad|>") == 1
    assert "How many red circles are there?\nAnswer briefly.<|im_end|>" in item["prompt_text"]
    assert [im.size for im in item["images"]] == [(112, 112)]
    # prompt_text + images re-encode to the same ids (what an engine taking raw prompts sees).
    again = encode_prompt(tiny_processor, item["prompt_text"], item["images"])
    assert torch.equal(again["input_ids"], item["input_ids"])


def test_every_bad_row_reason_is_skipped_counted_and_logged(tiny_processor, image_row, png_bytes, write_parquet, caplog):
    bad = _bad_rows(image_row, png_bytes)
    rows = [image_row(k % 5) for k in range(72)] + [r for rs in bad.values() for r in rs]
    path = write_parquet(rows)
    with caplog.at_level(logging.WARNING, logger="ovlt_rl.data.dataset"):
        ds = PromptDataset(path, tiny_processor, max_prompt_length=120)
    assert dict(ds.skipped) == {reason: len(rs) for reason, rs in bad.items()}
    assert len(ds) == 72
    logged = [r.getMessage() for r in caplog.records]
    assert len(logged) == 8
    assert f"{path}#72 (bad_prompt)" in logged[0]
    assert any(f"{path}#79 (prompt_too_long)" in m and "> limit 120" in m for m in logged)
    # Ground truths of the kept rows are the good rows', in order.
    assert [ds[i]["ground_truth"] for i in range(5)] == ["0", "1", "2", "3", "4"]


def test_too_many_bad_rows_raise_naming_the_file(tiny_processor, image_row, write_parquet):
    rows = [image_row(1) for _ in range(8)] + [image_row(1, question="<image> ")] * 2
    path = write_parquet(rows, "mostly_ok.parquet")
    with pytest.raises(DatasetError, match=r"mostly_ok\.parquet: 2 of 10 rows are bad.*empty_question"):
        PromptDataset(path, tiny_processor, max_prompt_length=200, max_bad_fraction=0.1)
    assert len(PromptDataset(path, tiny_processor, max_prompt_length=200, max_bad_fraction=0.2)) == 8


def test_several_files_and_images_by_path(tiny_processor, image_row, png_bytes, write_parquet, tmp_path):
    (tmp_path / "imgs").mkdir()
    (tmp_path / "imgs" / "a.png").write_bytes(png_bytes(140, 112))
    by_path = image_row(3)
    by_path["images"] = [{"bytes": None, "path": "imgs/a.png"}]
    first = write_parquet([image_row(1), image_row(2)], "a.parquet")
    second = write_parquet([by_path], "b.parquet")
    ds = PromptDataset([first, second], tiny_processor, max_prompt_length=200)
    assert len(ds) == 3
    assert ds[2]["source"] == f"{second}#0" and ds[2]["index"] == 2
    assert ds[2]["image_grid_thw"].tolist() == [[1, 8, 10]]
    with pytest.raises(FileNotFoundError, match="nope.parquet"):
        PromptDataset([first, tmp_path / "nope.parquet"], tiny_processor, max_prompt_length=200)


def test_response_key_carries_a_column(tiny_processor, image_row, write_parquet):
    path = write_parquet([image_row(1, response="<answer>1</answer>"), image_row(2, response="")])
    ds = PromptDataset(path, tiny_processor, max_prompt_length=200, response_key="response", max_bad_fraction=0.5)
    assert len(ds) == 1 and ds.skipped == {"missing_response": 1}
    assert ds[0]["response"] == "<answer>1</answer>"


def test_pixel_bounds_outside_the_processor_are_refused(tiny_processor, image_row, write_parquet):
    path = write_parquet([image_row(1)])
    with pytest.raises(ValueError, match="load_processor"):
        PromptDataset(path, tiny_processor, max_prompt_length=200, max_pixels=10 * 224 * 224)
    small = PromptDataset(path, tiny_processor, max_prompt_length=200, min_pixels=56 * 56, max_pixels=56 * 56)
    assert small[0]["image_grid_thw"].tolist() == [[1, 4, 4]] and small.lengths[0] == len(small[0]["input_ids"])


def test_equal_pixel_bounds_like_the_paper_count_tokens_right(tiny_model_dir, image_row, png_bytes, write_parquet):
    """min_pixels == max_pixels (the paper's 262144) makes smart_resize move sizes back and forth."""
    from ovlt_rl.models.loading import load_processor

    processor = load_processor(str(tiny_model_dir), min_pixels=112 * 112, max_pixels=112 * 112)
    row = image_row(2)
    row["images"] = [{"bytes": png_bytes(140, 112), "path": None}]
    ds = PromptDataset(write_parquet([row]), processor, max_prompt_length=200)
    item = ds[0]
    assert len(item["input_ids"]) == ds.lengths[0]
    grid = item["image_grid_thw"][0].tolist()
    assert (item["input_ids"] == processor.image_token_id).sum() == grid[1] * grid[2] // 4


def test_sft_labels_cover_the_response_and_im_end_only(tiny_processor, image_row, write_parquet):
    response = "<think>I see 2 red circles.</think> <answer>2</answer>"
    path = write_parquet([image_row(2, response=response), image_row(1, response="<answer>1</answer>")])
    sft = SFTDataset(path, tiny_processor, max_length=200)
    item = sft[0]
    ids, mask = item["input_ids"], item["labels_mask"]
    assert ids.shape == mask.shape == item["mm_token_type_ids"].shape
    tok = tiny_processor.tokenizer
    assert tok.decode(ids[mask.bool()]) == response + "<|im_end|>"
    assert ids[-1].item() == tok.convert_tokens_to_ids("<|im_end|>") and mask[-1] == 1
    # Everything before the response is the RL prompt of the same row: no label there, images included.
    prompt = PromptDataset(path, tiny_processor, max_prompt_length=200)[0]
    n = len(prompt["input_ids"])
    assert item["prompt_length"] == n and torch.equal(ids[:n], prompt["input_ids"])
    assert mask[:n].sum() == 0 and mask[n:].all()
    assert (ids[mask.bool()] == tiny_processor.image_token_id).sum() == 0
    assert sft.lengths == [len(sft[i]["input_ids"]) for i in range(2)]
    assert item["response"] == response


def test_sft_over_long_samples_are_skipped_and_counted_not_truncated(tiny_processor, image_row, write_parquet):
    rows = [image_row(1, response="<answer>1</answer>") for _ in range(9)]
    rows.append(image_row(1, response="<think>" + "one more circle, " * 40 + "</think><answer>1</answer>"))
    path = write_parquet(rows)
    sft = SFTDataset(path, tiny_processor, max_length=100, max_bad_fraction=0.1)
    assert len(sft) == 9 and sft.skipped == {"too_long": 1}
    assert max(sft.lengths) <= 100
    ok = SFTDataset(path, tiny_processor, max_length=400)
    assert len(ok) == 10 and ok.lengths[9] > 100 and len(ok[9]["input_ids"]) == ok.lengths[9]
    missing = write_parquet([image_row(1, response="<answer>1</answer>"), image_row(1, response="  ")], "m.parquet")
    assert SFTDataset(missing, tiny_processor, max_length=200, max_bad_fraction=0.5).skipped == {"missing_response": 1}
