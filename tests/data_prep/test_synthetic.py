"""The synthetic task: determinism, splits, and answers re-derived from the pixels of each image."""

from __future__ import annotations

import io
import math
import re
from collections import Counter, defaultdict

import numpy as np
import pytest
from PIL import Image

from data_prep import synthetic
from data_prep.reasoner import DEFAULT_REFLECTION_PHRASES
from ovlt_rl.data.schema import read_rows

PALETTE = {name: np.array(rgb) for name, rgb in synthetic.COLORS.items()}
N = 240  # rows per check: 60 per family


@pytest.fixture(scope="module")
def rows():
    return synthetic.generate(N, seed=3)


def _pixels(row) -> np.ndarray:
    image = Image.open(io.BytesIO(row["images"][0]["bytes"]))
    assert image.mode == "RGB"
    return np.asarray(image).astype(int)


def _mask(px: np.ndarray, rgb) -> np.ndarray:
    return np.all(px == np.array(rgb), axis=-1)


def _question(row) -> str:
    return row["extra_info"]["question"]


# ---------------------------------------------------------------- reading the images back
def _read_count(px: np.ndarray, question: str) -> int:
    """Count the asked shapes cell by cell; the shape follows from how much of its box it fills."""
    color, shape = re.fullmatch(r"How many (\w+) (\w+?)s are there\?", question).groups()
    size = px.shape[0]
    cell = size / 4
    found = 0
    for r in range(4):
        for c in range(4):
            block = px[round(r * cell) : round((r + 1) * cell), round(c * cell) : round((c + 1) * cell)]
            for name, rgb in PALETTE.items():
                m = _mask(block, rgb)
                if m.sum() < 20:
                    continue
                ys, xs = np.nonzero(m)
                fill = m.sum() / ((ys.max() - ys.min() + 1) * (xs.max() - xs.min() + 1))
                kind = "square" if fill > 0.93 else "circle" if fill > 0.68 else "triangle"
                found += name == color and shape in ("shape", kind)
    return found


def _read_chart(px: np.ndarray, question: str) -> int:
    """Bar heights against the gridline spacing, then the arithmetic the question asks."""
    black_cols = _mask(px, (0, 0, 0)).sum(axis=0)
    axis_x = int(np.argmax(black_cols))
    grid_rows = np.nonzero(_mask(px[:, axis_x - 2 : axis_x - 1], synthetic.GRID)[:, 0])[0]
    unit = float(np.diff(grid_rows).mean())
    colored = np.zeros(px.shape[:2], bool)
    for rgb in PALETTE.values():
        colored |= _mask(px, rgb)
    baseline_row = colored[int(np.argmax(_mask(px, (0, 0, 0)).sum(axis=1))) - 1]
    xs = np.nonzero(baseline_row)[0]
    runs = np.split(xs, np.nonzero(np.diff(xs) > 1)[0] + 1)
    assert len(runs) == 3, "expected three bars"
    values = dict(zip("ABC", (round(colored[:, int(run.mean())].sum() / unit) for run in runs)))
    if m := re.fullmatch(r"What is the value of bar (\w)\?", question):
        return values[m.group(1)]
    if m := re.fullmatch(r"What is bar (\w) plus bar (\w)\?", question):
        return values[m.group(1)] + values[m.group(2)]
    assert "tallest" in question
    return max(values.values()) - min(values.values())


def _read_ruler(px: np.ndarray, question: str) -> int:
    """The line's right end against the ruler's tick marks."""
    black = _mask(px, (0, 0, 0))
    edge = int(np.argmax(black.sum(axis=1)))
    ticks = np.nonzero(black[edge + 2])[0]
    spacing = float(np.diff(ticks).mean())
    color = re.fullmatch(r"How long is the (?:(\w+) )?line, in cm\?", question).group(1)
    present = [name for name, rgb in PALETTE.items() if _mask(px, rgb).any()]
    if color is None:
        assert len(present) == 1
        color = present[0]
    xs = np.nonzero(_mask(px, PALETTE[color]).any(axis=0))[0]
    assert xs.min() == ticks[0], "lines start at the 0 cm mark"
    return round((xs.max() - ticks[0]) / spacing)


def _angle_at(px: np.ndarray) -> float:
    """Angle (degrees) between the two rays in this half image, around its black vertex dot."""
    vy, vx = np.argwhere(_mask(px, (0, 0, 0))).mean(axis=0)
    colored = np.zeros(px.shape[:2], bool)
    for rgb in PALETTE.values():
        colored |= _mask(px, rgb)
    ys, xs = np.nonzero(colored)
    dx, dy = xs - vx, vy - ys
    dist = np.hypot(dx, dy)
    far = dist > 0.7 * dist.max()
    theta = np.arctan2(dy[far], dx[far])
    # two-means on the unit circle, seeded with the two most distant directions
    units = np.stack([np.cos(theta), np.sin(theta)], 1)
    c1 = units[0]
    c2 = units[np.argmin(units @ c1)]
    for _ in range(5):
        near1 = units @ c1 >= units @ c2
        c1, c2 = units[near1].mean(0), units[~near1].mean(0)
    return math.degrees(math.acos(np.clip(c1 @ c2 / np.linalg.norm(c1) / np.linalg.norm(c2), -1, 1)))


