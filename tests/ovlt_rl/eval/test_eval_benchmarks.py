"""Benchmark loaders on small copies shaped like the published HF files (see conftest.py)."""

from __future__ import annotations

import io

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from eval_fixtures import MATHVISTA_SCHEMA, mathvista_rows, write_mathvista
from ovlt_rl.eval.benchmarks import (
    BenchmarkError,
    answer_to_letter,
    format_prompt,
    load_benchmark,
    parse_choices,
)


def _decodes(b: bytes) -> tuple[int, int]:
    with Image.open(io.BytesIO(b)) as im:
        return im.size


def test_mathvista_testmini(mathvista_dir):
    samples = load_benchmark("mathvista", mathvista_dir)
    assert [s.id for s in samples] == ["1", "2", "3", "4"]  # the test-* shard (pid 999) is not read
    mc, integer, flt, path_img = samples
    # The published query is the prompt, image first.
    assert mc.prompt == [{"role": "user", "content": "<image>" + mathvista_rows()[0]["query"]}]
    assert mc.ground_truth == "B" and mc.choices == ["3 cm", "12 cm", "5"] and mc.question_type == "multi_choice"
    assert integer.ground_truth == "14" and integer.unit == "cm" and integer.choices == [] and integer.precision is None
    assert flt.precision == 2 and flt.question_type == "free_form"
    assert path_img.ground_truth == "A"
    # Embedded bytes and the images/4.png file at the dataset root both load.
    assert all(len(s.images) == 1 and _decodes(s.images[0]) == (28, 28) for s in samples)
    assert Image.open(io.BytesIO(path_img.images[0])).getpixel((0, 0)) == (9, 9, 9)
    assert mc.categories["skills"] == ["geometry reasoning", "algebraic reasoning"]
    assert mc.categories["task"] == "geometry problem solving" and flt.categories["category"] == "general-vqa"
    assert "decoded_image" not in mc.meta and mc.meta["answer"] == "12 cm"


def test_mathvista_single_file_and_max_samples(mathvista_dir):
    f = next((mathvista_dir / "data").glob("testmini-*.parquet"))
    assert [s.id for s in load_benchmark("mathvista", f, max_samples=2)] == ["1", "2"]


def test_mathverse_testmini(mathverse_dir):
    samples = load_benchmark("mathverse", mathverse_dir)
    assert [s.id for s in samples] == ["1", "2", "3"]  # testmini_text_only.parquet is another config
    first, vision_only, free = samples
    assert first.prompt[0]["content"].startswith("<image>Please first conduct reasoning")
    assert first.ground_truth == "B" and first.question_type == "multi_choice"
    assert first.choices == ["30°", "40°", "50°", "60°"]  # parsed from the question text
    assert vision_only.choices == [] and vision_only.question_type == "multi_choice"  # options only in the image
    assert free.ground_truth == "9" and free.question_type == "free_form"
    assert first.categories["problem_version"] == "Text Dominant" and free.categories["subfield"] == "Area"


def test_mathvision_prompt_and_letters(mathvision_dir):
    test = load_benchmark("mathvision", mathvision_dir)
    mini = load_benchmark("mathvision_mini", mathvision_dir)
    assert len(test) == 3 and len(mini) == 2
    assert all(s.benchmark == "mathvision_mini" for s in mini)
    mc, free, numeric_options = test
    assert mc.prompt[0]["content"] == (
        "<image>Hint: Please answer the question and provide the correct option letter, e.g., A, B, C, D, E, at the end.\n"
        "Question: Which of the shapes can be folded into a cube?\n<image1>\n"
        "Choices:\n(A) A\n(B) B\n(C) C\n(D) D\n(E) E"
    )
    assert mc.ground_truth == "C"
    assert free.prompt[0]["content"] == "<image>Hint: Please answer the question requiring an answer.\nQuestion: How many dots are hidden?\n<image1>"
    assert free.ground_truth == "7" and free.question_type == "free_form"
    assert numeric_options.ground_truth == "C"  # "14" is option C
    assert mc.categories == {"question_type": "multi_choice", "level": 2, "subject": "solid geometry"}


