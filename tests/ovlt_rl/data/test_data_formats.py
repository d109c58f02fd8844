"""data.format: EasyR1, verl and ShareGPT-style layouts read unchanged, column names from the config."""

from __future__ import annotations

import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from foreign_layouts import easyr1_table, save_dataset_dict, save_to_disk, verl_rows, write_verl_parquet
from ovlt_rl.data.dataset import PromptDataset, SFTDataset
from ovlt_rl.data.formats import DataFormat, FormatError, read_source, source_exists

EASYR1 = DataFormat("easyr1", prompt_key="problem", answer_key="answer", image_key="images")


def test_easyr1_save_to_disk_folder_loads_with_config_named_columns(tmp_path, tiny_processor, png_bytes):
    folder = save_to_disk(easyr1_table([png_bytes(n_circles=k) for k in (1, 2, 3)], ["1", "2", "3"]), tmp_path / "geo")
    ds = PromptDataset(folder, tiny_processor, max_prompt_length=200, data_format=EASYR1)
    assert len(ds) == 3 and sum(ds.skipped.values()) == 0
    item = ds[1]
    assert item["ground_truth"] == "2"
    assert item["data_source"] == "geo"  # no data_source column: the folder's name
    assert "How many red circles" in item["prompt_text"] and "<|image_pad|>" in item["prompt_text"]
    assert item["images"][0].size == (112, 112)
    assert int(item["image_grid_thw"].prod()) > 0


def test_easyr1_image_paths_single_or_listed_start_from_image_dir(tmp_path, tiny_processor, png_bytes):
    media = tmp_path / "media"
    media.mkdir()
    for k in (1, 2):
        (media / f"c{k}.png").write_bytes(png_bytes(n_circles=k))
    # One row with a single path, one with a list of paths: EasyR1 takes both.
    table = pa.table({"question": ["<image>How many?", "<image>How many?"], "label": ["1", "2"],
                      "pics": pa.array(["c1.png", "c2.png"])})
    pq.write_table(table, tmp_path / "rows.parquet")
    table2 = pa.table({"question": ["<image>How many?"], "label": [2], "pics": [["c2.png"]]})
    pq.write_table(table2, tmp_path / "rows2.parquet")
    fmt = DataFormat("easyr1", prompt_key="question", answer_key="label", image_key="pics", image_dir=str(media))
    ds = PromptDataset([tmp_path / "rows.parquet", tmp_path / "rows2.parquet"], tiny_processor, max_prompt_length=200, data_format=fmt)
    assert len(ds) == 3
    assert [ds[i]["ground_truth"] for i in range(3)] == ["1", "2", "2"]  # an int answer becomes its text
    # Without image_dir the paths start from the data file's folder, where they are not: counted, not guessed.
    fmt_no_dir = DataFormat("easyr1", prompt_key="question", answer_key="label", image_key="pics")
    with pytest.raises(Exception, match="bad_image"):
        PromptDataset(tmp_path / "rows.parquet", tiny_processor, max_prompt_length=200, data_format=fmt_no_dir)


def test_dataset_dict_split_and_parquet_folder(tmp_path, png_bytes):
    train = easyr1_table([png_bytes(n_circles=1)] * 2, ["1", "1"])
    test = easyr1_table([png_bytes(n_circles=2)], ["2"])
    folder = save_dataset_dict({"train": train, "test": test}, tmp_path / "dd")
    assert [r["reward_model"]["ground_truth"] for r in read_source(folder, EASYR1)] == ["1", "1"]  # train by default
    assert [r["reward_model"]["ground_truth"] for r in read_source(f"{folder}@test", EASYR1)] == ["2"]
    assert source_exists(f"{folder}@test")
    with pytest.raises(FormatError, match="no split 'validation'"):
        read_source(f"{folder}@validation", EASYR1)
    # A folder of parquet shards, HF Hub style, with @split picking the files.
    hub = tmp_path / "hub" / "data"
    hub.mkdir(parents=True)
    pq.write_table(train, hub / "train-00000-of-00001.parquet")
    pq.write_table(test, hub / "test-00000-of-00001.parquet")
    assert len(read_source(f"{tmp_path / 'hub'}@train", EASYR1)) == 2
    assert len(read_source(f"{tmp_path / 'hub'}@test", EASYR1)) == 1


def test_missing_column_names_the_key_to_set(tmp_path, png_bytes):
    folder = save_to_disk(easyr1_table([png_bytes()], ["2"]), tmp_path / "geo")
    with pytest.raises(FormatError, match=r"no column 'prompt' for data.format=easyr1.*problem.*data.prompt_key"):
        read_source(folder, DataFormat("easyr1"))


