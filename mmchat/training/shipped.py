"""The adapters that ship with the project, rebuilt by `make adapters` (`python -m mmchat.training.shipped`).

For the offline preset (SmolLM2-135M), one adapter per built-in style (`SHIPPED`: one-word,
caption, json), each trained by `mmchat.training.engine.train_adapter` on
`builtin_data.generate(style, TRAIN_EXAMPLES)` (seeded: the same weights every run on a
machine), then evaluated on `HELD_OUT` questions from other templates, classes, objects and
facts (`builtin_data.questions(..., held_out=True)`) for the base and for the adapter, through
the real `OfflineBackend` (`mmchat.training.evaluate`). The card records format compliance
and whether the answer still contains the expected word, three held-out examples, and the
answers to the two shipped photos (knowledge/images/cat.png, coffee.png).

And one visual adapter, `shapes` (projector + LoRA on the image pathway), trained by
`mmchat.training.visual_run.train_visual_adapter` — the Fine-tune tab's engine — on the built-in
shapes pictures (VQA rows, seeded) with the bench's recipe for `SHAPES_STEPS` steps, evaluated
per skill on `SHAPES_HELD_OUT` held-out pictures (unseen colour-shape pairs and wordings
included), its card also recording its answer to the shipped shapes photo
(knowledge/images/shapes.png, drawn by `shapes_photo`: "How many red circles are there?").

Adapters are built in a hidden folder beside the store and each replaces its old folder only
once complete. It does not run the app or touch any other adapter in the store.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import time
from pathlib import Path
from typing import Any

# Before torch loads: OpenMP threads sleep instead of spinning while other processes share
# the cores (a training step measured ~30x slower with spinning on a busy 2-core machine).
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

from mmchat.config import PROJECT_DIR, GenerationDefaults  # noqa: E402
from mmchat.training.config import TrainingConfig  # noqa: E402

TRAIN_EXAMPLES = 256  # one epoch of max_steps x batch_size
HELD_OUT = 32
SHIPPED = {
    "one-word": TrainingConfig(name="one-word", description="answers with one word or number (VQA style)",
                               task="vqa-short", learning_rate=2e-3, max_steps=32, batch_size=8, seed=1),
    "caption": TrainingConfig(name="caption", description="answers with one sentence starting \"A photo of\"",
                              task="caption", learning_rate=2e-3, max_steps=32, batch_size=8, seed=2),
    "json": TrainingConfig(name="json", description="answers as JSON: {\"answer\": ..., \"confidence\": 0..1}",
                           task="json", learning_rate=2e-3, max_steps=32, batch_size=8, seed=3),
}
PHOTOS = (("cat.png", "What animal is this?", "cat"), ("coffee.png", "What is in the cup?", "espresso"))
VISUAL = "shapes"
SHAPES_STEPS = 400
SHAPES_TRAIN = 3200  # pictures: each seen once in SHAPES_STEPS steps of 8
SHAPES_HELD_OUT = 120
SHAPES_PHOTO = ("shapes.png", "How many red circles are there?", "3")


def shapes_photo() -> Any:
    """The shipped shapes photo: three large red circles on a cream background, no distractors
    (a scene the training rows can hold, drawn with a seed they do not use)."""
    from mmchat.training.shapes import Scene, render

    return render(Scene("circle", "red", count=3, background="cream", style="gradient"), seed=2026)


def _held_out_examples(items: list[Any], prompts: list[str], base: list[str], adapted: list[str]) -> list[dict[str, str]]:
    """Three held-out examples for the card: a photo, a question with its answer stated, a fact."""
    chosen = []
    for kinds in (("photo",), ("colour", "count", "place"), ("fact",)):
        index = next((i for i, item in enumerate(items) if item.kind in kinds), None)
        if index is not None:
            chosen.append({"prompt": prompts[index], "expected": items[index].word,
                           "base": base[index], "adapter": adapted[index]})
    return chosen


def build(store_dir: Path, cache_dir: Path, styles: tuple[str, ...], log: Any = print) -> dict[str, Any]:
    """Train, evaluate and publish the shipped adapters named in `styles`; returns each one's metrics."""
    from PIL import Image

    from mmchat.adapters.store import AdapterStore
    from mmchat.backends.offline import OfflineBackend
    from mmchat.config import PRESETS
    from mmchat.training.builtin_data import HELD_OUT_SEED, STYLE_SEEDS, generate, questions
    from mmchat.training.engine import train_adapter
    from mmchat.training.evaluate import Evaluator, LabelledPhoto, score

    preset = PRESETS["offline"]
    system_prompt = GenerationDefaults().system_prompt
    backend = OfflineBackend.from_preset(preset, cache_dir)  # for evaluation only, never serving
    evaluator = Evaluator(backend, system_prompt)
    items = questions(HELD_OUT, HELD_OUT_SEED, held_out=True)
    images = [[LabelledPhoto(item.labels)] if item.labels else [] for item in items]
    prompts = [evaluator.prompt_text(item.question, imgs) for item, imgs in zip(items, images)]
    photos = [(name, question, word, Image.open(PROJECT_DIR / "knowledge" / "images" / name).convert("RGB"))
              for name, question, word in PHOTOS]
    started = time.perf_counter()
    base_replies = [evaluator.ask(item.question, imgs) for item, imgs in zip(items, images)]
    base_photos = [evaluator.ask(question, [image]) for _, question, _, image in photos]
    log(f"base answered {len(items)} held-out questions in {time.perf_counter() - started:.0f} s")

    building = Path(store_dir) / f".build-{os.getpid()}"
    shutil.rmtree(building, ignore_errors=True)
    store = AdapterStore(building)
    results: dict[str, Any] = {}
    try:
        for style in styles:
            config = SHIPPED[style]
            examples = generate(style, TRAIN_EXAMPLES)

            def evaluate(folder: Path, style: str = style) -> tuple[dict[str, Any], list[dict[str, str]]]:
                name = f"eval-{style}"
                backend.adapters.load(name, folder)
                try:
                    replies = [evaluator.ask(item.question, imgs, adapter=name) for item, imgs in zip(items, images)]
                    photo_replies = [evaluator.ask(question, [image], adapter=name) for _, question, _, image in photos]
                finally:
                    backend.adapters.unload(name)
                expected = [item.word for item in items]
                metrics = {
                    "held_out": {"questions": len(items), "seed": HELD_OUT_SEED, "decoding": "greedy, offline answer policy",
                                 "measures": "format: the style's check; answers: the expected word is in the answer"},
                    "base": score(style, base_replies, expected),
                    "adapter": score(style, replies, expected),
                    "photos": [{"image": name, "question": question, "expected": word, "base": base, "adapter": reply}
                               for (name, question, word, _), base, reply in zip(photos, base_photos, photo_replies)],
                }
                return metrics, _held_out_examples(items, prompts, base_replies, replies)

            def progress(step: int, total: int, loss: float, style: str = style) -> None:
                if step == 1 or step % 10 == 0 or step == total:
                    log(f"{style}: step {step}/{total} loss {loss:.3f}")

            t0 = time.perf_counter()
            stored = train_adapter(config, examples, store, preset=preset, cache_dir=cache_dir,
                                   system_prompt=system_prompt, progress=progress, evaluate=evaluate,
                                   dataset={"source": f"builtin:{style}", "generator": "mmchat.training.builtin_data",
                                            "seed": STYLE_SEEDS[style]})
            metrics = stored.card.metrics
            log(f"{style}: trained and evaluated in {time.perf_counter() - t0:.0f} s; base {metrics['base']} "
                f"adapter {metrics['adapter']}")
            for photo in metrics["photos"]:
                log(f"  {photo['image']} {photo['question']!r}: {photo['adapter']!r} (base: {photo['base']!r})")
            target = Path(store_dir) / style
            if target.exists():
                shutil.rmtree(target)
            os.rename(stored.folder, target)
            results[style] = metrics
    finally:
        shutil.rmtree(building, ignore_errors=True)
    return results


