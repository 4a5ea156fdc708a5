"""The built-in visual dataset: coloured shapes on light backgrounds, drawn here, seeded, no download.

A `Scene` says what a picture holds: `count` (1-4) objects of one `shape` and `colour` (the
target), all of one `size`, on a light `background` drawn in a `style`, plus up to
`MAX_DISTRACTORS` distractors, each a (colour, shape) pair other than the target's and other
than each other's. `layout(scene, seed)` places the objects (rejection sampling: bounding
circles never overlap, never leave the picture); `render(scene, seed)` draws them on a
224x224 RGB image (the EfficientNet input), at twice the size and box-filtered down, so edges
are anti-aliased.

Positions: the picture is cut into a 3x3 grid of equal cells; a scene with one target may
have a `position`: the cell holding the object's centre, "left"/"right" (middle row, outer
columns), "top"/"bottom" (middle column, outer rows) or "center". The centre is drawn at
least `POSITION_MARGIN` px inside its cell, so the answer never sits on a boundary; corners
are never used. A scene with several targets has no position.

Distractors are what makes a question need the picture's details, never a second answer:
colour questions name the shape ("What colour is the circle?"), so their distractors have
other shapes; shape and position questions name the colour, so theirs have other colours;
count questions name both ("How many red circles are there?"), so a distractor may share
one of them (a red square, a blue circle) but never both. Captions list every object
("A photo of three large red circles and one blue star on a white background.").

`generate(n, seed, caption_ratio, held_out, out_dir=)` makes `Example`s of five kinds
(`KINDS`): captions and the four VQA skills, in the caption : VQA ratio the caller sets, the
skills in equal shares. Each example has its own picture, written as a PNG named by its
SHA-256 (`mmchat.files.store_atomic`) into `out_dir`, and no `<image>` marker in its question
(the picture goes before the text, as chat places it). Training never draws the colour-shape
pairs in `HELD_OUT_PAIRS`, neither as target nor as distractor, nor the question templates
kept for evaluation; the held-out split (`held_out=True`, its own seed stream) takes a
held-out pair as target for `HELD_OUT_PAIR_SHARE` of its examples and a held-out template
for `HELD_OUT_TEMPLATE_SHARE` of them (`Example.extra` says which), so its exact match shows
generalisation, not memory. `score_by_skill` is exact match per kind.

It does not train, load models or import torch; it writes nothing outside `out_dir`.
"""

from __future__ import annotations

import hashlib
import io
import math
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
from PIL import Image, ImageDraw

from mmchat.errors import UserFacingError
from mmchat.files import store_atomic
from mmchat.training.examples import Example

__all__ = [
    "BACKGROUNDS", "COLOURS", "HELD_OUT_PAIRS", "IMAGE_SIZE", "KINDS", "POSITIONS", "SHAPES", "SIZES", "STYLES",
    "TEMPLATES", "TRAIN_PAIRS", "VQA_KINDS", "Placed", "Scene", "generate", "kind_plan", "layout", "position_of",
    "question", "render", "sample_scene", "score_by_skill",
]

IMAGE_SIZE = 224  # EfficientNet-Lite0's input
_SCALE = 2  # drawn at twice the size, then box-filtered: anti-aliased edges

SHAPES = ("circle", "square", "triangle", "star")
# Far apart in RGB (the closest pair, red-orange, ~95 apart); each object is jittered by up
# to COLOUR_JITTER per channel so a model cannot learn one exact value.
COLOURS = {
    "red": (220, 40, 40),
    "green": (40, 160, 60),
    "blue": (40, 80, 220),
    "yellow": (240, 200, 30),
    "purple": (140, 60, 180),
    "orange": (245, 130, 30),
}
COLOUR_JITTER = 10
# Light colours, each over 100 (RGB distance) from every shape colour, gradients and noise included.
BACKGROUNDS = {
    "white": (250, 250, 250),
    "light grey": (218, 218, 218),
    "light blue": (205, 225, 245),
    "pale green": (212, 238, 212),
    "pale pink": (248, 218, 228),
    "cream": (245, 238, 215),
}
STYLES = ("plain", "gradient", "noise")  # a flat fill, a linear gradient, speckle + soft blotches
SIZES = {"small": (12, 16), "large": (24, 30)}  # bounding-circle radius range in px (of 224)
POSITIONS = ("left", "right", "top", "bottom", "center")
_CELLS = {"left": (0, 1), "right": (2, 1), "top": (1, 0), "bottom": (1, 2), "center": (1, 1)}  # (column, row)
POSITION_MARGIN = 10  # px a positioned centre keeps from its cell's edges
MAX_COUNT = 4
MAX_DISTRACTORS = 2
_GAP = 4  # px between two objects' bounding circles

