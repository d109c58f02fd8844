"""Benchmark loaders: a local copy of a benchmark, in its published Hugging Face form, -> EvalSamples.

No hub access: point `eval.data` (or `eval.data_paths=[NAME=PATH,...]`) at a parquet file, or at a folder
as downloaded from the dataset repo (`huggingface-cli download --repo-type dataset ...`):

    mathvista        AI4Math/MathVista      data/testmini-*.parquet   query, decoded_image, choices, answer
    mathverse        AI4Math/MathVerse      testmini.parquet          query_cot, image, answer
    mathvision       MathLLMs/MathVision    data/test-*.parquet       question, options, decoded_image, answer
    mathvision_mini  MathLLMs/MathVision    data/testmini-*.parquet   (same fields)
    synthetic        our schema rows        test.parquet              (see ovlt_rl/data/schema.py)

Images are read from the parquet's image struct ({bytes, path}); when the bytes are absent, the
path is looked up next to the parquet file and in the folders above it up to the given folder
(so an unzipped `images.zip` beside `data/` works).

The prompts are the original evaluation's (OpenVLThinker's eval scripts): MathVista's `query`
and MathVerse's `query_cot` as published (they already carry their "Hint: ..." line); MathVision
gets "Hint: Please answer the question [and provide the correct option letter, e.g., A, B, C, D,
E, at the end].\\nQuestion: ...\\nChoices:\\n(A) ...". The image goes first ("<image>" + text).
When a question has choices, the ground truth is mapped to its option letter (the original's
rule: the answer's index among the choices).
"""

from __future__ import annotations

import io
import logging
import re
import string
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import pyarrow.parquet as pq

from ovlt_rl.data.schema import IMAGE_PLACEHOLDER, read_rows

log = logging.getLogger(__name__)

LETTERS = string.ascii_uppercase


@dataclass
class EvalSample:
    """One benchmark question, ready to prompt a model and to grade its answer."""

    id: str
    benchmark: str
    prompt: list[dict[str, str]]
    """Chat messages; "<image>" marks where each image of `images` goes."""
    images: list[bytes]
    """Encoded image files (PNG/JPEG bytes), in placeholder order."""
    ground_truth: str
    """The answer to match: the option letter when the question has choices."""
    choices: list[str] = field(default_factory=list)
    """Option texts, in letter order (A, B, ...); empty for free-form questions."""
    question_type: str = "free_form"
    """"multi_choice" or "free_form"."""
    unit: str = ""
    """Unit of a free-form numeric answer (MathVista), stripped from predictions before grading."""
    precision: int | None = None
    """Decimal places of a float answer (MathVista); predictions are rounded to it."""
    categories: dict[str, Any] = field(default_factory=dict)
    """Fields to break accuracy down by (a list value counts toward each of its items)."""
    meta: dict[str, Any] = field(default_factory=dict)
    """The raw row without image bytes, for the per-sample records."""

    @property
    def question(self) -> str:
        """The last user turn's text (with its placeholders)."""
        return [m["content"] for m in self.prompt if m["role"] == "user"][-1]


class BenchmarkError(ValueError):
    """A benchmark file that can't be read as published; the message names the file and row."""


# ------------------------------------------------------------------------------------------
# Prompt building and option letters.


def format_prompt(question: str, options: list[str] | None) -> str:
    """The original evaluation's prompt for a question with (or without) options."""
    if options:
        hint = "Hint: Please answer the question and provide the correct option letter, e.g., A, B, C, D, E, at the end."
        listing = "\n".join(f"({LETTERS[i]}) {opt}" for i, opt in enumerate(options))
        return f"{hint}\nQuestion: {question}\nChoices:\n{listing}"
    return f"Hint: Please answer the question requiring an answer.\nQuestion: {question}"


def answer_to_letter(answer: str, choices: list[str]) -> str:
    """The option letter of `answer` when it is one of `choices` (the original's mapping), else `answer`."""
    if choices and answer in choices:
        return LETTERS[choices.index(answer)]
    return answer


