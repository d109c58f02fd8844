"""The synthetic visual-reasoning task of the embedded default.

Four families of questions whose answers are verifiable and need the image (the same question text
comes with different answers):

- count:   coloured shapes on a 4x4 grid; "How many red circles are there?" (0-5)
- chart:   a bar chart of three bars A, B, C (values 1-6); read one bar, add two, or tallest - shortest
- ruler:   one or two coloured lines against a 0-6 cm ruler; "How long is the line, in cm?"
- compare: two angles or two lines; "Which angle is larger, A or B?" (multiple choice A/B)

Everything is sized for a tiny Qwen2.5-VL-shaped model on a CPU: 112x112 images by default (patch 14,
merge 2: 16 image tokens, one per 28x28 cell), flat high-contrast colours (red, green, blue) on white,
big shapes, few objects, a handful of question templates, small answer spaces. As a check of
learnability (not a test): a ~100k-parameter classifier with the same patch 14 / merge 2 front end
and a 2-layer transformer, trained on 4000 rows for 2000 steps (about 3.5 minutes on one CPU core),
reached test accuracy count 0.95, chart 0.91, ruler 0.98, compare 0.74 (lines 1.0, angles 0.55:
the hardest template, which leaves room for RL); guessing from the question text alone gives
about 0.2, 0.18, 0.17 and 0.5.

Each sample also has a scene description standing in for a caption, complete enough that the
programmatic reasoner (data_prep/reasoner.py) answers from it alone.

Determinism and splits: sample i of (seed, split) draws from its own RNG seeded by
(seed, split, i), so the same arguments give byte-identical PNGs and rows, and generate(n) is a
prefix of generate(n + m). Splits never share an image: the scene's hash picks one split
(80% train, 10% val, 10% test of the scene space) and a sampler redraws until the scene belongs to
the requested split.

The evaluation splits (val, test) are answer-balanced: row k of a family asks the k-th
(template, answer) pair of that family in turn (`eval_target`), and the sampler redraws until it
gets it. Drawn freely, a 23-row template can hold 18 "A"s, and a model that answers one constant
per template scores well or badly by that constant alone; balanced, any per-template guess scores
the chance rate, so validation moves only when the model reads the image better or worse. The
training split stays as drawn.
"""

from __future__ import annotations

import hashlib
import io
import math
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from PIL import Image, ImageDraw, ImageFont

from data_prep.reasoner import DEFAULT_REFLECTION_PHRASES, ProgrammaticReasoner, reflection_sentences
from ovlt_rl.data.schema import IMAGE_PLACEHOLDER, make_row, write_rows

PROMPT_SUFFIX = (
    "You FIRST think about the reasoning process as an internal monologue and then provide the final answer. "
    "The reasoning process MUST BE enclosed within <think> </think> tags. "
    "The final answer MUST BE put in <answer> </answer> tags."
)

FAMILIES: tuple[str, ...] = ("count", "chart", "ruler", "compare")
COLORS: dict[str, tuple[int, int, int]] = {"red": (220, 20, 20), "green": (20, 150, 40), "blue": (30, 50, 220)}
SHAPES: tuple[str, ...] = ("circle", "square", "triangle")
WHITE = (255, 255, 255)
BLACK = (0, 0, 0)
GRID = (200, 200, 200)  # chart gridlines
LABEL = (90, 90, 90)  # letters and digits, distinct from every other colour so pixels stay separable
SPLITS: dict[str, tuple[float, float]] = {"train": (0.0, 0.8), "val": (0.8, 0.9), "test": (0.9, 1.0)}
MIN_IMAGE_SIZE = 56

# Question templates per family (what the model sees after the "<image>" placeholder).
TEMPLATES: dict[str, str] = {
    "count_color_shape": "How many {color} {shape}s are there?",
    "count_color": "How many {color} shapes are there?",
    "chart_value": "What is the value of bar {a}?",
    "chart_sum": "What is bar {a} plus bar {b}?",
    "chart_range": "What is the value of the tallest bar minus the value of the shortest bar?",
    "ruler_single": "How long is the line, in cm?",
    "ruler_color": "How long is the {color} line, in cm?",
    "compare_angle": "Which angle is {word}, A or B?",
    "compare_line": "Which line is {word}, A or B?",
}

RULER_CM = 6
BARS = ("A", "B", "C")
BAR_MAX = 6


@dataclass(frozen=True)
class Sample:
    """One task instance before rendering. `scene` is hashable and fully determines the image."""

    family: str
    template: str
    question: str  # without the image placeholder
    answer: str
    caption: str
    scene: tuple
    choices: tuple[str, ...] | None = None