# Never drawn in training (target or distractor); the held-out split uses them as targets.
HELD_OUT_PAIRS = (("blue", "triangle"), ("yellow", "circle"))
TRAIN_PAIRS = tuple((c, s) for c in COLOURS for s in SHAPES if (c, s) not in HELD_OUT_PAIRS)
HELD_OUT_PAIR_SHARE = 0.5  # of held-out examples whose target is a held-out pair
HELD_OUT_TEMPLATE_SHARE = 0.5  # of held-out examples asked with an evaluation-only template

VQA_KINDS = ("colour", "shape", "count", "position")
KINDS = VQA_KINDS + ("caption",)
NUMBER_WORDS = ("zero", "one", "two", "three", "four")
_POSITION_PHRASES = {"left": "on the left", "right": "on the right", "top": "at the top",
                     "bottom": "at the bottom", "center": "in the center"}

# (training templates, evaluation-only templates) per kind. Fields: {be} is/are, {obj} the
# shape named in the number of the targets, {colour}, {shape}, {shapes}, {thing} object(s).
TEMPLATES = {
    "colour": (("What colour {be} the {obj}?", "What color {be} the {obj}?", "Which colour {be} the {obj}?",
                "Tell me the colour of the {obj}."),
               ("What is the colour of the {obj}?", "Name the colour of the {obj}.")),
    "shape": (("What shape {be} the {colour} {thing}?", "Which shape {be} the {colour} {thing}?",
               "What is the shape of the {colour} {thing}?"),
              ("Name the shape of the {colour} {thing}.", "What kind of shape {be} the {colour} {thing}?")),
    "count": (("How many {colour} {shapes} are there?", "How many {colour} {shapes} do you see?",
               "Count the {colour} {shapes}.", "What is the number of {colour} {shapes}?"),
              ("How many {colour} {shapes} are in the picture?", "How many {colour} {shapes} can you count?")),
    "position": (("Where is the {colour} {shape}?", "Where is the {colour} {shape} in the image?",
                  "In which part of the image is the {colour} {shape}?"),
                 ("Where in the picture is the {colour} {shape}?",
                  "Which part of the picture is the {colour} {shape} in?")),
    "caption": (("Describe the image.", "Write a caption for this picture.", "Describe the picture in one sentence."),
                ("Caption this image.", "What does this picture show? Answer in one sentence.")),
}
# Other right answers to a canonical one, for scoring only ("centre" is as right as "center").
ANSWER_ALIASES = {"center": ("centre", "middle"), **{s: (s + "s",) for s in SHAPES}}
MAX_EXAMPLES = 100_000


def _accepted(name: str, value: object, accepted: Sequence[object]) -> UserFacingError:
    return UserFacingError(f"shapes scene: {name} {value!r} is not valid; accepted: "
                           + ", ".join(repr(a) for a in accepted))


@dataclass(frozen=True)
class Scene:
    shape: str
    colour: str
    count: int = 1
    position: str = ""  # a cell of POSITIONS, only with count 1; "" = anywhere
    size: str = "large"  # of the targets; distractors take either size
    background: str = "white"
    style: str = "plain"
    distractors: tuple[tuple[str, str], ...] = ()  # (colour, shape), each other than the target and each other

    def __post_init__(self) -> None:
        if self.shape not in SHAPES:
            raise _accepted("shape", self.shape, SHAPES)
        if self.colour not in COLOURS:
            raise _accepted("colour", self.colour, tuple(COLOURS))
        if not isinstance(self.count, int) or not 1 <= self.count <= MAX_COUNT:
            raise _accepted("count", self.count, range(1, MAX_COUNT + 1))
        if self.position and self.position not in POSITIONS:
            raise _accepted("position", self.position, ("",) + POSITIONS)
        if self.position and self.count != 1:
            raise UserFacingError(f"shapes scene: position {self.position!r} with count {self.count}; accepted: a "
                                  "position only for a single object (count 1)")
        if self.size not in SIZES:
            raise _accepted("size", self.size, tuple(SIZES))
        if self.background not in BACKGROUNDS:
            raise _accepted("background", self.background, tuple(BACKGROUNDS))
        if self.style not in STYLES:
            raise _accepted("style", self.style, STYLES)
        if len(self.distractors) > MAX_DISTRACTORS:
            raise UserFacingError(f"shapes scene: {len(self.distractors)} distractors; accepted: 0 to "
                                  f"{MAX_DISTRACTORS}")
        for pair in self.distractors:
            if not (isinstance(pair, tuple) and len(pair) == 2 and pair[0] in COLOURS and pair[1] in SHAPES):
                raise _accepted("distractor", pair, ["(colour, shape)"])
            if pair == (self.colour, self.shape):
                raise UserFacingError(f"shapes scene: distractor {pair!r} is the target itself; accepted: a colour "
                                      "or shape other than the target's")
        if len(set(self.distractors)) != len(self.distractors):
            raise UserFacingError(f"shapes scene: distractors {self.distractors!r} repeat a pair; accepted: "
                                  "different pairs")

    @property
    def pairs(self) -> tuple[tuple[str, str], ...]:
        """Every (colour, shape) drawn: the target's, then the distractors'."""
        return ((self.colour, self.shape),) + self.distractors

    def caption(self) -> str:
        """The one-sentence caption, a fixed template with number words."""
        target = f"{NUMBER_WORDS[self.count]} {self.size} {self.colour} {_plural(self.shape, self.count)}"
        if self.position:
            target += f" {_POSITION_PHRASES[self.position]}"
        items = [target] + [f"one {colour} {shape}" for colour, shape in self.distractors]
        listed = items[0] if len(items) == 1 else ", ".join(items[:-1]) + f" and {items[-1]}"
        return f"A photo of {listed} on a {self.background} background."


