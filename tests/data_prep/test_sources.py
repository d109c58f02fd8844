"""Source adapters on small fixture copies shaped like each dataset's published form."""

from __future__ import annotations

import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from prep_helpers import png

from data_prep.config import SourceConfig
from data_prep.sources import load_source
from ovlt_rl.data.schema import question_text

IMG1, IMG2, IMG3 = png((10, 0, 0)), png((0, 10, 0)), png((0, 0, 10))


def hf_image(data: bytes, path: str = "x.png") -> dict:
    return {"bytes": data, "path": path}


def write_parquet(path, records):
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.Table.from_pylist(records), path)
    return path


def load(name, path, **kw):
    return load_source(SourceConfig(name=name, path=str(path), **kw))


def images_of(r):
    return [i["bytes"] for i in r["images"]]


# --------------------------------------------------------------------------- parquet forms


def test_ai2d(tmp_path):
    p = write_parquet(tmp_path / "ai2d/data/test-00000-of-00001.parquet", [
        {"question": "Which stage comes first?", "options": ["egg", "larva", "adult"], "answer": "0", "image": hf_image(IMG1)},
        {"question": "Which is a predator?", "options": ["grass", "fox"], "answer": "5", "image": hf_image(IMG2)},
    ])
    rows, counts = load("ai2d", p.parent.parent, split="test")
    assert len(rows) == 1 and counts["skipped"] == {"answer_index_out_of_range": 1}
    r = rows[0]
    assert question_text(r) == "<image>Which stage comes first?\nChoices:\n(A) egg\n(B) larva\n(C) adult"
    assert r["reward_model"]["ground_truth"] == "A" and r["data_source"] == "ai2d"
    assert images_of(r) == [IMG1] and r["extra_info"]["choices"] == ["egg", "larva", "adult"]


def test_scienceqa_hint_choices_and_missing_image(tmp_path):
    common = {"task": "closed choice", "grade": "grade4", "subject": "natural science", "topic": "t", "category": "c",
              "skill": "s", "lecture": "", "solution": ""}
    p = write_parquet(tmp_path / "sqa/train.parquet", [
        {"image": hf_image(IMG1), "question": "Which animal is a mammal?", "choices": ["frog", "whale"], "answer": 1,
         "hint": "Look at the picture.", **common},
        {"image": None, "question": "Text-only question?", "choices": ["a", "b"], "answer": 0, "hint": "", **common},
    ])
    rows, counts = load("scienceqa", p)
    assert len(rows) == 1 and counts["skipped"] == {"no_image": 1}
    assert question_text(rows[0]) == "<image>Context: Look at the picture.\nWhich animal is a mammal?\nChoices:\n(A) frog\n(B) whale"
    assert rows[0]["reward_model"]["ground_truth"] == "B"


def test_figureqa_one_row_per_question_yes_no(tmp_path):
    p = write_parquet(tmp_path / "figureqa/data/train-00000.parquet", [
        {"image": hf_image(IMG1), "qa": [{"question": "Is Red the maximum?", "answer": "Yes"},
                                         {"question": "Is Blue the low median?", "answer": "0"},
                                         {"question": "Is it nice?", "answer": "maybe"}]},
    ])
    rows, counts = load("figureqa", p.parent)
    assert [r["reward_model"]["ground_truth"] for r in rows] == ["yes", "no"]
    assert counts == {"form": "native", "records": 3, "rows": 2, "skipped": {"answer_not_yes_no": 1}}
    assert question_text(rows[1]) == "<image>Is Blue the low median?" and images_of(rows[1]) == [IMG1]


def test_geometry3k_with_and_without_choices(tmp_path):
    p = write_parquet(tmp_path / "g3k/data/train-00000-of-00001.parquet", [
        {"images": [hf_image(IMG1)], "problem": "<image>Find x.", "answer": "5", "id": 1,
         "choices": ["3", "4", "5", "6"], "ground_truth": "C"},
        {"images": [hf_image(IMG2)], "problem": "<image>Find the area.", "answer": "12", "id": 2,
         "choices": [], "ground_truth": ""},
    ])
    rows, _ = load("geometry3k", p.parent.parent)
    assert question_text(rows[0]) == "<image>Find x.\nChoices:\n(A) 3\n(B) 4\n(C) 5\n(D) 6"
    assert rows[0]["reward_model"]["ground_truth"] == "C"
    assert question_text(rows[1]) == "<image>Find the area." and rows[1]["reward_model"]["ground_truth"] == "12"