# "A:3", "A. 3", "(A) 3", "A) 3" lines of a "Choices:" block inside a question text.
_CHOICE_LINE = re.compile(r"^\s*\(?([A-Z])\s*[\):.]\s*(.*?)\s*$")


def parse_choices(text: str) -> list[str]:
    """Option texts listed after "Choices:" in a question (MathVerse puts them in the text).

    Returns [] when there is no block of consecutive lines lettered A, B, C, ...
    """
    head, sep, block = text.rpartition("Choices:")
    if not sep:
        return []
    out: list[str] = []
    for line in block.strip().splitlines():
        m = _CHOICE_LINE.match(line)
        if not m or m.group(1) != LETTERS[len(out)]:
            break
        out.append(m.group(2))
    return out


# ------------------------------------------------------------------------------------------
# Files and images.


def parquet_files(path: str | Path, split: str) -> list[Path]:
    """The parquet files of `split` under `path` (a file is taken as is).

    In a folder, HF's shard names are matched: `SPLIT-*.parquet` or `SPLIT.parquet`, anywhere
    below (so both `data/testmini-00000-of-00001-xx.parquet` and `testmini.parquet` work, and
    `test-*` never picks up `testmini-*`).
    """
    p = Path(path)
    if p.is_file():
        return [p]
    if not p.is_dir():
        raise BenchmarkError(f"{p}: no such file or folder")
    found = sorted(f for f in p.rglob("*.parquet") if f.name.startswith(f"{split}-") or f.name == f"{split}.parquet")
    if not found:
        names = sorted(str(f.relative_to(p)) for f in p.rglob("*.parquet"))
        raise BenchmarkError(f"{p}: no parquet file of split {split!r} (looked for {split}-*.parquet, {split}.parquet; found {names or 'none'})")
    return found


def _image_bytes(value: Any, parquet: Path, root: Path, where: str) -> bytes:
    """Bytes of an HF Image value ({bytes, path} struct or a bare path string)."""
    if isinstance(value, dict):
        if value.get("bytes"):
            return value["bytes"]
        value = value.get("path")
    if not isinstance(value, str) or not value:
        raise BenchmarkError(f"{where}: image has neither bytes nor a path")
    rel = Path(value)
    candidates = [rel] if rel.is_absolute() else []
    folder = parquet.parent
    while True:
        candidates.append(folder / rel)
        if folder == root or folder == folder.parent:
            break
        folder = folder.parent
    for c in candidates:
        if c.is_file():
            return c.read_bytes()
    raise BenchmarkError(f"{where}: image file {value!r} not found (tried {', '.join(str(c) for c in candidates)})")


def _check_image(data: bytes, where: str) -> bytes:
    """Fail early on a corrupt image rather than in the middle of generation."""
    from PIL import Image

    try:
        with Image.open(io.BytesIO(data)) as im:
            im.verify()
    except Exception as e:  # PIL raises many types for bad files
        raise BenchmarkError(f"{where}: image does not decode ({type(e).__name__}: {e})") from None
    return data


def _require(row: dict[str, Any], keys: list[str], where: str) -> None:
    missing = [k for k in keys if k not in row]
    if missing:
        raise BenchmarkError(f"{where}: missing field(s) {missing} (has {sorted(row)})")


def _meta(row: dict[str, Any], drop: tuple[str, ...]) -> dict[str, Any]:
    return {k: v for k, v in row.items() if k not in drop}


# ------------------------------------------------------------------------------------------
# One function per benchmark: a raw row -> EvalSample.

RowFn = Callable[[dict[str, Any], Callable[[Any], bytes], str], EvalSample]


def _single_image_prompt(text: str, image: bytes | None) -> tuple[list[dict[str, str]], list[bytes]]:
    if image is None:
        return [{"role": "user", "content": text}], []
    return [{"role": "user", "content": IMAGE_PLACEHOLDER + text}], [image]


