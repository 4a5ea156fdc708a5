"""The built-in shapes dataset: seeded files and examples, held-out pairs kept out of training,
answers that agree with the scene and with the pixels, the caption : VQA ratio, scoring.

Real parts: real PNG files in a temp folder, read back with Pillow and with the chat's own
upload check (`ingest_upload`); pixels are read from the rendered images, never from the
layout alone (the layout says where to look, the pixels say what is there).
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import hashlib  # noqa: E402
import random  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
from collections import Counter  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
import pytest  # noqa: E402
from PIL import Image  # noqa: E402

from mmchat.attachments import ingest_upload  # noqa: E402
from mmchat.config import UploadLimits  # noqa: E402
from mmchat.errors import UserFacingError  # noqa: E402
from mmchat.training import shapes  # noqa: E402
from mmchat.training.datasets import is_caption, mix  # noqa: E402
from mmchat.training.examples import IMAGE_MARKER, Example  # noqa: E402
from mmchat.training.shapes import (  # noqa: E402
    BACKGROUNDS,
    COLOURS,
    HELD_OUT_PAIRS,
    IMAGE_SIZE,
    KINDS,
    Scene,
    generate,
    layout,
    render,
    sample_scene,
    score_by_skill,
)

CELL = IMAGE_SIZE / 3
AREA_AT_20PX = {"circle": np.pi * (0.92 * 20) ** 2, "square": 2 * 20**2, "triangle": 3**1.5 / 4 * 20**2,
                "star": 5 * 0.45 * np.sin(np.radians(36)) * 20**2}


def _nearest_colour(rgb) -> tuple[str, float]:
    distances = {name: float(np.linalg.norm(np.asarray(rgb, float) - value)) for name, value in COLOURS.items()}
    name = min(distances, key=distances.get)
    return name, distances[name]


def _pixels(path) -> np.ndarray:
    return np.asarray(Image.open(path).convert("RGB"), dtype=np.float32)


def _colour_mask(pixels: np.ndarray, colour: str, within: float = 60.0) -> np.ndarray:
    return np.linalg.norm(pixels - np.asarray(COLOURS[colour], np.float32), axis=-1) < within


def _cell_of(x: float, y: float) -> str:
    """Independent of shapes.position_of: which named cell of the 3x3 grid holds (x, y)."""
    names = {(0, 1): "left", (2, 1): "right", (1, 0): "top", (1, 2): "bottom", (1, 1): "center"}
    return names.get((int(x // CELL), int(y // CELL)), "corner")


@pytest.fixture(scope="module")
def train_set(tmp_path_factory):
    out = tmp_path_factory.mktemp("shapes-train") / "images"
    return out, generate(120, seed=7, out_dir=out)


@pytest.fixture(scope="module")
def held_out_set(tmp_path_factory):
    out = tmp_path_factory.mktemp("shapes-held-out") / "images"
    return out, generate(120, seed=7, held_out=True, out_dir=out)


def test_same_seed_same_files_and_examples_other_seed_differs(tmp_path, train_set):
    _, first = train_set
    again = generate(120, seed=7, out_dir=tmp_path / "again")
    assert [e.to_json() | {"images": [Path(p).name for p in e.images]} for e in again] == \
           [e.to_json() | {"images": [Path(p).name for p in e.images]} for e in first]
    assert all(Path(a.images[0]).read_bytes() == Path(b.images[0]).read_bytes() for a, b in zip(first, again))
    other = generate(120, seed=8, out_dir=tmp_path / "other")
    assert len({Path(e.images[0]).name for e in other} & {Path(e.images[0]).name for e in first}) < 5
    assert [e.question for e in other] != [e.question for e in first]
    # The held-out split is its own stream: same seed, other pictures.
    held = generate(20, seed=7, held_out=True, out_dir=tmp_path / "held")
    assert not {Path(e.images[0]).name for e in held} & {Path(e.images[0]).name for e in first}


def test_images_are_224_rgb_pngs_named_by_hash_and_nothing_is_written_elsewhere(tmp_path):
    out = tmp_path / "deep" / "images"
    before = set(Path(tmp_path).rglob("*"))
    examples = generate(30, seed=1, out_dir=out)
    written = set(Path(tmp_path).rglob("*")) - before
    assert written and all(p == out or out in p.parents or p in out.parents for p in written)
    files = sorted(p for p in written if p.is_file())
    assert {Path(e.images[0]) for e in examples} == set(files)  # no leftovers (temp files) beside them
    limits = UploadLimits()
    for example in examples:
        path = Path(example.images[0])
        assert path.is_absolute() and len(example.images) == 1
        data = path.read_bytes()
        assert path.name == hashlib.sha256(data).hexdigest() + ".png" and data[:8] == b"\x89PNG\r\n\x1a\n"
        with Image.open(path) as image:
            assert (image.format, image.mode, image.size) == ("PNG", "RGB", (IMAGE_SIZE, IMAGE_SIZE))
        # The chat's own upload check accepts it and names its copy the same way.
        attachment = ingest_upload(path, store_dir=out, limits=limits)
        assert attachment.path == path and (attachment.width, attachment.height) == (IMAGE_SIZE, IMAGE_SIZE)
        # The picture goes before the text, as chat places it: no marker in the question.
        assert IMAGE_MARKER not in example.question and Example.from_json(example.to_json()) == example


def test_held_out_pairs_never_drawn_in_training_and_asked_in_the_held_out_split(train_set, held_out_set):
    rng = random.Random(0)
    scenes = [sample_scene(kind, rng)[0] for kind in KINDS * 400] + [e.extra["scene"] for e in train_set[1]]
    drawn = {pair for scene in scenes for pair in scene.pairs}
    assert not drawn & set(HELD_OUT_PAIRS)
    assert drawn == set(shapes.TRAIN_PAIRS)  # every other pair does occur
    for example in train_set[1]:  # the pixels agree: every object drawn is of a training pair
        placed = layout(example.extra["scene"], example.extra["seed"])
        assert not {(p.colour, p.shape) for p in placed} & set(HELD_OUT_PAIRS)
        assert not example.extra["held_out_pair"] and not example.extra["held_out_template"]
        assert example.question in {shapes.question(example.kind, example.extra["scene"], t)[0]
                                    for t in shapes.TEMPLATES[example.kind][0]}
    held = held_out_set[1]
    novel = [e for e in held if e.extra["held_out_pair"]]
    assert 0.3 < len(novel) / len(held) < 0.7
    assert {(e.extra["scene"].colour, e.extra["scene"].shape) for e in novel} == set(HELD_OUT_PAIRS)
    assert {e.kind for e in novel} == set(KINDS)
    new_wording = [e for e in held if e.extra["held_out_template"]]
    assert 0.3 < len(new_wording) / len(held) < 0.7
    for example in held:
        scene = example.extra["scene"]
        train_wording, eval_wording = ({shapes.question(example.kind, scene, t)[0] for t in templates}
                                       for templates in shapes.TEMPLATES[example.kind])
        assert not train_wording & eval_wording
        assert example.question in (eval_wording if example.extra["held_out_template"] else train_wording)


def test_every_answer_agrees_with_its_scene(train_set, held_out_set):
    for example in train_set[1] + held_out_set[1]:
        scene: Scene = example.extra["scene"]
        placed = layout(scene, example.extra["seed"])
        matching = [p for p in placed if (p.colour, p.shape) == (scene.colour, scene.shape)]
        assert len(matching) == scene.count and all(p.target for p in matching)
        assert (scene.colour, scene.shape) not in scene.distractors
        assert example.expected == example.answer
        q = example.question.lower()
        if example.kind == "colour":
            assert example.answer == scene.colour and scene.shape in q
            assert all(shape != scene.shape for _, shape in scene.distractors)  # "the circle" is one kind
            assert not any(c in q for c in COLOURS)
        elif example.kind == "shape":
            assert example.answer == scene.shape and scene.colour in q
            assert all(colour != scene.colour for colour, _ in scene.distractors)
            assert not any(s in q for s in shapes.SHAPES)
        elif example.kind == "count":
            assert example.answer == str(len(matching)) and example.answer in "1234"
            assert f"{scene.colour} {scene.shape}s" in q
        elif example.kind == "position":
            assert scene.count == 1 and example.answer == scene.position
            assert f"{scene.colour} {scene.shape}" in q
            assert all(colour != scene.colour for colour, _ in scene.distractors)
        else:
            words = ["zero", "one", "two", "three", "four"]
            assert example.kind == "caption" and is_caption(example)
            assert example.answer.startswith(f"A photo of {words[scene.count]} {scene.size} {scene.colour} "
                                             f"{scene.shape}")
            assert f"on a {scene.background} background." in example.answer
            assert all(f"one {c} {s}" in example.answer for c, s in scene.distractors)
    assert Scene("circle", "red", 3, size="small", background="light blue").caption() == \
        "A photo of three small red circles on a light blue background."
    assert Scene("star", "blue", 1, "left", distractors=(("red", "square"), ("blue", "circle"))).caption() == \
        "A photo of one large blue star on the left, one red square and one blue circle on a white background."


def test_pixels_show_the_named_colours_where_the_answers_say(train_set, held_out_set):
    checked = Counter()
    for example in train_set[1] + held_out_set[1]:
        scene, pixels = example.extra["scene"], _pixels(example.images[0])
        for obj in layout(scene, example.extra["seed"]):
            x, y = round(obj.x), round(obj.y)
            patch = pixels[y - 1:y + 2, x - 1:x + 2].reshape(-1, 3).mean(axis=0)
            name, distance = _nearest_colour(patch)
            assert (name, distance < 40) == (obj.colour, True), (example.answer, obj)
        if scene.position:
            # Where the target's colour is in the picture (its distractors have other colours
            # in position scenes; in the others, take the target's own blob).
            mask = _colour_mask(pixels, scene.colour)
            target = next(p for p in layout(scene, example.extra["seed"]) if p.target)
            assert shapes.position_of(target.x, target.y) == scene.position
            if example.kind != "position":
                ys, xs = np.mgrid[0:IMAGE_SIZE, 0:IMAGE_SIZE]
                mask &= np.hypot(xs - target.x, ys - target.y) <= target.r + 2
            ys, xs = np.nonzero(mask)
            assert len(xs) > 60
            assert _cell_of(xs.mean(), ys.mean()) == scene.position, example.question
            checked["position"] += 1
        # Large targets cover more pixels than small ones: over / under the area the shape has
        # at a 20 px bounding radius (small ones reach 16 px, large ones start at 24 px).
        if example.kind == "colour" and not scene.distractors:
            area = _colour_mask(pixels, scene.colour).sum() / scene.count
            checked[scene.size] += 1
            assert (area > AREA_AT_20PX[scene.shape]) == (scene.size == "large"), (scene, area)
    assert checked["position"] > 30 and checked["large"] and checked["small"]


def test_backgrounds_are_light_and_never_a_shape_colour(train_set):
    for background in BACKGROUNDS.values():
        assert min(np.linalg.norm(np.subtract(background, c)) for c in COLOURS.values()) > 100
    styles = Counter()
    for example in train_set[1]:
        scene, pixels = example.extra["scene"], _pixels(example.images[0])
        ys, xs = np.mgrid[0:IMAGE_SIZE, 0:IMAGE_SIZE]
        free = np.ones((IMAGE_SIZE, IMAGE_SIZE), bool)
        for obj in layout(scene, example.extra["seed"]):
            free &= np.hypot(xs - obj.x, ys - obj.y) > obj.r + 2
        distances = np.stack([np.linalg.norm(pixels[free] - np.asarray(c, np.float32), axis=-1)
                              for c in COLOURS.values()])
        assert distances.min() > 60, scene
        spread = pixels[free].std(axis=0).max()
        styles[scene.style] += 1
        assert (spread < 1) == (scene.style == "plain"), (scene.style, spread)
    assert set(styles) == set(shapes.STYLES)


@pytest.mark.parametrize("ratio, captions", [((1, 2), 10), ((1, 1), 15), ((0, 1), 0), ((1, 0), 30), ((2, 1), 20)])
def test_caption_to_vqa_ratio_holds_and_the_skills_are_balanced(tmp_path, ratio, captions):
    examples = generate(30, seed=2, caption_ratio=ratio, out_dir=tmp_path)
    kinds = Counter(e.kind for e in examples)
    assert kinds["caption"] == captions == sum(is_caption(e) for e in examples)
    vqa = [kinds[k] for k in shapes.VQA_KINDS]
    assert sum(vqa) == 30 - captions and max(vqa) - min(vqa) <= 1
    if 0 < captions < 30:
        assert kinds["caption"] == Counter(e.kind for e in mix(examples, ratio))["caption"]  # already mixed


@pytest.mark.parametrize("ratio", [(0, 0), (1, -1), (1.5, 1), "1:2", (1, 2, 3), (True, 1)])
def test_bad_ratio_and_counts_are_refused_by_name(tmp_path, ratio):
    with pytest.raises(UserFacingError, match="caption : VQA ratio .* accepted"):
        generate(4, caption_ratio=ratio, out_dir=tmp_path)
    with pytest.raises(UserFacingError, match="n 0 is not valid; accepted"):
        generate(0, out_dir=tmp_path)
    assert not any(tmp_path.iterdir())


def test_bad_scenes_are_refused_naming_the_field():
    for fields, message in [
        ({"shape": "hexagon", "colour": "red"}, "shape 'hexagon' .* accepted: 'circle'"),
        ({"shape": "star", "colour": "pink"}, "colour 'pink' .* accepted: 'red'"),
        ({"shape": "star", "colour": "red", "count": 5}, "count 5"),
        ({"shape": "star", "colour": "red", "count": 2, "position": "left"}, "position 'left' with count 2"),
        ({"shape": "star", "colour": "red", "position": "corner"}, "position 'corner'"),
        ({"shape": "star", "colour": "red", "distractors": (("red", "star"),)}, "the target itself"),
        ({"shape": "star", "colour": "red", "background": "red"}, "background 'red'"),
    ]:
        with pytest.raises(UserFacingError, match=message):
            Scene(**fields)


def test_score_by_skill_is_exact_match_per_kind_with_number_words(tmp_path):
    examples = generate(10, seed=3, caption_ratio=(1, 4), out_dir=tmp_path)
    by_kind = {e.kind: e for e in examples}
    assert set(by_kind) == set(KINDS)
    picked = [by_kind[k] for k in KINDS]
    words = {"1": "One.", "2": "two", "3": "Three!", "4": "FOUR"}
    replies = [f"The {by_kind['colour'].answer.upper()}.", "a hexagon", words[by_kind["count"].answer],
               f"{by_kind['position'].answer}, I think", by_kind["caption"].answer.lower()]
    scores = score_by_skill(picked, replies)
    assert scores == {"colour": 1.0, "shape": 0.0, "count": 1.0, "position": 0.0, "caption": 1.0,
                      "vqa": 0.5, "all": 0.6}
    center = Example("Where is it?", "center", kind="position", expected="center")
    assert score_by_skill([center, center, center], ["centre", "middle", "left"])["position"] == pytest.approx(2 / 3)
    with pytest.raises(UserFacingError, match="2 examples but 1 replies"):
        score_by_skill(picked[:2], ["red"])


def test_render_is_pure_and_the_module_imports_no_torch():
    scene = Scene("triangle", "green", 3, size="small", style="noise", distractors=(("purple", "circle"),))
    assert np.array_equal(np.asarray(render(scene, 5)), np.asarray(render(scene, 5)))
    assert not np.array_equal(np.asarray(render(scene, 5)), np.asarray(render(scene, 6)))
    code = "import sys, mmchat.training.shapes; sys.exit(1 if 'torch' in sys.modules else 0)"
    assert subprocess.run([sys.executable, "-c", code], timeout=60).returncode == 0


def test_the_tabs_shapes_dataset_holds_one_kind_of_object_per_picture(tmp_path):
    """The Fine-tune tab's built-in pictures are the headline benchmark's: no distractors."""
    from mmchat.training.datasets import shapes_dataset

    for held_out in (False, True):
        report = shapes_dataset(16, tmp_path, held_out=held_out)
        assert len(report.examples) == 16 and "one kind of object per picture" in report.notes[0]
        assert all(example.extra["scene"].distractors == () for example in report.examples)
