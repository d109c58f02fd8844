"""Adapters for the datasets' own published forms (one table entry per source).

Each entry names the published form it reads and two functions: `records(path, split)` yields
the copy's raw records, `convert(record, root, split)` makes one schema row or raises Skip.

    source      published form read here
    ai2d        lmms-lab/ai2d parquet: image, question, options, answer (option index)
    scienceqa   derek-thomas/ScienceQA parquet: image, question, choices, answer (index), hint
    figureqa    vikhyatk/figureqa parquet: image, qa [{question, answer}] (yes/no questions)
    geometry3k  hiyouga/geometry3k parquet: images, problem, answer, choices, ground_truth
    tabmwp      TabMWP problems_{split}.json {pid: {question, choices, answer, unit, ...}} + tables/{pid}.png
    vizwiz      VizWiz VQA annotations {split}.json [{image, question, answers, answerable}] + images
    clevr       CLEVR_v1.0 questions JSON {"questions": [{image_filename, question, answer}]} + images/{split}/
    superclevr  Super-CLEVR questions JSON (same layout as CLEVR) + images/
    iconqa      IconQA iconqa/{split}/{choose_txt,fill_in_blank,...}/{pid}/data.json + image.png

GEOS and MapQA are published for training only inside MathV360K: they use the "llava" form
(data_prep/sources/llava.py), which also reads every source above from its MathV360K subset.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator

from data_prep.sources.common import (
    Skip,
    build_row,
    hf_image_bytes,
    letter_for_index,
    letter_for_text,
    load_json,
    parquet_records,
    read_file_image,
)

Record = dict[str, Any]


@dataclass(frozen=True)
class NativeForm:
    form: str  # the published form, in words (for messages and the manifest)
    records: Callable[[Path, str], Iterator[Record]]
    convert: Callable[[str, Record, Path, str], dict]


# --------------------------------------------------------------------------- readers


def _parquet(path: Path, split: str) -> Iterator[Record]:
    yield from parquet_records(path, split)


def _json_file(path: Path, split: str, names: tuple[str, ...]) -> Path:
    """`path` itself when it is a file, else the first of `names` (formatted with split) in it."""
    if path.is_file():
        return path
    for n in names:
        p = path / n.format(split=split)
        if p.is_file():
            return p
    tried = ", ".join(n.format(split=split) for n in names)
    raise FileNotFoundError(f"{path}: none of {tried} found")


def _figureqa_records(path: Path, split: str) -> Iterator[Record]:
    for rec in parquet_records(path, split):
        for i, qa in enumerate(rec.get("qa") or []):
            yield {"image": rec["image"], "question": qa.get("question"), "answer": qa.get("answer"), "qa_index": i}


def _tabmwp_records(path: Path, split: str) -> Iterator[Record]:
    data = load_json(_json_file(path, split, ("problems_{split}.json", "problems_train.json")))
    for pid, rec in data.items():
        yield {"pid": str(pid), **rec}


def _vizwiz_records(path: Path, split: str) -> Iterator[Record]:
    yield from load_json(_json_file(path, split, ("{split}.json", "Annotations/{split}.json", "annotations/{split}.json")))


def _clevr_records(path: Path, split: str) -> Iterator[Record]:
    names = ("CLEVR_{split}_questions.json", "questions/CLEVR_{split}_questions.json",
             "superCLEVR_questions_30k.json", "questions.json")
    data = load_json(_json_file(path, split, names))
    yield from data["questions"] if isinstance(data, dict) else data


def _iconqa_records(path: Path, split: str) -> Iterator[Record]:
    base = path / split if (path / split).is_dir() else path
    for f in sorted(base.rglob("data.json")):
        yield {**load_json(f), "_dir": str(f.parent), "pid": f.parent.name}


# --------------------------------------------------------------------------- converters


def _indexed_choices(question_key: str, choices_key: str, answer_key: str, hint_key: str | None = None):
    """Converter for parquet rows with a choices list and the answer as the option index."""

    def convert(name: str, rec: Record, root: Path, split: str) -> dict:
        choices = [str(c) for c in (rec.get(choices_key) or [])]
        if len(choices) < 2:
            raise Skip("no_choices")
        question = str(rec.get(question_key) or "")
        hint = str(rec.get(hint_key) or "").strip() if hint_key else ""
        if hint:
            question = f"Context: {hint}\n{question}"
        image = hf_image_bytes(rec.get("image"), root)
        return build_row(name, question, letter_for_index(rec.get(answer_key), choices), [image],
                         {"split": split, "form": "native"}, choices=choices)

    return convert


_YES = {"1", "yes", "true"}
_NO = {"0", "no", "false"}


def _figureqa(name: str, rec: Record, root: Path, split: str) -> dict:
    answer = str(rec.get("answer")).strip().lower()
    if answer not in _YES | _NO:
        raise Skip("answer_not_yes_no")
    image = hf_image_bytes(rec.get("image"), root)
    return build_row(name, str(rec.get("question") or ""), "yes" if answer in _YES else "no", [image],
                     {"split": split, "form": "native", "qa_index": rec["qa_index"]})


def _geometry3k(name: str, rec: Record, root: Path, split: str) -> dict:
    images = [hf_image_bytes(v, root) for v in (rec.get("images") or [])]
    if not images:
        raise Skip("no_image")
    choices = [str(c) for c in (rec.get("choices") or [])]
    extra = {"split": split, "form": "native", "id": rec.get("id")}
    if choices:
        gt = str(rec.get("ground_truth") or "").strip()
        if len(gt) == 1 and gt.upper() in "ABCDEFGH"[: len(choices)]:
            letter = gt.upper()
        else:
            letter = letter_for_text(str(rec.get("answer") or ""), choices)
        return build_row(name, str(rec.get("problem") or ""), letter, images, extra, choices=choices)
    return build_row(name, str(rec.get("problem") or ""), str(rec.get("answer") or ""), images, extra)


def _tabmwp(name: str, rec: Record, root: Path, split: str) -> dict:
    pid = rec["pid"]
    image = read_file_image([root / "tables" / f"{pid}.png", root / f"{pid}.png"])
    question = str(rec.get("question") or "")
    if rec.get("unit"):
        question += f" (Unit: {rec['unit']})"
    extra = {"split": split, "form": "native", "pid": pid, "ques_type": rec.get("ques_type")}
    choices = [str(c) for c in (rec.get("choices") or [])]
    if choices:
        return build_row(name, question, letter_for_text(str(rec.get("answer")), choices), [image], extra, choices=choices)
    return build_row(name, question, str(rec.get("answer") or ""), [image], extra)


def _vizwiz(name: str, rec: Record, root: Path, split: str) -> dict:
    if rec.get("answerable") == 0 or rec.get("answer_type") == "unanswerable":
        raise Skip("unanswerable")
    votes = Counter(" ".join(str(a.get("answer", "")).split()).lower() for a in rec.get("answers") or [])
    votes.pop("", None)
    ranked = votes.most_common(2)
    # a verifiable answer needs agreement: at least 3 annotators (VQA's "fully correct"), no tie
    if not ranked or ranked[0][1] < 3 or (len(ranked) > 1 and ranked[1][1] == ranked[0][1]):
        raise Skip("no_consensus")
    if ranked[0][0] in ("unanswerable", "unsuitable"):
        raise Skip("unanswerable")
    fname = str(rec.get("image") or "")
    image = read_file_image([root / fname, root / split / fname])
    return build_row(name, str(rec.get("question") or ""), ranked[0][0], [image],
                     {"split": split, "form": "native", "image_name": fname})


def _clevr(name: str, rec: Record, root: Path, split: str) -> dict:
    fname = str(rec.get("image_filename") or rec.get("image") or "")
    if not fname:
        raise Skip("no_image")
    qsplit = str(rec.get("split") or split)
    image = read_file_image([root / fname, root / "images" / qsplit / fname, root / qsplit / fname, root / "images" / fname])
    answer = rec.get("answer")
    if answer is None:
        raise Skip("empty_answer")
    return build_row(name, str(rec.get("question") or ""), str(answer).strip().lower(), [image],
                     {"split": qsplit, "form": "native", "image_filename": fname})


def _iconqa(name: str, rec: Record, root: Path, split: str) -> dict:
    qtype = rec.get("ques_type")
    if qtype not in ("choose_txt", "fill_in_blank"):
        raise Skip("image_choices" if qtype == "choose_img" else "unknown_question_type")
    image = read_file_image([Path(rec["_dir"]) / "image.png"])
    extra = {"split": split, "form": "native", "pid": rec["pid"], "ques_type": qtype}
    if qtype == "choose_txt":
        choices = [str(c) for c in rec.get("choices") or []]
        return build_row(name, str(rec.get("question") or ""), letter_for_index(rec.get("answer"), choices), [image],
                         extra, choices=choices)
    return build_row(name, str(rec.get("question") or ""), str(rec.get("answer") or ""), [image], extra)


NATIVE: dict[str, NativeForm] = {
    "ai2d": NativeForm("lmms-lab/ai2d parquet", _parquet, _indexed_choices("question", "options", "answer")),
    "scienceqa": NativeForm("derek-thomas/ScienceQA parquet", _parquet,
                            _indexed_choices("question", "choices", "answer", hint_key="hint")),
    "figureqa": NativeForm("vikhyatk/figureqa parquet", _figureqa_records, _figureqa),
    "geometry3k": NativeForm("hiyouga/geometry3k parquet", _parquet, _geometry3k),
    "tabmwp": NativeForm("TabMWP problems_{split}.json + tables/", _tabmwp_records, _tabmwp),
    "vizwiz": NativeForm("VizWiz VQA annotations JSON + images", _vizwiz_records, _vizwiz),
    "clevr": NativeForm("CLEVR_v1.0 questions JSON + images", _clevr_records, _clevr),
    "superclevr": NativeForm("Super-CLEVR questions JSON + images", _clevr_records, _clevr),
    "iconqa": NativeForm("IconQA iconqa/{split}/*/{pid}/data.json + image.png", _iconqa_records, _iconqa),
}