def _plural(word: str, count: int) -> str:
    return word if count == 1 else word + "s"


@dataclass(frozen=True)
class Placed:
    """One object as drawn: centre (x, y) and bounding radius r in px of the 224 image."""

    colour: str
    shape: str
    x: float
    y: float
    r: float
    angle: float  # degrees
    rgb: tuple[int, int, int]  # the jittered colour it is filled with
    target: bool


def layout(scene: Scene, seed: int) -> tuple[Placed, ...]:
    """Where `render(scene, seed)` draws each object, targets first: non-overlapping bounding
    circles inside the picture, a positioned target's centre inside its cell."""
    rng = random.Random(_seed_int("layout", seed))
    objects = [(scene.colour, scene.shape, scene.size, True)] * scene.count
    objects += [(colour, shape, rng.choice(tuple(SIZES)), False) for colour, shape in scene.distractors]
    for _ in range(200):  # restarts: measured, 1 in ~4000 sampled scenes needs one, 1 in ~60 of the most crowded
        placed: list[Placed] = []
        for colour, shape, size, target in objects:
            r = rng.uniform(*SIZES[size])
            spot = _free_spot(rng, r, placed, scene.position if target else "")
            if spot is None:
                break
            jitter = [rng.randint(-COLOUR_JITTER, COLOUR_JITTER) for _ in range(3)]
            rgb = tuple(max(0, min(255, c + j)) for c, j in zip(COLOURS[colour], jitter))
            angle = rng.uniform(0, 72) if shape == "star" else rng.uniform(-20, 20)
            placed.append(Placed(colour, shape, spot[0], spot[1], r, angle, rgb, target))  # type: ignore[arg-type]
        else:
            return tuple(placed)
    raise AssertionError(f"no layout found for {scene!r}")  # the sizes above always fit; a bug if reached


def _free_spot(rng: random.Random, r: float, placed: Sequence[Placed], position: str) -> tuple[float, float] | None:
    low, high = r + 2, IMAGE_SIZE - r - 2
    xs, ys = (low, high), (low, high)
    if position:
        cell = IMAGE_SIZE / 3
        column, row = _CELLS[position]
        xs = (max(low, column * cell + POSITION_MARGIN), min(high, (column + 1) * cell - POSITION_MARGIN))
        ys = (max(low, row * cell + POSITION_MARGIN), min(high, (row + 1) * cell - POSITION_MARGIN))
    for _ in range(100):
        x, y = rng.uniform(*xs), rng.uniform(*ys)
        if all(math.hypot(x - p.x, y - p.y) >= r + p.r + _GAP for p in placed):
            return x, y
    return None


