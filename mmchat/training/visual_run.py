"""A visual run: the offline model learns to see; trained, scored per skill, published as a visual adapter.

`train_visual_adapter(config, targets, train, store, ...)` is the image pathway's counterpart of
`mmchat.training.engine.train_adapter`, the one path the trainer process (a run whose `run.json`
carries "visual", see `mmchat.training.trainer`) and the command line (`python -m mmchat.train`
with a `[visual]` table) share:

1. a fresh copy of the offline base (`load_base_copy`, never the serving model), the composite
   set up for `targets` (`mmchat.training.visual.prepare_visual`);
2. every picture's frozen features computed once, in chunks, each a "phase" event (Stop is
   honoured between chunks);
3. `train_visual` through the engine's loop: checkpoints (a run resumes from the newest),
   `stop`, `stop_at`, and the text runs' "step" and "checkpoint" events, so the tab draws the
   same progress and loss curve (a visual run has no held-out loss or sample answers);
4. with held-out examples: every question asked of the base (today's label pathway: the photo
   as its classifier label line, LoRA off) and of the adapter (the composite), greedy, in chunks
   that each send an "evaluation" event (done, total) and honour Stop;
5. `publish_visual`: LoRA files, `projector.safetensors`, the card with metrics and gallery.

Metrics keep the text runs' shape (`mmchat.training.evaluate`), so the card, the status and the
tab's table read them alike: {"held_out": {...}, "base": {...}, "adapter": {...}, "training":
{...}}; each side has `exact_match` over every question (VQA-normalised, aliases such as
"centre" accepted: `shapes.score_by_skill`), `exact_match_<skill>` per skill (colour, shape,
count, position) and `cider_d` over the captions when there are at least `MIN_CIDER_CAPTIONS`.
Gallery rows are {"prompt", "image", "expected", "base", "adapter"}, as a text run's.

It does not read run folders or write status files (the trainer does), validate datasets (the
server did), or evaluate when there are no held-out examples (the command line's case).
"""

from __future__ import annotations

import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any, Callable, Sequence

from mmchat.errors import UserFacingError
from mmchat.training.config import TrainingConfig
from mmchat.training.examples import Example

FEATURE_CHUNK = 64  # pictures per features call (a phase event after each)
EVAL_CHUNK = 8  # questions per evaluation call (an evaluation event after each)
ANSWER_TOKENS = 12  # a question's answer is a word or a number
CAPTION_TOKENS = 48  # a caption is one sentence

OnEvent = Callable[[dict[str, Any]], None]


def train_visual_adapter(
    config: TrainingConfig,
    targets: Any,
    train: Sequence[Example],
    store: Any,
    *,
    preset: Any,
    cache_dir: Path,
    system_prompt: str,
    held_out: Sequence[Example] = (),
    dataset: dict[str, Any] | None = None,
    stop: threading.Event | None = None,
    on_event: OnEvent | None = None,
    progress: Callable[[int, int, float], None] | None = None,
    checkpoints: Path | None = None,
    stop_at: int = 0,
) -> tuple[Any, list[dict[str, str]]]:
    """Train, evaluate and publish a visual adapter (see the module docstring); returns the
    `StoredAdapter` and the whole gallery (the card keeps its first `GALLERY_ROWS`). Raises
    `TrainingStopped` when `stop` is set, `UserFacingError` for bad settings or data; nothing is
    published then."""
    from mmchat.backends.registry import load_base_copy
    from mmchat.training.engine import TrainingStopped
    from mmchat.training.examples import dataset_digest
    from mmchat.training.trainer import GALLERY_ROWS
    from mmchat.training.visual import VisualRenderer, prepare_visual, publish_visual, train_visual
    from mmchat.vision.features import shared_features

    if preset.kind != "offline":
        raise UserFacingError(f"visual training needs the offline model's image pathway; preset {preset.name!r} "
                              f"(kind {preset.kind}) has none; accepted: the offline preset")
    if not train:
        raise UserFacingError("no training examples; accepted: at least one picture with its question")
    if (store.root / config.name).exists():
        raise UserFacingError(f"an adapter named {config.name!r} already exists; delete it or choose another name")
    emit = on_event or (lambda event: None)
    started = time.perf_counter()
    emit({"type": "phase", "phase": "loading the base model"})
    base, tokenizer = load_base_copy(preset, cache_dir)
    features = shared_features(cache_dir)
    model = prepare_visual(base, tokenizer, features, config, targets)
    # Prompt tuning's slots open the system prompt (only asked for when there are any).
    slots = {"prompt_tokens": targets.prompt_tokens} if targets.prompt_tokens else {}
    renderer = VisualRenderer(tokenizer, system_prompt, features, config.max_length, **slots)
    paths = list(dict.fromkeys(path for example in [*train, *held_out] for path in example.images))
    for start in range(0, len(paths), FEATURE_CHUNK):
        if stop is not None and stop.is_set():
            raise TrainingStopped("training stopped before its first step; nothing was saved")
        emit({"type": "phase", "phase": f"image features {start}/{len(paths)} pictures"})
        renderer.image_features(paths[start: start + FEATURE_CHUNK])
    emit({"type": "phase", "phase": "training"})
    losses = train_visual(model, renderer, train, config, targets, progress=progress, stop=stop, on_event=emit,
                          checkpoints=checkpoints, stop_at=stop_at)
    trained_s = time.perf_counter() - started
    metrics: dict[str, Any] = {}
    gallery: list[dict[str, str]] = []
    if held_out:
        metrics, gallery = evaluate_held_out(model, renderer, held_out, preset, cache_dir, stop=stop, on_event=emit)
    if stop is not None and stop.is_set():
        raise TrainingStopped("training stopped before the adapter was saved; nothing was saved")
    metrics["training"] = {
        "steps": len(losses), "first_loss": round(losses[0], 4), "final_loss": round(losses[-1], 4),
        "seconds": round(trained_s, 1), "hyperparameters": config.to_dict(), "targets": targets.to_dict(),
        "targets_label": targets.label,
    }
    kinds = dict(Counter(example.kind or "custom" for example in train))
    card_dataset = {"examples": len(train), "kinds": kinds, "sha256": dataset_digest(train),
                    "system_prompt": system_prompt, **(dataset or {})}
    emit({"type": "phase", "phase": "publishing the adapter"})
    stored = publish_visual(model, store, config, base_model=preset.source, tokenizer=tokenizer, features=features,
                            metrics=metrics, dataset=card_dataset, examples=gallery[:GALLERY_ROWS])
    return stored, gallery