def test_verl_parquet_with_struct_extra_info_and_renamed_columns(tmp_path, tiny_processor, png_bytes):
    rows = verl_rows([png_bytes(n_circles=k) for k in (1, 2)], ["1", "2"], prompt_key="chat", image_key="pictures")
    path = write_verl_parquet(rows, tmp_path / "train.parquet")
    ds = PromptDataset(path, tiny_processor, max_prompt_length=200,
                       data_format=DataFormat("verl", prompt_key="chat", image_key="pictures"))
    assert len(ds) == 2
    item = ds[1]
    assert item["ground_truth"] == "2" and item["data_source"] == "hiyouga/geometry3k"
    assert item["extra_info"] == {"split": "train", "index": 1, "answer": "2", "question": "How many red circles are there?"}
    # verl's default column names need no format at all: ovlt's own reader takes the file as it is.
    plain = write_verl_parquet(verl_rows([png_bytes()], ["2"]), tmp_path / "plain.parquet")
    assert PromptDataset(plain, tiny_processor, max_prompt_length=200)[0]["extra_info"]["answer"] == "2"


def test_extra_info_as_bad_json_text_is_an_error_naming_the_row(tmp_path, png_bytes):
    rows = verl_rows([png_bytes()] * 2, ["1", "2"])
    for r, text in zip(rows, ['{"answer": "1"}', '{"answer": ']):
        r["extra_info"] = text  # verl datasets written as JSON text
    path = write_verl_parquet(rows, tmp_path / "ei.parquet")
    with pytest.raises(FormatError, match=r"ei.parquet row 1: extra_info is not valid JSON"):
        read_source(path, DataFormat("verl"))
    rows[1]["extra_info"] = "[1, 2]"
    with pytest.raises(FormatError, match=r"ei2.parquet row 1: extra_info must be an object, got list"):
        read_source(write_verl_parquet(rows, tmp_path / "ei2.parquet"), DataFormat("verl"))


def test_verl_list_ground_truth_is_an_error_naming_the_row(tmp_path, png_bytes):
    rows = verl_rows([png_bytes()] * 2, ["1", "2"])
    rows[1]["reward_model"] = {"style": "rule", "ground_truth": ["2"]}
    rows[0]["reward_model"] = {"style": "rule", "ground_truth": ["1"]}
    path = write_verl_parquet(rows, tmp_path / "gt.parquet")
    for fmt in (DataFormat("verl"), DataFormat()):  # the default reader too
        with pytest.raises(FormatError, match=r"gt.parquet row 0: the ground truth must be a string or a number"):
            read_source(path, fmt)


def test_sharegpt_messages_and_images_sft(tmp_path, tiny_processor, png_bytes):
    (tmp_path / "img").mkdir()
    (tmp_path / "img" / "a.png").write_bytes(png_bytes(n_circles=3))
    rows = [
        {"messages": [{"role": "user", "content": "<image>How many red circles?"},
                      {"role": "assistant", "content": "<think>I count them.</think><answer>3</answer>"}],
         "images": ["img/a.png"]},
        {"conversations": [{"from": "human", "value": "<image>Count the circles."}, {"from": "gpt", "value": "<answer>3</answer>"}],
         "images": ["img/a.png"], "system": "You are careful."},
        {"messages": [{"role": "user", "content": "<image>No answer here"}], "images": ["img/a.png"]},
    ]
    (tmp_path / "sft.json").write_text(json.dumps(rows[:1] + rows[2:]))
    (tmp_path / "sharegpt.jsonl").write_text(json.dumps(rows[1]) + "\n")
    ds = SFTDataset(tmp_path / "sft.json", tiny_processor, max_length=300, data_format=DataFormat("sharegpt"), max_bad_fraction=0.5)
    assert len(ds) == 1 and ds.skipped == {"missing_response": 1}  # the row without an assistant turn
    item = ds[0]
    assert item["response"] == "<think>I count them.</think><answer>3</answer>"
    tok = tiny_processor.tokenizer
    learned = item["input_ids"][item["labels_mask"].bool()]
    assert tok.decode(learned) == "<think>I count them.</think><answer>3</answer><|im_end|>"
    ds2 = SFTDataset(tmp_path / "sharegpt.jsonl", tiny_processor, max_length=300,
                     data_format=DataFormat("sharegpt", messages_key="conversations"))
    item2 = ds2[0]
    assert item2["prompt_text"].startswith("<|im_start|>system\nYou are careful.")
    assert tok.decode(item2["input_ids"][item2["labels_mask"].bool()]) == "<answer>3</answer><|im_end|>"


def test_sharegpt_unknown_role_is_an_error(tmp_path):
    (tmp_path / "x.json").write_text(json.dumps([{"messages": [{"role": "robot", "content": "hi"}], "images": []}]))
    with pytest.raises(FormatError, match=r"x.json row 0 column 'messages': unknown message role 'robot'"):
        read_source(tmp_path / "x.json", DataFormat("sharegpt"))


def test_unknown_format_is_an_error():
    with pytest.raises(FormatError, match="unknown data format 'alpaca'"):
        DataFormat("alpaca")