# ---------------------------------------------------------------- count
def _sample_count(rng: random.Random) -> Sample:
    color = rng.choice(list(COLORS))
    if rng.random() < 0.5:
        shape, template = rng.choice(SHAPES), "count_color_shape"
        others = [(c, s) for c in COLORS for s in SHAPES if (c, s) != (color, shape)]
        question = TEMPLATES[template].format(color=color, shape=shape)
    else:
        shape, template = None, "count_color"
        others = [(c, s) for c in COLORS for s in SHAPES if c != color]
        question = TEMPLATES[template].format(color=color)
    target = rng.randint(0, 5)
    n_distract = rng.randint(1 if target == 0 else 0, 5 - target)  # at least one object in the image
    kinds = [(color, shape or rng.choice(SHAPES)) for _ in range(target)] + [rng.choice(others) for _ in range(n_distract)]
    cells = rng.sample(range(16), len(kinds))
    objects = tuple(sorted((cell, c, s) for cell, (c, s) in zip(cells, kinds)))
    counts = {(c, s): sum(1 for _, oc, os_ in objects if (oc, os_) == (c, s)) for c in COLORS for s in SHAPES}
    items = [f"{n} {c} {s}{'' if n == 1 else 's'}" for (c, s), n in counts.items() if n]
    caption = "The image shows " + (items[0] if len(items) == 1 else ", ".join(items[:-1]) + " and " + items[-1]) + "."
    return Sample("count", template, question, str(target), caption, objects)


