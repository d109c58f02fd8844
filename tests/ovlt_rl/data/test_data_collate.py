"""collate_prompts / collate_sft, and the check that padding changes no row's logits (mRoPE included)."""

from __future__ import annotations

import pytest
import torch

from ovlt_rl.data.collate import collate_prompts, collate_sft, model_inputs
from ovlt_rl.data.dataset import PromptDataset, SFTDataset
from ovlt_rl.data.schema import make_row


@pytest.fixture
def mixed_rows(image_row, png_bytes):
    """Rows of different prompt lengths and image sizes, one without an image."""
    wide = image_row(2, response="<answer>2</answer>")
    wide["images"] = [{"bytes": png_bytes(168, 112), "path": None}]
    text_only = make_row(
        data_source="test/text",
        question="How many circles are in a square?",
        ground_truth="0",
        response="<think>None.</think><answer>0</answer>",
    )
    return [
        image_row(1, response="<think>One circle.</think> <answer>1</answer>"),
        wide,
        image_row(3, question="<image>Count the red circles, one by one, carefully.", response="<answer>3</answer>"),
        text_only,
    ]


def test_collate_prompts_left_pads(tiny_processor, mixed_rows, write_parquet):
    ds = PromptDataset(write_parquet(mixed_rows), tiny_processor, max_prompt_length=200)
    items = [ds[i] for i in range(len(ds))]
    pad = tiny_processor.tokenizer.pad_token_id
    batch = collate_prompts(items, pad)
    lengths = [len(it["input_ids"]) for it in items]
    assert batch["input_ids"].shape == (4, max(lengths))
    for row, (it, n) in enumerate(zip(items, lengths)):
        assert torch.equal(batch["input_ids"][row, -n:], it["input_ids"])
        assert (batch["input_ids"][row, :-n] == pad).all() if n < max(lengths) else True
        assert batch["attention_mask"][row].tolist() == [0] * (max(lengths) - n) + [1] * n
        assert torch.equal(batch["mm_token_type_ids"][row, -n:], it["mm_token_type_ids"])
    assert batch["image_grid_thw"].tolist() == [[1, 8, 8], [1, 8, 12], [1, 8, 8]]
    assert batch["pixel_values"].shape[0] == 64 + 96 + 64
    assert batch["ground_truth"] == ["1", "2", "3", "0"] and batch["index"] == [0, 1, 2, 3]
    assert len(batch["images"]) == 4 and batch["images"][3] == []
    text_only = collate_prompts([items[3]], pad)
    assert text_only["pixel_values"] is None and text_only["image_grid_thw"] is None
    assert sorted(model_inputs(text_only)) == ["attention_mask", "input_ids", "mm_token_type_ids"]
    assert sorted(model_inputs(batch)) == sorted(
        ["attention_mask", "input_ids", "mm_token_type_ids", "pixel_values", "image_grid_thw"]
    )
    with pytest.raises(ValueError, match="empty"):
        collate_prompts([], pad)


def test_left_padded_batch_gives_each_row_its_own_logits_and_generation(tiny_model, tiny_processor, mixed_rows, write_parquet):
    ds = PromptDataset(write_parquet(mixed_rows), tiny_processor, max_prompt_length=200)
    items = [ds[i] for i in range(len(ds))]
    pad = tiny_processor.tokenizer.pad_token_id
    batch = model_inputs(collate_prompts(items, pad))
    with torch.no_grad():
        logits = tiny_model(**batch).logits
        for row, it in enumerate(items):
            alone = tiny_model(**model_inputs(collate_prompts([it], pad))).logits[0]
            n = len(it["input_ids"])
            torch.testing.assert_close(logits[row, -n:], alone, atol=1e-5, rtol=1e-4)
        # Greedy decoding continues each row as it would alone (rope deltas after left padding).
        gen = tiny_model.generate(**batch, do_sample=False, max_new_tokens=5)[:, batch["input_ids"].shape[1] :]
        for row, it in enumerate(items):
            single = model_inputs(collate_prompts([it], pad))
            alone = tiny_model.generate(**single, do_sample=False, max_new_tokens=5)[0, single["input_ids"].shape[1] :]
            assert gen[row, : len(alone)].tolist() == alone.tolist()


def test_collate_sft_right_pads_and_rows_keep_their_loss(tiny_model, tiny_processor, mixed_rows, write_parquet):
    ds = SFTDataset(write_parquet(mixed_rows), tiny_processor, max_length=200)
    items = [ds[i] for i in range(len(ds))]
    pad = tiny_processor.tokenizer.pad_token_id
    batch = collate_sft(items, pad)
    for row, it in enumerate(items):
        n = len(it["input_ids"])
        assert torch.equal(batch["input_ids"][row, :n], it["input_ids"])
        assert batch["attention_mask"][row, :n].all() and not batch["attention_mask"][row, n:].any()
        assert torch.equal(batch["labels_mask"][row, :n], it["labels_mask"]) and not batch["labels_mask"][row, n:].any()

    def masked_nll(inputs, labels_mask):
        logits = tiny_model(**inputs).logits[:, :-1].float()
        logp = torch.log_softmax(logits, -1).gather(-1, inputs["input_ids"][:, 1:, None])[..., 0]
        m = labels_mask[:, 1:].float()
        return (-(logp * m).sum(-1) / m.sum(-1))

    with torch.no_grad():
        batched = masked_nll(model_inputs(batch), batch["labels_mask"])
        for row, it in enumerate(items):
            single = collate_sft([it], pad)
            torch.testing.assert_close(batched[row], masked_nll(model_inputs(single), single["labels_mask"])[0], atol=1e-5, rtol=1e-5)


def test_model_inputs_give_image_tokens_their_3d_positions(tiny_model, tiny_processor, mixed_rows, write_parquet):
    ds = PromptDataset(write_parquet(mixed_rows[:3]), tiny_processor, max_prompt_length=200)
    items = [ds[i] for i in range(len(ds))]
    pad = tiny_processor.tokenizer.pad_token_id
    inputs = model_inputs(collate_prompts(items, pad))
    rope_args = ("input_ids", "mm_token_type_ids", "image_grid_thw", "attention_mask")
    pos, _ = tiny_model.model.get_rope_index(**{k: inputs[k] for k in rope_args})
    # Row 1's 168x112 image: 6x4 merged cells; height ids take 4 values, width ids 6, time 1.
    image = inputs["mm_token_type_ids"][1].bool()
    assert [pos[d, 1][image].unique().numel() for d in range(3)] == [1, 4, 6]
    for row, it in enumerate(items):  # left padding leaves every row's positions as they are alone
        single = model_inputs(collate_prompts([it], pad))
        alone, _ = tiny_model.model.get_rope_index(**{k: single[k] for k in rope_args})
        n = len(it["input_ids"])
        assert torch.equal(pos[:, row, -n:], alone[:, 0])
    with torch.no_grad():
        with_ids = tiny_model(**inputs).logits
        without = tiny_model(**{k: v for k, v in inputs.items() if k != "mm_token_type_ids"}).logits
    # Without mm_token_type_ids transformers falls back to 1-D positions: the model sees other inputs.
    assert not torch.allclose(with_ids, without, atol=1e-4)