def position_of(x: float, y: float) -> str:
    """The POSITIONS cell holding the point (x, y), or "" for a corner cell."""
    cell = IMAGE_SIZE / 3
    column, row = min(2, int(x // cell)), min(2, int(y // cell))
    return next((name for name, where in _CELLS.items() if where == (column, row)), "")


def render(scene: Scene, seed: int) -> Image.Image:
    """The scene as a 224x224 RGB image; the same (scene, seed) always gives the same pixels."""
    noise = np.random.default_rng(_seed_int("background", seed))
    background = _background(scene, noise)
    big = Image.fromarray(np.repeat(np.repeat(background, _SCALE, axis=0), _SCALE, axis=1), "RGB")
    draw = ImageDraw.Draw(big)
    for obj in layout(scene, seed):
        _draw(draw, obj)
    return big.resize((IMAGE_SIZE, IMAGE_SIZE), Image.Resampling.BOX)


def _background(scene: Scene, rng: np.random.Generator) -> np.ndarray:
    base = np.array(BACKGROUNDS[scene.background], dtype=np.float32)
    pixels = np.broadcast_to(base, (IMAGE_SIZE, IMAGE_SIZE, 3)).astype(np.float32)
    if scene.style == "gradient":
        # Towards white or a slightly darker shade of the same colour, along a random direction
        # (white itself only darker: a gradient towards white would not show).
        lighter = rng.random() < 0.5 and float((255 - base).max()) >= 30
        other = base + (255 - base) * 0.6 if lighter else base * 0.88
        angle = rng.uniform(0, 2 * math.pi)
        grid = np.linspace(-0.5, 0.5, IMAGE_SIZE, dtype=np.float32)
        t = grid[None, :] * math.cos(angle) + grid[:, None] * math.sin(angle)
        t = (t - t.min()) / (t.max() - t.min())
        pixels = base + t[..., None] * (other - base)
    elif scene.style == "noise":
        blotches = rng.normal(0, 8, (8, 8, 1)).astype(np.float32)
        soft = np.asarray(Image.fromarray(blotches[..., 0]).resize((IMAGE_SIZE, IMAGE_SIZE), Image.Resampling.BICUBIC))
        pixels = pixels + soft[..., None] + rng.normal(0, 5, (IMAGE_SIZE, IMAGE_SIZE, 3)).astype(np.float32)
    return np.clip(pixels, 0, 255).round().astype(np.uint8)


def _draw(draw: ImageDraw.ImageDraw, obj: Placed) -> None:
    x, y, r = obj.x * _SCALE, obj.y * _SCALE, obj.r * _SCALE
    if obj.shape == "circle":
        draw.ellipse((x - 0.92 * r, y - 0.92 * r, x + 0.92 * r, y + 0.92 * r), fill=obj.rgb)
        return
    if obj.shape == "square":
        radii, start, corners = [r], 45.0, 4
    elif obj.shape == "triangle":
        radii, start, corners = [r], -90.0, 3  # pointing up; its centroid is the centre
    else:
        radii, start, corners = [r, 0.45 * r], -90.0, 10
    points = []
    for k in range(corners):
        a = math.radians(start + obj.angle + k * 360 / corners)
        radius = radii[k % len(radii)]
        points.append((x + radius * math.cos(a), y + radius * math.sin(a)))
    draw.polygon(points, fill=obj.rgb)


def _seed_int(*parts: object) -> int:
    return int.from_bytes(hashlib.sha256(":".join(str(p) for p in ("shapes",) + parts).encode()).digest()[:8], "big")


def sample_scene(kind: str, rng: random.Random, held_out: bool = False,
                 max_distractors: int = MAX_DISTRACTORS) -> tuple[Scene, bool]:
    """A scene for a question of `kind` and whether its target is a held-out pair. Training
    (`held_out=False`) draws only `TRAIN_PAIRS`, distractors included (0..`max_distractors`)."""
    if kind not in KINDS:
        raise UserFacingError(f"shapes: kind {kind!r} is not valid; accepted: {', '.join(KINDS)}")
    novel = held_out and rng.random() < HELD_OUT_PAIR_SHARE
    colour, shape = rng.choice(HELD_OUT_PAIRS if novel else TRAIN_PAIRS)
    count = 1 if kind == "position" else rng.randint(1, MAX_COUNT)
    position = rng.choice(POSITIONS) if count == 1 else ""
    pool = [(c, s) for c, s in (TRAIN_PAIRS + (HELD_OUT_PAIRS if held_out else ())) if (c, s) != (colour, shape)]
    if kind == "colour":  # the question names the shape
        pool = [(c, s) for c, s in pool if s != shape]
    elif kind in ("shape", "position"):  # the question names the colour
        pool = [(c, s) for c, s in pool if c != colour]
    distractors = tuple(rng.sample(pool, rng.randint(0, max_distractors)))
    scene = Scene(shape, colour, count, position, rng.choice(tuple(SIZES)), rng.choice(tuple(BACKGROUNDS)),
                  rng.choice(STYLES), distractors)
    return scene, novel


def question(kind: str, scene: Scene, template: str) -> tuple[str, str]:
    """(question, canonical answer) for `scene` asked with `template` (one of TEMPLATES[kind])."""
    text = template.format(be="is" if scene.count == 1 else "are", obj=_plural(scene.shape, scene.count),
                           colour=scene.colour, shape=scene.shape, shapes=_plural(scene.shape, 2),
                           thing=_plural("object", scene.count))
    if kind == "caption":
        return text, scene.caption()
    return text, {"colour": scene.colour, "shape": scene.shape, "count": str(scene.count),
                  "position": scene.position}[kind]


def _check_ratio(caption_ratio: object) -> tuple[int, int]:
    ok = (isinstance(caption_ratio, (tuple, list)) and len(caption_ratio) == 2
          and all(isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in caption_ratio)
          and sum(caption_ratio) > 0)
    if not ok:
        raise UserFacingError(f"shapes: caption : VQA ratio {caption_ratio!r} is not valid; accepted: two whole "
                              "numbers >= 0, not both 0, like (1, 2); (0, 1) for no captions")
    return int(caption_ratio[0]), int(caption_ratio[1])  # type: ignore[index]


def kind_plan(n: int, caption_ratio: tuple[int, int]) -> list[str]:
    """The kinds of `n` examples before shuffling: round(n * c / (c + v)) captions, the rest
    the VQA skills in turn (equal shares, the first ones one more when n does not divide)."""
    c, v = _check_ratio(caption_ratio)
    captions = round(n * c / (c + v))
    return ["caption"] * captions + [VQA_KINDS[i % len(VQA_KINDS)] for i in range(n - captions)]


def generate(n: int, seed: int = 0, caption_ratio: tuple[int, int] = (1, 2), held_out: bool = False, *,
             out_dir: Path, max_distractors: int = MAX_DISTRACTORS) -> list[Example]:
    """`n` examples, each with its own picture written to `out_dir/<sha256>.png`.

    The kinds follow `kind_plan`, shuffled by `seed`; the same arguments always give the same
    examples and files. `held_out=True` is the evaluation split (see the module docstring).
    `Example.extra` holds "scene", "seed" (`render(scene, seed)` redraws the picture),
    "held_out_pair" and "held_out_template".
    """
    if not isinstance(n, int) or isinstance(n, bool) or not 1 <= n <= MAX_EXAMPLES:
        raise UserFacingError(f"shapes: n {n!r} is not valid; accepted: a whole number from 1 to {MAX_EXAMPLES}")
    if max_distractors not in range(MAX_DISTRACTORS + 1):
        raise UserFacingError(f"shapes: max_distractors {max_distractors!r} is not valid; accepted: 0..{MAX_DISTRACTORS}")
    split = "held-out" if held_out else "train"
    kinds = kind_plan(n, caption_ratio)
    random.Random(_seed_int(split, seed, "order")).shuffle(kinds)
    out_dir = Path(out_dir)
    examples = []
    for index, kind in enumerate(kinds):
        image_seed = _seed_int(split, seed, index)
        rng = random.Random(image_seed)
        scene, novel = sample_scene(kind, rng, held_out, max_distractors)
        train_templates, eval_templates = TEMPLATES[kind]
        new_template = held_out and rng.random() < HELD_OUT_TEMPLATE_SHARE
        text, answer = question(kind, scene, rng.choice(eval_templates if new_template else train_templates))
        buffer = io.BytesIO()
        render(scene, image_seed).save(buffer, "PNG")
        data = buffer.getvalue()
        path = store_atomic(data, hashlib.sha256(data).hexdigest(), ".png", out_dir, f"shapes image {index + 1}")
        examples.append(Example(text, answer, kind=kind, expected=answer, images=(str(path),),
                                extra={"scene": scene, "seed": image_seed, "held_out_pair": novel,
                                       "held_out_template": new_template}))
    return examples


def score_by_skill(examples: Sequence[Example], replies: Sequence[str]) -> dict[str, float]:
    """Exact match (VQA-normalised: case, punctuation, articles, "three" = "3") of each reply
    against its example's `expected` (or an `ANSWER_ALIASES` of it), averaged per kind, plus
    "vqa" (every non-caption example) and "all", each present only when it has examples."""
    from mmchat.training.metrics import exact_match

    if len(examples) != len(replies):
        raise UserFacingError(f"shapes: {len(examples)} examples but {len(replies)} replies; accepted: one reply "
                              "per example")
    scores: dict[str, list[float]] = {}
    for example, reply in zip(examples, replies):
        expected = example.expected or example.answer
        score = exact_match(reply, [expected, *ANSWER_ALIASES.get(expected, ())])
        kind = example.kind or "other"
        for key in (kind, "vqa", "all") if kind != "caption" else (kind, "all"):
            scores.setdefault(key, []).append(score)
    return {key: sum(values) / len(values) for key, values in scores.items()}