def _mathvista(row: dict[str, Any], image: Callable[[Any], bytes], where: str) -> EvalSample:
    _require(row, ["pid", "question", "answer", "question_type"], where)
    choices = list(row.get("choices") or [])
    query = row.get("query") or format_prompt(row["question"], choices)
    img_value = row.get("decoded_image") or row.get("image")
    prompt, images = _single_image_prompt(query, image(img_value) if img_value else None)
    meta_md = row.get("metadata") or {}
    precision = row.get("precision")
    mc = row["question_type"] == "multi_choice"
    return EvalSample(
        id=str(row["pid"]),
        benchmark="mathvista",
        prompt=prompt,
        images=images,
        ground_truth=answer_to_letter(str(row["answer"]), choices) if mc else str(row["answer"]),
        choices=choices if mc else [],
        question_type="multi_choice" if mc else "free_form",
        unit=row.get("unit") or "",
        # NaN (float column of a non-float answer) and None both mean "no precision".
        precision=int(precision) if isinstance(precision, (int, float)) and precision == precision else None,
        categories={
            "question_type": row["question_type"],
            "answer_type": row.get("answer_type"),
            "category": meta_md.get("category"),
            "task": meta_md.get("task"),
            "context": meta_md.get("context"),
            "grade": meta_md.get("grade"),
            "skills": list(meta_md.get("skills") or []),
            "source": meta_md.get("source"),
        },
        meta=_meta(row, ("decoded_image",)),
    )


def _mathverse(row: dict[str, Any], image: Callable[[Any], bytes], where: str) -> EvalSample:
    _require(row, ["sample_index", "answer", "question_type", "query_cot"], where)
    img_value = row.get("image")
    prompt, images = _single_image_prompt(row["query_cot"], image(img_value) if img_value else None)
    mc = row["question_type"] == "multi-choice"
    meta_md = row.get("metadata") or {}
    return EvalSample(
        id=str(row["sample_index"]),
        benchmark="mathverse",
        prompt=prompt,
        images=images,
        # Published as the option letter already; the choices live in the question text.
        ground_truth=str(row["answer"]),
        choices=parse_choices(row["query_cot"]) if mc else [],
        question_type="multi_choice" if mc else "free_form",
        categories={
            "question_type": row["question_type"],
            "problem_version": row.get("problem_version"),
            "subject": meta_md.get("subject"),
            "subfield": meta_md.get("subfield"),
            "source": meta_md.get("source"),
        },
        meta=_meta(row, ("image",)),
    )


def _mathvision(row: dict[str, Any], image: Callable[[Any], bytes], where: str, name: str) -> EvalSample:
    _require(row, ["id", "question", "answer"], where)
    options = list(row.get("options") or [])
    img_value = row.get("decoded_image") or row.get("image")
    prompt, images = _single_image_prompt(format_prompt(row["question"], options), image(img_value) if img_value else None)
    return EvalSample(
        id=str(row["id"]),
        benchmark=name,
        prompt=prompt,
        images=images,
        ground_truth=answer_to_letter(str(row["answer"]), options),
        choices=options,
        question_type="multi_choice" if options else "free_form",
        categories={
            "question_type": "multi_choice" if options else "free_form",
            "level": row.get("level"),
            "subject": row.get("subject"),
        },
        meta=_meta(row, ("decoded_image",)),
    )


@dataclass(frozen=True)
class Benchmark:
    name: str
    split: str
    """HF split whose shards are read from a folder."""
    category_keys: tuple[str, ...]
    """Fields of EvalSample.categories that summary.json breaks accuracy down by."""


BENCHMARKS: dict[str, Benchmark] = {
    "mathvista": Benchmark("mathvista", "testmini", ("question_type", "answer_type", "category", "task", "context", "grade", "skills", "source")),
    "mathverse": Benchmark("mathverse", "testmini", ("question_type", "problem_version", "subject", "subfield")),
    "mathvision": Benchmark("mathvision", "test", ("question_type", "level", "subject")),
    "mathvision_mini": Benchmark("mathvision_mini", "testmini", ("question_type", "level", "subject")),
    "synthetic": Benchmark("synthetic", "test", ("data_source", "question_type")),
}