def build_shapes(store_dir: Path, cache_dir: Path, log: Any = print) -> dict[str, Any]:
    """Train, evaluate and publish the shipped visual adapter (`VISUAL`); returns its metrics."""
    import dataclasses
    import tempfile

    from mmchat.adapters.card import CARD_FILE
    from mmchat.adapters.store import AdapterStore
    from mmchat.backends.offline import OfflineBackend
    from mmchat.config import PRESETS
    from mmchat.training.datasets import shapes_dataset
    from mmchat.training.evaluate import Evaluator
    from mmchat.training.service import VISUAL_RECIPE, VISUAL_TARGET_RATES
    from mmchat.training.visual import VisualTargets
    from mmchat.training.visual_run import train_visual_adapter

    preset = PRESETS["offline"]
    system_prompt = GenerationDefaults().system_prompt
    recipe = {key: value for key, value in VISUAL_RECIPE.items() if key not in ("eval_every", "sample_every")}
    config = TrainingConfig.from_mapping({**recipe, "name": VISUAL, "max_steps": SHAPES_STEPS, "seed": 0,
                                          "description": "answers colour, shape, count and position questions "
                                                         "about pictures of coloured shapes (image pathway)"})
    targets = VisualTargets(**VISUAL_TARGET_RATES)
    building = Path(store_dir) / f".build-{os.getpid()}"
    shutil.rmtree(building, ignore_errors=True)
    with tempfile.TemporaryDirectory(prefix="mmchat-shapes-") as work:
        pictures = Path(work)
        # The tab's built-in shapes dataset (questions only, one kind of object per picture).
        train = shapes_dataset(SHAPES_TRAIN, pictures, seed=0).examples
        held_out = shapes_dataset(SHAPES_HELD_OUT, pictures, seed=0, held_out=True).examples

        def progress(step: int, total: int, loss: float) -> None:
            if step == 1 or step % 25 == 0 or step == total:
                log(f"{VISUAL}: step {step}/{total} loss {loss:.3f}")

        def on_event(event: dict[str, Any]) -> None:
            if event["type"] == "phase":
                log(f"{VISUAL}: {event['phase']}")

        try:
            t0 = time.perf_counter()
            stored, _ = train_visual_adapter(
                config, targets, train, AdapterStore(building), preset=preset, cache_dir=cache_dir,
                system_prompt=system_prompt, held_out=held_out, progress=progress, on_event=on_event,
                dataset={"source": "builtin:shapes", "generator": "mmchat.training.shapes", "seed": 0})
            log(f"{VISUAL}: trained and evaluated in {time.perf_counter() - t0:.0f} s")
            # The shipped photo (redrawn: the same pixels every time), asked as chat asks it.
            name, question, expected = SHAPES_PHOTO
            photo = shapes_photo()
            photo.save(PROJECT_DIR / "knowledge" / "images" / name)  # PNG: the file holds these pixels
            evaluator = Evaluator(OfflineBackend.from_preset(preset, cache_dir), system_prompt)
            evaluator.backend.adapters.load(VISUAL, stored.folder)
            answers = {"base": evaluator.ask(question, [photo]), "adapter": evaluator.ask(question, [photo], VISUAL)}
            metrics = {**stored.card.metrics, "photos": [{"image": name, "question": question, "expected": expected,
                                                          **answers}]}
            card = dataclasses.replace(stored.card, metrics=metrics)
            (stored.folder / CARD_FILE).write_text(card.to_json(), encoding="utf-8")
            log(f"{VISUAL}: {metrics['adapter']} (base {metrics['base']}); {name} {question!r}: {answers}")
            target = Path(store_dir) / VISUAL
            if target.exists():
                shutil.rmtree(target)
            os.rename(stored.folder, target)
        finally:
            shutil.rmtree(building, ignore_errors=True)
    return metrics


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Rebuild the shipped adapters for the offline model.")
    parser.add_argument("--store", default=str(PROJECT_DIR / "adapters"), help="adapter store folder")
    parser.add_argument("--cache-dir", default="~/.cache/mmchat", help="where converted weights are cached")
    parser.add_argument("--only", nargs="*", choices=sorted(SHIPPED) + [VISUAL], help="rebuild only these")
    args = parser.parse_args(argv)
    started = time.perf_counter()
    only = tuple(args.only or (*SHIPPED, VISUAL))
    store, cache_dir = Path(args.store), Path(args.cache_dir).expanduser()
    if any(name in SHIPPED for name in only):
        build(store, cache_dir, tuple(name for name in only if name in SHIPPED))
    if VISUAL in only:
        build_shapes(store, cache_dir)
    print(f"done in {time.perf_counter() - started:.0f} s", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
