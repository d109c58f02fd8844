"""Rows whose image passes the start-up check but fails to decode: counted skips, refilled batches
of the same size, the same on a resume, and a DatasetError past max_bad_fraction."""

import logging
import re

import pytest

from ovlt_rl.data.dataset import DatasetError, PromptDataset, SFTDataset
from ovlt_rl.data.images import ImageError
from ovlt_rl.data.items import Items


def _dataset(tiny_processor, image_row, undecodable_row, write_parquet, bad_rows, n=40, sft=False, max_bad_fraction=0.1):
    kw = {"response": "<answer>1</answer>"} if sft else {}
    rows = [undecodable_row(i % 3 + 1, **kw) if i in bad_rows else image_row(i % 3 + 1, **kw) for i in range(n)]
    path = write_parquet(rows)
    if sft:
        return SFTDataset(path, tiny_processor, max_length=512, max_bad_fraction=max_bad_fraction), path
    return PromptDataset(path, tiny_processor, max_prompt_length=512, max_bad_fraction=max_bad_fraction), path


def test_the_row_passes_the_start_up_check_and_fails_to_decode(tiny_processor, image_row, undecodable_row, write_parquet):
    ds, _ = _dataset(tiny_processor, image_row, undecodable_row, write_parquet, {1})
    assert len(ds) == 40 and not ds.skipped  # what today's check lets through...
    with pytest.raises(ImageError, match="broken data stream"):
        ds[1]  # ...and what crashed step 1


@pytest.mark.parametrize("sft", [False, True])
def test_a_decode_failure_is_a_counted_logged_skip_and_the_batch_is_refilled(
    sft, tiny_processor, image_row, undecodable_row, write_parquet, caplog
):
    ds, path = _dataset(tiny_processor, image_row, undecodable_row, write_parquet, {1}, sft=sft)
    items = Items(ds)
    with caplog.at_level(logging.WARNING):
        batch, used = items.batch([0, 1, 2, 3])
    # Same size (every rank gets its share); row 1 replaced by the next row not in the batch.
    assert used == [0, 4, 2, 3] and len(batch) == 4
    assert [b["index"] for b in batch] == used
    assert ds.skipped["decode_error"] == 1
    assert f"{path}#1 (decode_error)" in caplog.text and "broken data stream" in caplog.text
    # Counted once: the row is remembered, not decoded (and logged) again.
    caplog.clear()
    assert items.batch([1, 5])[1] == [2, 5] and ds.skipped["decode_error"] == 1 and "decode_error" not in caplog.text
    # Validation-style use leaves it out.
    assert [it["index"] for it in items.present([0, 1, 2])] == [0, 2]


def test_refill_is_deterministic_so_a_resume_sees_the_same_batches(tiny_processor, image_row, undecodable_row, write_parquet):
    ds, _ = _dataset(tiny_processor, image_row, undecodable_row, write_parquet, {5, 6, 39})
    batches = [[5, 6, 7, 8], [38, 39, 0, 1], [4, 2]]
    first = Items(ds)
    runs = [[first.batch(b)[1] for b in batches]]
    # A resumed run: a fresh process (dataset and cache), told which rows failed before the checkpoint.
    ds_again, _ = _dataset(tiny_processor, image_row, undecodable_row, write_parquet, {5, 6, 39})
    resumed = Items(ds_again)
    resumed.load_state_dict(first.state_dict())
    runs.append([resumed.batch(b)[1] for b in batches])
    assert runs[0] == runs[1] == [[9, 10, 7, 8], [38, 2, 0, 1], [4, 2]]
    assert ds.skipped["decode_error"] == ds_again.skipped["decode_error"] == 3
    # Replacements stay below `within` (SFT's held-out rows are never trained on).
    assert first.batch([6])[1] == [7] and first.batch([6], within=7)[1] == [0]


def test_past_max_bad_fraction_the_run_stops_naming_the_file(tiny_processor, image_row, undecodable_row, write_parquet):
    # 40 rows, at most 10% bad: row 10 fails the start-up check, rows 1-4 fail to decode. The
    # first 3 decode failures make 4 bad rows (10%, allowed); the 4th is one too many.
    rows = [undecodable_row(1) if i in (1, 2, 3, 4) else image_row(i % 3 + 1) for i in range(40)]
    rows[10]["images"] = [{"bytes": b"\x89PNG garbage", "path": None}]
    path = write_parquet(rows)
    ds = PromptDataset(path, tiny_processor, max_prompt_length=512, max_bad_fraction=0.1)
    assert ds.skipped == {"bad_image": 1} and len(ds) == 39  # items 0-9 are rows 0-9
    items = Items(ds)
    assert [it["index"] for it in items.present([0, 1, 2, 3])] == [0]
    assert ds.skipped["decode_error"] == 3
    with pytest.raises(DatasetError, match=re.escape(f"{path}: 5 of 40 rows are bad (12% > max_bad_fraction 10%)")) as e:
        items.batch([4, 5])
    assert "failed to decode at row 4" in str(e.value) and "broken data stream" in str(e.value)
    # A resume counts the failures before its checkpoint: with 3 bad rows allowed, the third one
    # it is told about (with row 10's start-up failure, the 4th bad row) stops it.
    ds2 = PromptDataset(path, tiny_processor, max_prompt_length=512, max_bad_fraction=0.075)
    with pytest.raises(DatasetError, match="4 of 40 rows are bad"):
        Items(ds2).load_state_dict([1, 2, 3])