def _read_compare(px: np.ndarray, question: str, caption: str) -> str:
    kind, word = re.fullmatch(r"Which (\w+) is (\w+), A or B\?", question).groups()
    size = px.shape[0]
    if kind == "angle":
        sizes = [_angle_at(px[:, : size // 2]), _angle_at(px[:, size // 2 :])]
        stated = [int(x) for x in re.findall(r"is (\d+) degrees", caption)]
        assert all(abs(a - b) <= 8 for a, b in zip(sizes, stated)), (sizes, stated)
    else:
        sizes = []
        for half in (px[: size // 2], px[size // 2 :]):
            colored = np.zeros(half.shape[:2], bool)
            for rgb in PALETTE.values():
                colored |= _mask(half, rgb)
            xs = np.nonzero(colored.any(axis=0))[0]
            sizes.append(xs.max() - xs.min() + 1)
    bigger = "A" if sizes[0] > sizes[1] else "B"
    return bigger if word in ("larger", "longer") else "AB".replace(bigger, "")


@pytest.mark.parametrize("image_size", [112, 168])
def test_answers_match_what_the_pixels_show(image_size):
    rows = synthetic.generate(N if image_size == 112 else 40, seed=3, image_size=image_size)
    for row in rows:
        px = _pixels(row)
        assert px.shape == (image_size, image_size, 3)
        family, q = row["extra_info"]["family"], _question(row)
        if family == "count":
            read = str(_read_count(px, q))
        elif family == "chart":
            read = str(_read_chart(px, q))
        elif family == "ruler":
            read = str(_read_ruler(px, q))
        else:
            read = _read_compare(px, q, row["extra_info"]["caption"])
        assert read == row["reward_model"]["ground_truth"], (family, q, row["extra_info"]["caption"])


def test_captions_agree_with_the_pixels(rows):
    """The caption states what is drawn: shape counts per colour, bar values, line ends."""
    for row in rows:
        info, px = row["extra_info"], _pixels(row)
        if info["family"] == "count":
            for n, color, shape in re.findall(r"(\d+) (\w+) (circle|square|triangle)", info["caption"]):
                assert _read_count(px, f"How many {color} {shape}s are there?") == int(n)
        elif info["family"] == "chart":
            for bar, value in re.findall(r"(\w)=(\d+)", info["caption"]):
                assert _read_chart(px, f"What is the value of bar {bar}?") == int(value)
        elif info["family"] == "ruler":
            for color, end in re.findall(r"(\w+) line from 0 cm to (\d+) cm", info["caption"]):
                assert _read_ruler(px, f"How long is the {color} line, in cm?") == int(end)


# ---------------------------------------------------------------- rows, determinism, splits
def test_rows_follow_the_schema(rows):
    for i, row in enumerate(rows):
        info = row["extra_info"]
        assert row["data_source"] == f"synthetic/{info['family']}"
        assert row["prompt"][0]["content"] == "<image>" + info["question"]
        assert info["index"] == i and info["split"] == "train"
        assert info["caption"] and info["template"] in synthetic.TEMPLATES
        assert len(row["images"]) == 1 and row["images"][0]["bytes"].startswith(b"\x89PNG")
        if info["family"] == "compare":
            assert info["choices"] == ["A", "B"] and row["reward_model"]["ground_truth"] in ("A", "B")
        else:
            assert "choices" not in info and row["reward_model"]["ground_truth"].isdigit()
    assert Counter(r["extra_info"]["family"] for r in rows) == {f: N // 4 for f in synthetic.FAMILIES}


def test_same_seed_same_bytes_and_prefix_stable(rows):
    again = synthetic.generate(N, seed=3)
    assert again == rows
    assert synthetic.generate(20, seed=3) == rows[:20]
    other = synthetic.generate(N, seed=4)
    assert sum(a["images"][0]["bytes"] != b["images"][0]["bytes"] for a, b in zip(rows, other)) > 0.9 * N


def test_families_can_be_chosen():
    rows = synthetic.generate(10, seed=0, families=["ruler", "chart"])
    assert [r["extra_info"]["family"] for r in rows] == ["ruler", "chart"] * 5
    with pytest.raises(ValueError, match="nosuch"):
        synthetic.generate(2, families=["nosuch"])
    with pytest.raises(ValueError, match="split"):
        synthetic.generate(2, split="dev")
    with pytest.raises(ValueError, match="image_size"):
        synthetic.generate(2, image_size=20)


def test_splits_share_no_image():
    images = {}
    for split in synthetic.SPLITS:
        images[split] = {r["images"][0]["bytes"] for r in synthetic.generate(160, seed=0, split=split)}
        assert len(images[split]) > 120  # mostly distinct within a split, too
    assert not images["train"] & images["val"]
    assert not images["train"] & images["test"]
    assert not images["val"] & images["test"]


def test_answers_need_the_image():
    """Every template, and most question texts, come with several answers; guessing the most
    frequent answer per question text (learned on train) does poorly on test."""
    samples = [synthetic.sample(i, seed=0, split="train", family=f) for i in range(1500) for f in synthetic.FAMILIES]
    by_template, by_text = defaultdict(set), defaultdict(Counter)
    for s in samples:
        by_template[s.template].add(s.answer)
        by_text[s.question][s.answer] += 1
    assert set(by_template) == set(synthetic.TEMPLATES)
    assert all(len(answers) > 1 for answers in by_template.values()), by_template
    assert all(len(answers) > 1 for answers in by_text.values()), [q for q, a in by_text.items() if len(a) == 1]
    guess = {q: a.most_common(1)[0][0] for q, a in by_text.items()}
    test = [synthetic.sample(i, seed=0, split="test", family=f) for i in range(300) for f in synthetic.FAMILIES]
    accuracy = sum(guess.get(s.question) == s.answer for s in test) / len(test)
    assert accuracy < 0.4, accuracy


def test_write_synthetic_writes_three_splits(tmp_path):
    paths = synthetic.write_synthetic(tmp_path, n_train=12, n_val=4, n_test=8, seed=1, image_size=112, families=None)
    assert set(paths) == {"train", "val", "test"}
    for split, n in (("train", 12), ("val", 4), ("test", 8)):
        back = read_rows(paths[split])
        assert paths[split] == tmp_path / f"{split}.parquet"
        assert back == [dict(r) for r in synthetic.generate(n, seed=1, split=split)]


def test_text_corpus_covers_what_the_model_reads_and_writes():
    corpus = synthetic.text_corpus(80, seed=0)
    assert corpus == synthetic.text_corpus(80, seed=0)
    text = "\n".join(corpus)
    assert synthetic.PROMPT_SUFFIX in corpus
    assert all(p in text for p in DEFAULT_REFLECTION_PHRASES)
    for template in ("How many", "What is bar", "tallest", "How long is the line", "Which angle", "Which line"):
        assert template in text
    assert text.count("<think>") >= 80 and text.count("<answer>") >= 80
    assert all(isinstance(t, str) and t for t in corpus)


def test_eval_splits_are_balanced_over_each_templates_answers():
    """val/test ask every answer of a template equally often (a per-template guess scores chance)."""
    for split in synthetic.EVAL_SPLITS:
        rows = synthetic.generate(96, seed=2, split=split)
        by_template = defaultdict(Counter)
        for r in rows:
            by_template[r["extra_info"]["template"]][r["reward_model"]["ground_truth"]] += 1
        assert set(by_template) == set(synthetic.TEMPLATES)
        for template, counts in by_template.items():
            per_answer = [counts[a] for a in synthetic.TEMPLATE_ANSWERS[template]]
            assert max(per_answer) - min(per_answer) <= 1, (split, template, counts)


def test_every_template_answer_is_drawn_in_each_eval_split():
    """Each (template, answer) has images in val and in test (the sampler would loop forever if one
    had none), and the training split keeps its natural answer frequencies."""
    slots = max(len(synthetic.FAMILY_TEMPLATES[f]) for f in synthetic.FAMILIES) * max(
        len(a) for a in synthetic.TEMPLATE_ANSWERS.values())
    wanted = {(t, a) for t, answers in synthetic.TEMPLATE_ANSWERS.items() for a in answers}
    for split in synthetic.EVAL_SPLITS:
        got = {(s.template, s.answer) for f in synthetic.FAMILIES for k in range(slots)
               for s in [synthetic.sample(k, seed=0, split=split, family=f, target=synthetic.eval_target(f, k))]}
        assert got == wanted
    sums = Counter(s.answer for i in range(600) for s in [synthetic.sample(i, seed=0, split="train", family="chart")]
                   if s.template == "chart_sum")
    assert sums["7"] > 3 * sums["2"], sums  # a sum of two bars is 7 six times as often as 2
    with pytest.raises(ValueError, match="chart_sum"):
        synthetic.sample(0, seed=0, split="val", family="count", target=("chart_sum", "7"))