def _render_count(scene: tuple, size: int, draw: ImageDraw.ImageDraw) -> None:
    cell = size / 4
    pad = max(2, round(cell * 0.12))
    for index, color, shape in scene:
        x0, y0 = round((index % 4) * cell) + pad, round((index // 4) * cell) + pad
        x1, y1 = round((index % 4 + 1) * cell) - pad - 1, round((index // 4 + 1) * cell) - pad - 1
        fill = COLORS[color]
        if shape == "circle":
            draw.ellipse((x0, y0, x1, y1), fill=fill)
        elif shape == "square":
            draw.rectangle((x0, y0, x1, y1), fill=fill)
        else:
            draw.polygon([((x0 + x1) / 2, y0), (x0, y1), (x1, y1)], fill=fill)


# ---------------------------------------------------------------- chart
def _sample_chart(rng: random.Random) -> Sample:
    values = tuple(rng.randint(1, BAR_MAX) for _ in BARS)
    colors = tuple(rng.choice(list(COLORS)) for _ in BARS)
    v = dict(zip(BARS, values))
    template = rng.choice(("chart_value", "chart_sum", "chart_range"))
    if template == "chart_value":
        a = rng.choice(BARS)
        question, answer = TEMPLATES[template].format(a=a), v[a]
    elif template == "chart_sum":
        a, b = sorted(rng.sample(BARS, 2))
        question, answer = TEMPLATES[template].format(a=a, b=b), v[a] + v[b]
    else:
        question, answer = TEMPLATES[template], max(values) - min(values)
    caption = "A bar chart with bars " + ", ".join(f"{k}={x}" for k, x in v.items()) + "."
    return Sample("chart", template, question, str(answer), caption, (values, colors))


def chart_geometry(size: int) -> tuple[int, int, float, float]:
    """(left axis x, baseline y, pixels per unit, slot width) of the bar chart at this image size."""
    left = round(size * 0.1)
    base = size - round(size * 0.13)
    unit = (base - round(size * 0.05)) / BAR_MAX
    slot = (size - left) / len(BARS)
    return left, base, unit, slot


def _render_chart(scene: tuple, size: int, draw: ImageDraw.ImageDraw) -> None:
    values, colors = scene
    left, base, unit, slot = chart_geometry(size)
    for k in range(1, BAR_MAX + 1):  # gridlines behind the bars, one per unit
        y = round(base - k * unit)
        draw.line((left - 4, y, size - 1, y), fill=GRID)
    for i, (value, color) in enumerate(zip(values, colors)):
        x0 = round(left + i * slot + slot * 0.18)
        x1 = round(left + (i + 1) * slot - slot * 0.18) - 1
        draw.rectangle((x0, round(base - value * unit), x1, base - 1), fill=COLORS[color])
        _text(draw, ((x0 + x1) / 2, base + 2), BARS[i], size)
    draw.line((left, 0, left, base), fill=BLACK)
    draw.line((left, base, size - 1, base), fill=BLACK)


# ---------------------------------------------------------------- ruler
def _sample_ruler(rng: random.Random) -> Sample:
    n_lines = rng.choice((1, 2))
    colors = rng.sample(list(COLORS), n_lines)
    # A single line sits at any of 25 heights (every 1/8 of a row): with only the 4 rows it had
    # 72 possible images, too few to give the evaluation splits every length.
    rows = [rng.randrange(25) / 8] if n_lines == 1 else sorted(rng.sample(range(4), n_lines))
    lines = tuple((c, row, rng.randint(1, RULER_CM)) for c, row in zip(colors, rows))
    if n_lines == 1:
        template, asked = "ruler_single", lines[0]
        question = TEMPLATES[template]
    else:
        template, asked = "ruler_color", rng.choice(lines)
        question = TEMPLATES[template].format(color=asked[0])
    caption = f"A ruler from 0 to {RULER_CM} cm with " + " and ".join(f"a {c} line from 0 cm to {n} cm" for c, _, n in lines) + "."
    return Sample("ruler", template, question, str(asked[2]), caption, lines)


def ruler_geometry(size: int) -> tuple[int, float, int]:
    """(x of the 0 cm mark, pixels per cm, y of the ruler's edge) at this image size."""
    x0 = round(size * 0.1)
    return x0, (size - 2 * x0) / RULER_CM, round(size * 0.72)


def _render_ruler(scene: tuple, size: int, draw: ImageDraw.ImageDraw) -> None:
    x0, per_cm, edge = ruler_geometry(size)
    thick = max(3, size // 28)
    draw.line((x0 - 2, edge, round(x0 + RULER_CM * per_cm) + 2, edge), fill=BLACK)
    for k in range(RULER_CM + 1):
        x = round(x0 + k * per_cm)
        draw.line((x, edge, x, edge + max(4, size // 18)), fill=BLACK)
        _text(draw, (x, edge + max(5, size // 16)), str(k), size)
    for color, row, length in scene:
        y = round(size * (0.14 + 0.15 * row))
        draw.rectangle((round(x0), y, round(x0 + length * per_cm), y + thick - 1), fill=COLORS[color])


# ---------------------------------------------------------------- compare
ANGLES = tuple(range(20, 161, 10))


def _sample_compare(rng: random.Random) -> Sample:
    kind = rng.choice(("angle", "line"))
    colors = (rng.choice(list(COLORS)), rng.choice(list(COLORS)))
    if kind == "angle":
        while True:
            a, b = rng.choice(ANGLES), rng.choice(ANGLES)
            if abs(a - b) >= 40:  # clearly visible at 112 pixels
                break
        # the first ray is horizontal (pointing right, or left with the angle opening downwards),
        # so the size of the angle shows in where the second ray points: easy for a tiny model
        turns = (rng.choice((0, 180)), rng.choice((0, 180)))
        word = rng.choice(("larger", "smaller"))
        scene = ("angle", (a, b), turns, colors)
        caption = f"Two angles: angle A (left) is {a} degrees and angle B (right) is {b} degrees."
    else:
        while True:
            a, b = rng.randint(2, 9), rng.randint(2, 9)
            if abs(a - b) >= 2:
                break
        starts = (rng.randint(1, 10 - a), rng.randint(1, 10 - b))
        word = rng.choice(("longer", "shorter"))
        scene = ("line", (a, b), starts, colors)
        caption = f"Two lines: line A (top) is {a} units long and line B (bottom) is {b} units long."
    bigger = "A" if a > b else "B"
    answer = bigger if word in ("larger", "longer") else ("B" if bigger == "A" else "A")
    template = f"compare_{kind}"
    return Sample("compare", template, TEMPLATES[template].format(word=word), answer, caption, scene, ("A", "B"))


def _render_compare(scene: tuple, size: int, draw: ImageDraw.ImageDraw) -> None:
    kind, values, placement, colors = scene
    thick = max(3, size // 28)
    if kind == "angle":
        radius = size * 0.2
        for i, (angle, turn, color) in enumerate(zip(values, placement, colors)):
            vx, vy = size * (0.25 + 0.5 * i), size * 0.55
            for direction in (turn, turn + angle):
                rad = math.radians(direction)
                draw.line((vx, vy, vx + radius * math.cos(rad), vy - radius * math.sin(rad)), fill=COLORS[color], width=thick)
            dot = max(2, size // 40)
            draw.ellipse((vx - dot, vy - dot, vx + dot, vy + dot), fill=BLACK)  # the vertex
            _text(draw, (size * (0.06 + 0.5 * i), size * 0.04), "AB"[i], size)
    else:
        unit = size / 10
        for i, (length, start, color) in enumerate(zip(values, placement, colors)):
            y = round(size * (0.3 + 0.4 * i))
            draw.rectangle((round(start * unit), y, round((start + length) * unit) - 1, y + thick - 1), fill=COLORS[color])
            _text(draw, (unit * 0.45, y - size * 0.02), "AB"[i], size)


def _text(draw: ImageDraw.ImageDraw, center_top: tuple[float, float], text: str, size: int) -> None:
    """Draw a label without anti-aliasing (flat colour), horizontally centred."""
    font = _font(max(8, size // 11))
    width = draw.textlength(text, font=font)
    draw.text((center_top[0] - width / 2, center_top[1]), text, fill=LABEL, font=font)


_FONTS: dict[int, ImageFont.ImageFont | ImageFont.FreeTypeFont] = {}


def _font(px: int):
    if px not in _FONTS:
        _FONTS[px] = ImageFont.load_default(size=px)
    return _FONTS[px]


_SAMPLERS: dict[str, tuple[Callable[[random.Random], Sample], Callable]] = {
    "count": (_sample_count, _render_count),
    "chart": (_sample_chart, _render_chart),
    "ruler": (_sample_ruler, _render_ruler),
    "compare": (_sample_compare, _render_compare),
}


# ---------------------------------------------------------------- public API
def scene_split(sample: Sample) -> str:
    """The split a scene belongs to: a hash of the scene, so the splits never share an image."""
    digest = hashlib.sha256(repr((sample.family, sample.scene)).encode()).digest()
    u = int.from_bytes(digest[:8], "big") / 2**64
    return next(name for name, (lo, hi) in SPLITS.items() if lo <= u < hi)


# Every answer each template can have (what the samplers above draw from).
TEMPLATE_ANSWERS: dict[str, tuple[str, ...]] = {
    "count_color_shape": tuple(str(n) for n in range(6)),
    "count_color": tuple(str(n) for n in range(6)),
    "chart_value": tuple(str(n) for n in range(1, BAR_MAX + 1)),
    "chart_sum": tuple(str(n) for n in range(2, 2 * BAR_MAX + 1)),
    "chart_range": tuple(str(n) for n in range(BAR_MAX)),
    "ruler_single": tuple(str(n) for n in range(1, RULER_CM + 1)),
    "ruler_color": tuple(str(n) for n in range(1, RULER_CM + 1)),
    "compare_angle": ("A", "B"),
    "compare_line": ("A", "B"),
}
FAMILY_TEMPLATES: dict[str, list[str]] = {f: [t for t in TEMPLATES if t.startswith(f + "_")] for f in FAMILIES}
EVAL_SPLITS = ("val", "test")


def eval_target(family: str, slot: int) -> tuple[str, str]:
    """The (template, answer) that row `slot` of an evaluation split of `family` asks: templates in
    turn, and each template's answers in turn, so any prefix is close to balanced on both."""
    templates = FAMILY_TEMPLATES[family]
    template = templates[slot % len(templates)]
    answers = TEMPLATE_ANSWERS[template]
    return template, answers[(slot // len(templates)) % len(answers)]


def sample(index: int, *, seed: int, split: str, family: str, target: tuple[str, str] | None = None) -> Sample:
    """Sample `index` of (seed, split) for a family, redrawn until its scene belongs to `split`
    (and, with `target`, until its (template, answer) is that pair)."""
    if family not in _SAMPLERS:
        raise ValueError(f"unknown synthetic family {family!r}; known: {', '.join(FAMILIES)}")
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; known: {', '.join(SPLITS)}")
    if target is not None and (target[0] not in FAMILY_TEMPLATES[family] or target[1] not in TEMPLATE_ANSWERS[target[0]]):
        raise ValueError(f"{family} has no (template, answer) {target}")
    rng = random.Random(f"ovlt-synthetic/{seed}/{split}/{index}")
    sampler = _SAMPLERS[family][0]
    while True:
        s = sampler(rng)
        if scene_split(s) == split and (target is None or (s.template, s.answer) == target):
            return s


def render(s: Sample, image_size: int = 112) -> bytes:
    """The sample's image as PNG bytes (RGB, image_size x image_size)."""
    if image_size < MIN_IMAGE_SIZE:
        raise ValueError(f"image_size must be at least {MIN_IMAGE_SIZE}, got {image_size}")
    image = Image.new("RGB", (image_size, image_size), WHITE)
    draw = ImageDraw.Draw(image)
    draw.fontmode = "1"  # no anti-aliasing: every pixel has one of the palette's colours
    _SAMPLERS[s.family][1](s.scene, image_size, draw)
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return buf.getvalue()


def _families(families: list[str] | None) -> list[str]:
    chosen = list(families) if families else list(FAMILIES)
    unknown = [f for f in chosen if f not in _SAMPLERS]
    if unknown:
        raise ValueError(f"unknown synthetic families {unknown}; known: {', '.join(FAMILIES)}")
    return chosen


def _row(index: int, *, seed: int, split: str, family: str, image_size: int, target: tuple[str, str] | None) -> dict:
    s = sample(index, seed=seed, split=split, family=family, target=target)
    extra = {
        "index": index,
        "split": split,
        "family": family,
        "template": s.template,
        "caption": s.caption,
        "question": s.question,
    }
    if s.choices is not None:
        extra["choices"] = list(s.choices)
    return make_row(
        data_source=f"synthetic/{family}",
        question=IMAGE_PLACEHOLDER + s.question,
        ground_truth=s.answer,
        images=[render(s, image_size)],
        extra_info=extra,
    )


def generate(
    n: int,
    *,
    seed: int = 0,
    families: list[str] | None = None,
    image_size: int = 112,
    split: str = "train",
    progress: Callable[[], None] | None = None,
) -> list[dict]:
    """n schema rows, families in turn (balanced), deterministic for (seed, split); the evaluation
    splits are also balanced over each family's (template, answer) pairs."""
    if n < 0:
        raise ValueError(f"n must be >= 0, got {n}")
    chosen = _families(families)
    rows = []
    for i in range(n):
        family = chosen[i % len(chosen)]
        # an evaluation row's position among its family's rows picks its (template, answer)
        target = eval_target(family, i // len(chosen)) if split in EVAL_SPLITS else None
        rows.append(_row(i, seed=seed, split=split, family=family, image_size=image_size, target=target))
        if progress is not None:
            progress()
    return rows


def write_synthetic(
    out_dir: str | Path,
    *,
    n_train: int = 2000,
    n_val: int = 200,
    n_test: int = 200,
    seed: int = 0,
    image_size: int = 112,
    families: list[str] | None = None,
) -> dict[str, Path]:
    """Write train/val/test.parquet under out_dir (progress bar on stderr); returns split -> path."""
    from tqdm import tqdm

    out_dir = Path(out_dir)
    sizes = {"train": n_train, "val": n_val, "test": n_test}
    paths = {}
    with tqdm(total=sum(sizes.values()), desc="synthetic", unit="row") as bar:
        for split, n in sizes.items():
            rows = generate(n, seed=seed, families=families, image_size=image_size, split=split, progress=bar.update)
            paths[split] = write_rows(rows, out_dir / f"{split}.parquet")
    return paths


def text_corpus(n: int = 2000, seed: int = 0) -> list[str]:
    """Text for training the tiny model's tokenizer: everything the model will read or write.

    From n samples (families in turn): questions (bare and with the prompt suffix), captions,
    answers and reasoner responses (correct, wrong, reflective and, rarely, over-long), plus the
    prompt suffix, the reflection phrases and the reflection sentences.
    """
    reasoner = ProgrammaticReasoner(seed=seed, wrong_rate=0.25, reflect_rate=0.3, verbose_rate=0.02)
    texts = [PROMPT_SUFFIX, *DEFAULT_REFLECTION_PHRASES]
    for subject in ("count", "bar values", "line ends", "comparison"):
        texts += reflection_sentences(DEFAULT_REFLECTION_PHRASES, subject)
    for i in range(n):
        family = FAMILIES[i % len(FAMILIES)]
        s = sample(i, seed=seed, split="train", family=family)
        texts += [s.question, f"{s.question}\n{PROMPT_SUFFIX}", s.caption, s.answer]
        texts += reasoner.answer(s.caption, s.question, family, k=1)
    return texts


def write_tiny_corpus() -> Path:
    """Rewrite the tiny model's shipped tokenizer corpus (ovlt_rl/models/tiny_corpus.json.gz) from
    `text_corpus(seed=0)`; byte-identical for the same text (no timestamp in the gzip header)."""
    import gzip
    import json

    from ovlt_rl.models.tiny import CORPUS_FILE

    text = json.dumps(text_corpus(seed=0), ensure_ascii=False, indent=0)
    CORPUS_FILE.write_bytes(gzip.compress(text.encode(), mtime=0))
    return CORPUS_FILE