# --------------------------------------------------------------------------- JSON + image forms


def test_tabmwp(tmp_path):
    (tmp_path / "tables").mkdir()
    (tmp_path / "tables/11.png").write_bytes(IMG1)
    (tmp_path / "tables/12.png").write_bytes(IMG2)
    problems = {
        "11": {"question": "Which color is most common?", "choices": ["red", "blue"], "answer": "blue", "unit": "",
               "table_title": "Colors", "table": "...", "ques_type": "multi_choice", "ans_type": "extractive_text", "split": "train"},
        "12": {"question": "How much do 3 apples cost?", "choices": None, "answer": "1.50", "unit": "$",
               "table_title": "Prices", "table": "...", "ques_type": "free_text", "ans_type": "decimal_number", "split": "train"},
        "13": {"question": "Missing table?", "choices": None, "answer": "2", "unit": "", "ques_type": "free_text", "split": "train"},
    }
    (tmp_path / "problems_train.json").write_text(json.dumps(problems))
    rows, counts = load("tabmwp", tmp_path)
    assert counts["skipped"] == {"missing_image": 1}
    assert question_text(rows[0]) == "<image>Which color is most common?\nChoices:\n(A) red\n(B) blue"
    assert rows[0]["reward_model"]["ground_truth"] == "B"
    assert question_text(rows[1]) == "<image>How much do 3 apples cost? (Unit: $)" and rows[1]["reward_model"]["ground_truth"] == "1.50"
    assert images_of(rows[1]) == [IMG2]


def test_vizwiz_majority_answer_and_unanswerable(tmp_path):
    (tmp_path / "train").mkdir()
    for name, img in (("VizWiz_train_0.jpg", IMG1), ("VizWiz_train_1.jpg", IMG2), ("VizWiz_train_2.jpg", IMG3)):
        (tmp_path / "train" / name).write_bytes(img)

    def answers(*words):
        return [{"answer": w, "answer_confidence": "yes"} for w in words]

    (tmp_path / "Annotations").mkdir()
    (tmp_path / "Annotations/train.json").write_text(json.dumps([
        {"image": "VizWiz_train_0.jpg", "question": "What drink is this?", "answerable": 1, "answer_type": "other",
         "answers": answers("coca cola", "Coca Cola", "coke", "coca  cola", "soda", "coca cola")},
        {"image": "VizWiz_train_1.jpg", "question": "What is this?", "answerable": 0, "answer_type": "unanswerable",
         "answers": answers("unanswerable", "unanswerable", "unanswerable")},
        {"image": "VizWiz_train_2.jpg", "question": "What color?", "answerable": 1, "answer_type": "other",
         "answers": answers("red", "blue", "green", "red", "blue")},
    ]))
    rows, counts = load("vizwiz", tmp_path)
    assert len(rows) == 1 and rows[0]["reward_model"]["ground_truth"] == "coca cola"
    assert counts["skipped"] == {"unanswerable": 1, "no_consensus": 1}
    assert images_of(rows[0]) == [IMG1]


@pytest.mark.parametrize("name, qfile, image_dir", [
    ("clevr", "questions/CLEVR_train_questions.json", "images/train"),
    ("superclevr", "superCLEVR_questions_30k.json", "images"),
])
def test_clevr_family(tmp_path, name, qfile, image_dir):
    (tmp_path / image_dir).mkdir(parents=True)
    (tmp_path / image_dir / "s_000000.png").write_bytes(IMG3)
    (tmp_path / qfile).parent.mkdir(parents=True, exist_ok=True)
    (tmp_path / qfile).write_text(json.dumps({"info": {}, "questions": [
        {"image_filename": "s_000000.png", "question": "How many cylinders are there?", "answer": 2, "split": "train"},
        {"image_filename": "s_000000.png", "question": "Is there a red cube?", "answer": "Yes", "split": "train"},
        {"image_filename": "gone.png", "question": "Anything?", "answer": "no", "split": "train"},
    ]}))
    rows, counts = load(name, tmp_path)
    assert [r["reward_model"]["ground_truth"] for r in rows] == ["2", "yes"]
    assert counts["skipped"] == {"missing_image": 1} and rows[0]["data_source"] == name
    assert images_of(rows[0]) == [IMG3]


