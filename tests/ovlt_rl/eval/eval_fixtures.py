"""Small benchmark copies shaped like the published Hugging Face files (made here, no downloads).

Field names and types follow the dataset cards: AI4Math/MathVista (data/testmini-*.parquet),
AI4Math/MathVerse (testmini.parquet at the root), MathLLMs/MathVision (data/test-*, data/testmini-*).
Images are HF Image structs {bytes, path}; one MathVista row has only a path, resolved against an
`images/` folder at the dataset root (an unzipped images.zip).
"""

from __future__ import annotations

import io
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image

IMAGE = pa.struct([("bytes", pa.binary()), ("path", pa.string())])


def png(color: tuple[int, int, int], size: int = 28) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (size, size), color).save(buf, format="PNG")
    return buf.getvalue()


MATHVISTA_META = pa.struct(
    [
        ("category", pa.string()), ("context", pa.string()), ("grade", pa.string()),
        ("img_height", pa.int64()), ("img_width", pa.int64()), ("language", pa.string()),
        ("skills", pa.list_(pa.string())), ("source", pa.string()), ("split", pa.string()), ("task", pa.string()),
    ]
)
MATHVISTA_SCHEMA = pa.schema(
    [
        ("pid", pa.string()), ("question", pa.string()), ("image", pa.string()), ("decoded_image", IMAGE),
        ("choices", pa.list_(pa.string())), ("unit", pa.string()), ("precision", pa.float64()),
        ("answer", pa.string()), ("question_type", pa.string()), ("answer_type", pa.string()),
        ("metadata", MATHVISTA_META), ("query", pa.string()),
    ]
)


def _md(category: str, task: str, skills: list[str], context: str = "geometry diagram") -> dict:
    return {
        "category": category, "context": context, "grade": "high school", "img_height": 28, "img_width": 28,
        "language": "english", "skills": skills, "source": "Geometry3K", "split": "testmini", "task": task,
    }


def mathvista_rows() -> list[dict]:
    mc_query = (
        "Hint: Please answer the question and provide the correct option letter, e.g., A, B, C, D, at the end.\n"
        "Question: How long is segment AB?\nChoices:\n(A) 3 cm\n(B) 12 cm\n(C) 5"
    )
    return [
        {
            "pid": "1", "question": "How long is segment AB?", "image": "images/1.png",
            "decoded_image": {"bytes": png((255, 0, 0)), "path": "1.png"},
            "choices": ["3 cm", "12 cm", "5"], "unit": None, "precision": None, "answer": "12 cm",
            "question_type": "multi_choice", "answer_type": "text",
            "metadata": _md("math-targeted-vqa", "geometry problem solving", ["geometry reasoning", "algebraic reasoning"]),
            "query": mc_query,
        },
        {
            "pid": "2", "question": "What is the perimeter?", "image": "images/2.png",
            "decoded_image": {"bytes": png((0, 255, 0)), "path": "2.png"},
            "choices": None, "unit": "cm", "precision": None, "answer": "14",
            "question_type": "free_form", "answer_type": "integer",
            "metadata": _md("math-targeted-vqa", "geometry problem solving", ["geometry reasoning"]),
            "query": "Hint: Please answer the question requiring an integer answer and provide the final value, e.g., 1, 2, 3, at the end.\nQuestion: What is the perimeter? (Unit: cm)",
        },
        {
            "pid": "3", "question": "What fraction of the bar is shaded?", "image": "images/3.png",
            "decoded_image": {"bytes": png((0, 0, 255)), "path": "3.png"},
            "choices": None, "unit": None, "precision": 2.0, "answer": "0.67",
            "question_type": "free_form", "answer_type": "float",
            "metadata": _md("general-vqa", "figure question answering", ["arithmetic reasoning"], context="bar chart"),
            "query": "Hint: Please answer the question requiring a floating-point number with two decimal places and provide the final value, e.g., 1.23, 1.34, 1.45, at the end.\nQuestion: What fraction of the bar is shaded?",
        },
        {
            # No embedded bytes: the image is the file images/4.png at the dataset root.
            "pid": "4", "question": "Is the line straight?", "image": "images/4.png", "decoded_image": None,
            "choices": ["Yes", "No"], "unit": None, "precision": None, "answer": "Yes",
            "question_type": "multi_choice", "answer_type": "text",
            "metadata": _md("general-vqa", "visual question answering", ["logical reasoning"], context="abstract scene"),
            "query": "Hint: Please answer the question and provide the correct option letter, e.g., A, B, C, D, at the end.\nQuestion: Is the line straight?\nChoices:\n(A) Yes\n(B) No",
        },
    ]


def write_mathvista(root: Path, rows: list[dict] | None = None) -> Path:
    (root / "data").mkdir(parents=True)
    (root / "images").mkdir()
    (root / "images" / "4.png").write_bytes(png((9, 9, 9)))
    pq.write_table(pa.Table.from_pylist(rows or mathvista_rows(), schema=MATHVISTA_SCHEMA), root / "data" / "testmini-00000-of-00001-725687bf.parquet")
    # The test split (answers withheld) sits beside it and must not be read for testmini.
    decoy = dict(mathvista_rows()[0], pid="999", answer="")
    pq.write_table(pa.Table.from_pylist([decoy], schema=MATHVISTA_SCHEMA), root / "data" / "test-00000-of-00002-6a611c71.parquet")
    return root