def evaluate_held_out(model: Any, renderer: Any, examples: Sequence[Example], preset: Any, cache_dir: Path, *,
                      stop: threading.Event | None = None, on_event: OnEvent | None = None
                      ) -> tuple[dict[str, Any], list[dict[str, str]]]:
    """(metrics, gallery) of the base (label pathway) and the adapter on `examples` (see the module docstring)."""
    from mmchat.training.trainer import image_describer_for

    emit = on_event or (lambda event: None)
    describe = image_describer_for(list(examples), preset, cache_dir)
    total = 2 * len(examples)
    done = 0

    def asked(count: int) -> None:
        nonlocal done
        done += count
        emit({"type": "evaluation", "done": done, "total": total})

    emit({"type": "evaluation", "done": 0, "total": total})
    base = ask(model, renderer, examples, base=True, describe=describe, stop=stop, asked=asked)
    adapter = ask(model, renderer, examples, stop=stop, asked=asked)
    kinds = Counter(example.kind or "other" for example in examples)
    held_out = {
        "description": f"{len(examples)} held-out shapes pictures (" + ", ".join(f"{k} {n}" for k, n in
                                                                                 sorted(kinds.items()))
                       + "); colour-shape pairs and question wordings the training pictures never show",
        "count": len(examples),
        "captions": kinds.get("caption", 0),
        "decoding": f"greedy, at most {ANSWER_TOKENS} new tokens for a question and {CAPTION_TOKENS} for a caption; "
                    "base: the photo as today's label line (LoRA off), adapter: the projected image vectors",
        "measures": "exact_match: the VQA-normalised reply equals the answer (or an accepted alias), over every "
                    "question and per skill (exact_match_colour, ...); cider_d: CIDEr-D over the captions",
    }
    metrics = {"held_out": held_out, "base": score(examples, base, held_out), "adapter": score(examples, adapter)}
    gallery = [{"prompt": example.question, "image": example.images[0] if example.images else "",
                "expected": example.expected or example.answer, "base": base[i], "adapter": adapter[i]}
               for i, example in enumerate(examples)]
    return metrics, gallery


def ask(model: Any, renderer: Any, examples: Sequence[Example], *, base: bool = False, describe: Any = None,
        stop: threading.Event | None = None, asked: Callable[[int], None] | None = None) -> list[str]:
    """Every example's reply in order, asked `EVAL_CHUNK` at a time (questions before captions,
    which get more tokens); `TrainingStopped` between chunks once `stop` is set."""
    from mmchat.training.engine import TrainingStopped
    from mmchat.training.visual import evaluate_visual

    replies: dict[int, str] = {}
    order = sorted(range(len(examples)), key=lambda i: examples[i].kind == "caption")
    for start in range(0, len(order), EVAL_CHUNK):
        if stop is not None and stop.is_set():
            raise TrainingStopped("training stopped before the adapter was saved; nothing was saved")
        chunk = order[start: start + EVAL_CHUNK]
        tokens = CAPTION_TOKENS if any(examples[i].kind == "caption" for i in chunk) else ANSWER_TOKENS
        _, answers = evaluate_visual(model, renderer, [examples[i] for i in chunk], base=base, describe=describe,
                                     max_new_tokens=tokens)
        replies.update(zip(chunk, answers))
        if asked is not None:
            asked(len(chunk))
    return [replies[i] for i in range(len(examples))]


def score(examples: Sequence[Example], replies: Sequence[str], held_out: dict[str, Any] | None = None
          ) -> dict[str, float]:
    """One side's metrics: exact_match (every question), exact_match_<skill>, cider_d (captions,
    when there are enough; else a note in `held_out`, when given, says why it is absent)."""
    from mmchat.training import shapes
    from mmchat.training.metrics import MIN_CIDER_CAPTIONS, cider_d

    by_skill = shapes.score_by_skill(examples, replies)
    side: dict[str, float] = {}
    if "vqa" in by_skill:
        side["exact_match"] = round(by_skill["vqa"], 3)
    for skill in shapes.VQA_KINDS:
        if skill in by_skill:
            side[f"exact_match_{skill}"] = round(by_skill[skill], 3)
    captions = [i for i, example in enumerate(examples) if example.kind == "caption"]
    if len(captions) >= MIN_CIDER_CAPTIONS:
        side["cider_d"] = round(cider_d([replies[i] for i in captions],
                                        [[examples[i].answer] for i in captions])[0], 3)
    elif captions and held_out is not None:
        held_out["notes"] = [f"cider_d absent: {len(captions)} caption example(s); CIDEr-D needs at least "
                             f"{MIN_CIDER_CAPTIONS}"]
    return side


__all__ = ["evaluate_held_out", "score", "train_visual_adapter"]