def test_format_prompt_and_letters():
    assert format_prompt("Q?", ["x", "y"]).endswith("Question: Q?\nChoices:\n(A) x\n(B) y")
    assert answer_to_letter("y", ["x", "y"]) == "B"
    assert answer_to_letter("z", ["x", "y"]) == "z"
    assert answer_to_letter("3", []) == "3"
    assert parse_choices("Q\nChoices:\n(A) 1\n(B) 2\nafter") == ["1", "2"]
    assert parse_choices("no choices here") == []
    assert parse_choices("Choices:\nB:1\nC:2") == []  # must start at A


def test_synthetic_rows(tmp_path):
    from data_prep.synthetic import generate
    from ovlt_rl.data.schema import write_rows

    rows = generate(8, seed=0, split="test", image_size=56)
    path = write_rows(rows, tmp_path / "test.parquet")
    samples = load_benchmark("synthetic", path)
    assert len(samples) == 8
    for s, row in zip(samples, rows):
        assert s.prompt == row["prompt"] and s.images == [row["images"][0]["bytes"]]
        assert s.categories["data_source"] == row["data_source"]
        if "choices" in row["extra_info"]:
            assert s.question_type == "multi_choice"
            assert s.ground_truth == answer_to_letter(row["reward_model"]["ground_truth"], row["extra_info"]["choices"])
        else:
            assert s.ground_truth == row["reward_model"]["ground_truth"]
    assert any(s.question_type == "multi_choice" for s in samples)
    # A folder works too (test.parquet is the synthetic test split).
    assert len(load_benchmark("synthetic", tmp_path)) == 8


def test_missing_image_file_names_it(tmp_path):
    root = write_mathvista(tmp_path / "mv")
    (root / "images" / "4.png").unlink()
    with pytest.raises(BenchmarkError, match=r"row 3: image file 'images/4.png' not found"):
        load_benchmark("mathvista", root)


def test_corrupt_image_and_missing_field(tmp_path):
    rows = mathvista_rows()
    rows[1]["decoded_image"] = {"bytes": b"not an image", "path": "2.png"}
    root = tmp_path / "bad"
    (root / "data").mkdir(parents=True)
    pq.write_table(pa.Table.from_pylist(rows, schema=MATHVISTA_SCHEMA), root / "data" / "testmini-0.parquet")
    with pytest.raises(BenchmarkError, match=r"row 1: image does not decode"):
        load_benchmark("mathvista", root)
    no_pid = pa.Table.from_pylist(mathvista_rows()[:1], schema=MATHVISTA_SCHEMA).drop_columns(["pid"])
    pq.write_table(no_pid, root / "data" / "testmini-0.parquet")
    with pytest.raises(BenchmarkError, match=r"missing field\(s\) \['pid'\]"):
        load_benchmark("mathvista", root)


def test_bad_paths_and_names(tmp_path, mathvision_dir):
    with pytest.raises(BenchmarkError, match="unknown benchmark 'mathvistaa'"):
        load_benchmark("mathvistaa", mathvision_dir)
    with pytest.raises(BenchmarkError, match="no such file or folder"):
        load_benchmark("mathvista", tmp_path / "nowhere")
    next((mathvision_dir / "data").glob("testmini-*")).unlink()
    with pytest.raises(BenchmarkError, match=r"no parquet file of split 'testmini'.*test-00000"):
        load_benchmark("mathvision_mini", mathvision_dir)


def test_duplicate_ids_rejected(tmp_path):
    rows = mathvista_rows()[:2]
    rows[1]["pid"] = "1"
    root = tmp_path / "dup"
    (root / "data").mkdir(parents=True)
    pq.write_table(pa.Table.from_pylist(rows, schema=MATHVISTA_SCHEMA), root / "data" / "testmini-0.parquet")
    with pytest.raises(BenchmarkError, match=r"duplicate sample ids \['1'\]"):
        load_benchmark("mathvista", root)