MATHVERSE_SCHEMA = pa.schema(
    [
        ("sample_index", pa.string()), ("problem_index", pa.string()), ("problem_version", pa.string()),
        ("question", pa.string()), ("image", IMAGE), ("answer", pa.string()), ("question_type", pa.string()),
        ("metadata", pa.struct([("split", pa.string()), ("source", pa.string()), ("subject", pa.string()), ("subfield", pa.string())])),
        ("query_wo", pa.string()), ("query_cot", pa.string()), ("question_for_eval", pa.string()),
    ]
)


def mathverse_rows() -> list[dict]:
    md = {"split": "testmini", "source": "GeoQA", "subject": "Plane Geometry", "subfield": "Angle"}
    q1 = "As shown in the figure, angle 1 = 50°, what is angle 2?\nChoices:\nA:30°\nB:40°\nC:50°\nD:60°"
    q2 = "The side of the square is 3. What is its area?"
    cot = "Please first conduct reasoning, and then answer the question and provide the correct option letter, e.g., A, B, C, D, at the end.\nQuestion: "
    cot_free = "Please first conduct reasoning, and then answer the question and provide the final value, e.g., 1, 2.5, 300, at the end.\nQuestion: "
    return [
        {
            "sample_index": "1", "problem_index": "1", "problem_version": "Text Dominant", "question": q1,
            "image": {"bytes": png((200, 10, 10)), "path": "1.png"}, "answer": "B", "question_type": "multi-choice",
            "metadata": md, "query_wo": q1, "query_cot": cot + q1, "question_for_eval": q1,
        },
        {
            "sample_index": "2", "problem_index": "1", "problem_version": "Vision Only", "question": "",
            "image": {"bytes": png((10, 200, 10)), "path": "2.png"}, "answer": "B", "question_type": "multi-choice",
            "metadata": md, "query_wo": "", "query_cot": "According to the question shown in the image, please first conduct reasoning, and then answer the question and provide the correct option letter, e.g., A, B, C, D, at the end.", "question_for_eval": q1,
        },
        {
            "sample_index": "3", "problem_index": "2", "problem_version": "Text Lite", "question": q2,
            "image": {"bytes": png((10, 10, 200)), "path": "3.png"}, "answer": "9", "question_type": "free-form",
            "metadata": dict(md, subfield="Area"), "query_wo": q2, "query_cot": cot_free + q2, "question_for_eval": q2,
        },
    ]


def write_mathverse(root: Path) -> Path:
    root.mkdir(parents=True)
    pq.write_table(pa.Table.from_pylist(mathverse_rows(), schema=MATHVERSE_SCHEMA), root / "testmini.parquet")
    text_only = dict(mathverse_rows()[0], sample_index="T1", image=None)
    pq.write_table(pa.Table.from_pylist([text_only], schema=MATHVERSE_SCHEMA), root / "testmini_text_only.parquet")
    return root


MATHVISION_SCHEMA = pa.schema(
    [
        ("id", pa.string()), ("question", pa.string()), ("options", pa.list_(pa.string())), ("image", pa.string()),
        ("decoded_image", IMAGE), ("answer", pa.string()), ("solution", pa.string()), ("level", pa.int64()), ("subject", pa.string()),
    ]
)


def mathvision_rows() -> list[dict]:
    return [
        {
            "id": "1", "question": "Which of the shapes can be folded into a cube?\n<image1>", "options": ["A", "B", "C", "D", "E"],
            "image": "images/1.jpg", "decoded_image": {"bytes": png((1, 2, 3)), "path": None}, "answer": "C",
            "solution": None, "level": 2, "subject": "solid geometry",
        },
        {
            "id": "2", "question": "How many dots are hidden?\n<image1>", "options": [],
            "image": "images/2.jpg", "decoded_image": {"bytes": png((4, 5, 6)), "path": None}, "answer": "7",
            "solution": "Count them.", "level": 1, "subject": "counting",
        },
        {
            "id": "3", "question": "What is x?\n<image1>", "options": ["10", "12", "14", "16", "18"],
            "image": "images/3.jpg", "decoded_image": {"bytes": png((7, 8, 9)), "path": None}, "answer": "14",
            "solution": None, "level": 3, "subject": "metric geometry - length",
        },
    ]


def write_mathvision(root: Path) -> Path:
    (root / "data").mkdir(parents=True)
    rows = mathvision_rows()
    table = pa.Table.from_pylist(rows, schema=MATHVISION_SCHEMA)
    pq.write_table(table, root / "data" / "test-00000-of-00001-3532b8d3.parquet")
    pq.write_table(table.slice(0, 2), root / "data" / "testmini-00000-of-00001-f8ff70fc.parquet")
    return root