def test_iconqa(tmp_path):
    base = tmp_path / "iconqa_data/iconqa/train"
    for sub, pid, data in (
        ("choose_txt", "1", {"question": "Which shape is round?", "choices": ["square", "circle"], "answer": 1, "ques_type": "choose_txt"}),
        ("fill_in_blank", "2", {"question": "How many dots are there?", "answer": "4", "ques_type": "fill_in_blank"}),
        ("choose_img", "3", {"question": "Which picture shows a cat?", "choices": ["choice_0.png", "choice_1.png"], "answer": 0,
                             "ques_type": "choose_img"}),
    ):
        d = base / sub / pid
        d.mkdir(parents=True)
        (d / "data.json").write_text(json.dumps(data))
        (d / "image.png").write_bytes(IMG1)
    rows, counts = load("iconqa", tmp_path / "iconqa_data/iconqa")
    assert counts["skipped"] == {"image_choices": 1}
    by_q = {question_text(r): r["reward_model"]["ground_truth"] for r in rows}
    assert by_q == {"<image>Which shape is round?\nChoices:\n(A) square\n(B) circle": "B", "<image>How many dots are there?": "4"}


# --------------------------------------------------------------------------- the llava (MathV360K) form


def test_geos_llava_parquet(tmp_path):
    human = "<image>\nHint: Please answer the question and provide the correct option letter.\nQuestion: Find the angle.\nChoices:\n(A) 30\n(B) 60"
    p = write_parquet(tmp_path / "GEOS(MathV360K)/train-00000-of-00001.parquet", [
        {"id": "geos_1", "image": hf_image(IMG1), "data_source": "GEOS(MathV360K)",
         "conversations": [{"from": "human", "value": human}, {"from": "gpt", "value": "The answer is B"}]},
        {"id": "geos_2", "image": hf_image(IMG2), "data_source": "GEOS(MathV360K)",
         "conversations": [{"from": "human", "value": "<image>\nQuestion: What is x?\nChoices:\n(A) 2\n(B) 3"},
                           {"from": "gpt", "value": "3"},
                           {"from": "human", "value": "And y?"},
                           {"from": "gpt", "value": "y is found by drawing the altitude and then using similar triangles, which gives twelve."}]},
    ])
    rows, counts = load("geos", p.parent)
    assert counts["form"] == "llava" and counts["skipped"] == {"long_answer": 1}
    assert question_text(rows[0]) == human.replace("<image>\n", "<image>")
    assert rows[0]["reward_model"]["ground_truth"] == "B" and rows[0]["extra_info"]["choices"] == ["30", "60"]
    assert rows[1]["reward_model"]["ground_truth"] == "B"  # answer "3" is option (B)


def test_mapqa_llava_json_with_image_root(tmp_path):
    (tmp_path / "imgs/MapQA/images").mkdir(parents=True)
    (tmp_path / "imgs/MapQA/images/m1.png").write_bytes(IMG2)
    (tmp_path / "train_samples.json").write_text(json.dumps([
        {"id": "mapqa_1", "image": "MapQA/images/m1.png", "conversations": [
            {"from": "human", "value": "<image>\nWhich state has the highest value?"},
            {"from": "gpt", "value": "Answer: Texas."}]},
        {"id": "mapqa_2", "image": "MapQA/images/none.png", "conversations": [
            {"from": "human", "value": "<image>\nAny?"}, {"from": "gpt", "value": "No"}]},
    ]))
    rows, counts = load("mapqa", tmp_path / "train_samples.json", image_root=str(tmp_path / "imgs"))
    assert len(rows) == 1 and counts["skipped"] == {"missing_image": 1}
    assert question_text(rows[0]) == "<image>Which state has the highest value?"
    assert rows[0]["reward_model"]["ground_truth"] == "Texas" and images_of(rows[0]) == [IMG2]


def test_unknown_source_and_form_errors(tmp_path):
    with pytest.raises(ValueError, match="unknown source 'chartqa'"):
        load("chartqa", tmp_path)
    with pytest.raises(ValueError, match="only in the form"):
        load("geos", tmp_path, form="native")
    with pytest.raises(FileNotFoundError):
        load("ai2d", tmp_path / "missing")


def test_parquet_source_of_our_schema(tmp_path):
    from prep_helpers import row

    from ovlt_rl.data.schema import write_rows

    path = write_rows([row(i=i) for i in range(5)], tmp_path / "rows.parquet")
    rows, counts = load("parquet", path, limit=3)
    assert len(rows) == 3 and rows[2]["extra_info"]["i"] == 2