def _row_fn(name: str) -> RowFn:
    if name == "mathvista":
        return _mathvista
    if name == "mathverse":
        return _mathverse
    return lambda row, image, where: _mathvision(row, image, where, name)


def _load_hf(name: str, path: Path, max_samples: int) -> list[EvalSample]:
    bench = BENCHMARKS[name]
    root = path if path.is_dir() else path.parent
    fn = _row_fn(name)
    samples: list[EvalSample] = []
    for f in parquet_files(path, bench.split):
        for i, row in enumerate(pq.read_table(f).to_pylist()):
            where = f"{name} {f} row {i}"
            s = fn(row, lambda v, f=f, where=where: _check_image(_image_bytes(v, f, root, where), where), where)
            samples.append(s)
            if max_samples and len(samples) >= max_samples:
                return samples
    return samples


def _load_synthetic(path: Path, max_samples: int) -> list[EvalSample]:
    """Our own schema rows (ovlt_rl/data/schema.py), as they are: prompt, images, ground truth.

    Choices, when a row has them, come from extra_info["choices"] (the ground truth is then the letter).
    """
    samples = []
    for f in parquet_files(path, BENCHMARKS["synthetic"].split):
        for i, row in enumerate(read_rows(f)):
            where = f"synthetic {f} row {i}"
            info = row.get("extra_info") or {}
            images = [_check_image(_image_bytes(im, f, f.parent, where), where) for im in row.get("images") or []]
            n_ph = sum(m["content"].count(IMAGE_PLACEHOLDER) for m in row["prompt"])
            if n_ph != len(images):
                raise BenchmarkError(f"{where}: {n_ph} {IMAGE_PLACEHOLDER} placeholders but {len(images)} images")
            choices = [str(c) for c in info.get("choices") or []]
            sid = info.get("id", info.get("index", f"{f.stem}-{i}"))
            samples.append(
                EvalSample(
                    id=str(sid),
                    benchmark="synthetic",
                    prompt=[dict(m) for m in row["prompt"]],
                    images=images,
                    ground_truth=answer_to_letter(str(row["reward_model"]["ground_truth"]), choices),
                    choices=choices,
                    question_type="multi_choice" if choices else "free_form",
                    categories={"data_source": row["data_source"], "question_type": "multi_choice" if choices else "free_form"},
                    meta={"data_source": row["data_source"], "extra_info": info},
                )
            )
            if max_samples and len(samples) >= max_samples:
                return samples
    return samples


def load_benchmark(name: str, path: str | Path, max_samples: int = 0) -> list[EvalSample]:
    """Load benchmark `name` from its local copy at `path` (file or folder); at most `max_samples` (0: all).

    Raises BenchmarkError naming the file and row for anything that can't be read (missing field,
    missing or corrupt image): a benchmark is scored over all its samples or not at all.
    """
    if name not in BENCHMARKS:
        raise BenchmarkError(f"unknown benchmark {name!r}; known: {', '.join(BENCHMARKS)}")
    if not str(path):
        raise BenchmarkError(f"{name}: no data path given (set eval.data or eval.data_paths=[{name}=PATH])")
    p = Path(path)
    samples = _load_synthetic(p, max_samples) if name == "synthetic" else _load_hf(name, p, max_samples)
    counts = Counter(s.id for s in samples)
    if len(counts) != len(samples):
        dup = sorted(i for i, c in counts.items() if c > 1)[:5]
        raise BenchmarkError(f"{name} {p}: duplicate sample ids {dup} (responses are matched by id)")
    if not samples:
        raise BenchmarkError(f"{name} {p}: no samples")
    log.info("%s: %d samples from %s", name, len(samples), p)
    return samples
