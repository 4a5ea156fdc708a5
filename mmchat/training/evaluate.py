"""Held-out evaluation of an adapter against its base, asked through a real backend as chat asks.

`Evaluator(backend, system_prompt)` asks any backend with `prepare`/`stream`/`info` (offline,
LLaVA, tiny) the way chat does: the session's `render_messages` with the system prompt, then
`backend.prepare(..., adapter=name)` and `backend.stream`, greedy, with the preset's answer
policy (`GenerationParams.for_policy`). `ask_example` asks a training `Example`: its
conversation up to the last assistant turn, with its photos (image paths, or `LabelledPhoto`
when only classifier labels are known: the offline backend's image pathway is wrapped
(`LabelledPathway`) so they become the very line `describe_image` writes for a real photo).

`evaluate_examples` asks every held-out example of the base and of an adapter and scores both
sides with `mmchat.training.metrics` (exact match, VQA accuracy, contains the expected answer,
CIDEr-D over the captions) and, for the built-in styles, the style checks below: `one_word`
(one word or number), `caption` (one sentence that starts "A photo of"), `json_object` (a JSON
object with exactly the keys "answer" (text) and "confidence" (a number 0..1)). The result is
the card's `metrics` and a gallery (prompt, photo, expected, base, adapter).
`evaluation_backend` wraps the trainer's own copy of the base in the backend chat uses.

It does not train, load adapters by itself, or touch the serving backend: it changes only the
evaluation backend it is given (its image pathway, when it has one).
"""

from __future__ import annotations

import json
import re
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

from mmchat.errors import UserFacingError
from mmchat.training.metrics import (
    MIN_CIDER_CAPTIONS,
    cider_d,
    contains_answer,
    exact_match,
    vqa_accuracy,
)


def answers(text: str, expected: str) -> bool:
    """True when `expected` (or one of its "|"-separated alternatives) appears in `text` as
    whole words (case-insensitive, "four" = "4"); `metrics.contains_answer`."""
    return contains_answer(text, expected)


def one_word(text: str) -> bool:
    return bool(re.fullmatch(r"[\w'-]+\.?", text.strip()))


def caption(text: str) -> bool:
    text = text.strip()
    if not text.startswith("A photo of") or "\n" in text or len(text.split()) > 30:
        return False
    body = text.rstrip(".!")
    return not re.search(r"[.!?](\s|$)", body)  # one sentence: no sentence end before the last


def json_object(text: str) -> bool:
    try:
        data = json.loads(text.strip())
    except json.JSONDecodeError:
        return False
    return (isinstance(data, dict) and set(data) == {"answer", "confidence"} and isinstance(data["answer"], str)
            and isinstance(data["confidence"], (int, float)) and not isinstance(data["confidence"], bool)
            and 0 <= data["confidence"] <= 1)


def json_answer(text: str) -> str:
    """The "answer" value of a JSON reply (the text itself when it is not one)."""
    try:
        data = json.loads(text.strip())
    except json.JSONDecodeError:
        return text
    return str(data.get("answer", "")) if isinstance(data, dict) else text


CHECKS: dict[str, Callable[[str], bool]] = {"one-word": one_word, "caption": caption, "json": json_object}
ANSWER_OF: dict[str, Callable[[str], str]] = {"json": json_answer}


def score(style: str, replies: Sequence[str], expected: Sequence[str]) -> dict[str, float]:
    """Rates over held-out replies: format, answers the question, and both."""
    check = CHECKS[style]
    extract = ANSWER_OF.get(style, lambda text: text)
    fmt = [check(r) for r in replies]
    ans = [answers(extract(r), e) for r, e in zip(replies, expected)]
    n = max(1, len(replies))
    return {"format": round(sum(fmt) / n, 3), "answers": round(sum(ans) / n, 3),
            "format_and_answers": round(sum(f and a for f, a in zip(fmt, ans)) / n, 3)}


@dataclass(frozen=True)
class LabelledPhoto:
    """A photo known only by its classifier labels (for held-out questions about photos)."""

    labels: tuple[tuple[str, float], ...]


class LabelledPathway:
    """The backend's image pathway, plus `LabelledPhoto`s rendered by `describe_image`."""

    def __init__(self, real: Any) -> None:
        self.real = real

    def render(self, images: Sequence[Any]) -> list[str]:
        from mmchat.backends.offline import describe_image

        texts = []
        for number, image in enumerate(images, start=1):
            if isinstance(image, LabelledPhoto):
                texts.append(describe_image(number, image.labels))
            else:
                texts.append(self.real.render([image])[0].replace("[Image 1:", f"[Image {number}:", 1))
        return texts


IMAGE_MARKER = "<image>"  # where a dataset row's image sits in a turn (LLaMA-Factory's convention)

try:  # the training renderer's own, so a held-out prompt reads exactly as the training one
    from mmchat.training.examples import strip_markers
except ImportError:  # examples.py before multi-turn rows landed: the same rule
    def strip_markers(text: str) -> str:
        return re.sub(r"[ \t]*<image>[ \t]*\n?", " ", text).strip() if IMAGE_MARKER in text else text


def _open_image(path: Any) -> Any:
    from PIL import Image, ImageOps

    try:
        with Image.open(path) as image:
            return ImageOps.exif_transpose(image).convert("RGB")
    except (OSError, ValueError, Image.DecompressionBombError) as err:
        raise UserFacingError(f"held-out image {str(path)!r} cannot be read ({err}); accepted: a PNG, JPEG or "
                              "WebP file that exists") from None


def conversation(example: Any) -> list[tuple[str, str]]:
    """The example's (role, text) turns up to its last assistant turn (the answer to predict);
    a plain example is its one question."""
    turns = [(str(role), str(text)) for role, text in (getattr(example, "turns", ()) or ())]
    if not turns:
        return [("user", example.question)]
    last = max((i for i, (role, _) in enumerate(turns) if role == "assistant"), default=len(turns))
    history = turns[:last]
    return history if any(role == "user" for role, _ in history) else [("user", example.question)]


def reference_answer(example: Any) -> str:
    """The answer to predict: the last assistant turn of a conversation, else `example.answer`."""
    turns = list(getattr(example, "turns", ()) or ())
    return next((str(text) for role, text in reversed(turns) if role == "assistant"), example.answer)


class Evaluator:
    """Asks one backend questions as chat asks them: greedy, the preset's answer policy."""

    def __init__(self, backend: Any, system_prompt: str, max_new_tokens: int = 48) -> None:
        from mmchat.backends.base import GenerationParams

        pathway = getattr(backend, "pathway", None)  # the offline backend's image-to-text step
        if pathway is not None and not isinstance(pathway, LabelledPathway):
            backend.pathway = LabelledPathway(pathway)
        self.backend = backend
        self.system_prompt = system_prompt
        self.params = GenerationParams.for_policy(backend.info.answer, max_new_tokens=max_new_tokens,
                                                  temperature=0.0)

    @property
    def _reads_labels(self) -> bool:
        return getattr(self.backend, "pathway", None) is not None

    def ask(self, question: str, images: Sequence[Any] = (), adapter: str | None = None) -> str:
        from mmchat.prompt import Turn

        ids = tuple(f"image-{i}" for i in range(len(images)))
        return self._answer([Turn("user", question, ids)], images, adapter)

    def ask_example(self, example: Any, adapter: str | None = None) -> str:
        """The reply to `example` (an `mmchat.training.examples.Example`) as chat would give it:
        its earlier turns as history, its photos with the first user turn that mentions them."""
        turns, images = self.example_prompt(example)
        return self._answer(turns, images, adapter)

    def _answer(self, turns: Sequence[Any], images: Sequence[Any], adapter: str | None) -> str:
        from mmchat.prompt import render_messages

        messages, _ = render_messages(self.system_prompt, turns)
        prompt = self.backend.prepare(messages, list(images), adapter=adapter)
        return "".join(self.backend.stream(prompt, self.params)).strip()

    def example_images(self, example: Any) -> list[Any]:
        """The example's photos: its image files, else its classifier labels as a `LabelledPhoto`."""
        paths = list(getattr(example, "images", ()) or ())
        if paths:
            return [_open_image(path) for path in paths]
        if example.image_labels:
            if not self._reads_labels:
                raise UserFacingError(
                    f"the held-out example {example.question[:60]!r} has image labels but no image file; the "
                    f"{self.backend.info.kind} model sees pixels: give the row an image instead"
                )
            return [LabelledPhoto(tuple(example.image_labels))]
        return []

    def example_prompt(self, example: Any) -> tuple[list[Any], list[Any]]:
        """The history turns and the images chat would send for `example`.

        As the training renderer places them: image i goes to the user turn holding the i-th
        `<image>` marker (markers removed: chat never has them in text); with no markers, all
        go to the first user turn; any other count is refused.
        """
        from mmchat.prompt import Turn

        images = self.example_images(example)
        history = conversation(example)
        users = [i for i, (role, _) in enumerate(history) if role == "user"]
        marked = {i: history[i][1].count(IMAGE_MARKER) for i in users}
        if images and not any(marked.values()):
            marked[users[0]] = len(images)
        if sum(marked.values()) != len(images):
            raise UserFacingError(f"the held-out example {example.question[:60]!r} has {sum(marked.values())} "
                                  f"{IMAGE_MARKER} markers and {len(images)} images; accepted: as many markers as "
                                  "images, or none")
        turns, number = [], 0
        for index, (role, text) in enumerate(history):
            count = marked.get(index, 0)
            ids = tuple(f"image-{n}" for n in range(number, number + count))
            number += count
            turns.append(Turn(role, strip_markers(text) if role == "user" else text, ids))
        return turns, images

    def prompt_text(self, question: str, images: Sequence[Any] = ()) -> str:
        """The user's turn as the model reads it (image lines, then the question)."""
        return "\n".join([*self._image_lines(images), question])

    def example_text(self, example: Any) -> str:
        """The example's prompt as text for a gallery: image lines, then the turns."""
        turns, images = self.example_prompt(example)
        if len(turns) == 1:
            return self.prompt_text(turns[0].text, images)
        lines = self._image_lines(images)
        lines += [f"{turn.role}: {turn.text}" for turn in turns]
        return "\n".join(lines)

    def _image_lines(self, images: Sequence[Any]) -> list[str]:
        if self._reads_labels:
            return self.backend.pathway.render(list(images))
        return [f"[Image {n}]" for n in range(1, len(images) + 1)]


def looks_like_caption(text: str) -> bool:
    """One sentence of 4..40 words (not JSON): a reply that describes rather than answers."""
    text = text.strip()
    words = text.split()
    return (4 <= len(words) <= 40 and not text.startswith("{") and "\n" not in text
            and not re.search(r"[.!?]\s", text.rstrip(".!?")))


def is_caption(example: Any, style: str | None = None) -> bool:
    """Whether CIDEr-D scores this example: kind "caption", the caption style, or a caption-like answer."""
    return example.kind == "caption" or style == "caption" or looks_like_caption(reference_answer(example))


def references(example: Any) -> list[str]:
    """The reference answers: `extra["answers"]` (e.g. VQA's ten human answers) when the example
    carries them, else its answer."""
    given = (getattr(example, "extra", None) or {}).get("answers")
    if isinstance(given, (list, tuple)) and given and all(isinstance(a, str) for a in given):
        return list(given)
    return [reference_answer(example)]


@dataclass(frozen=True)
class EvalResult:
    """What the card records: `metrics` ({"held_out", "base", "adapter"}) and the gallery rows."""

    metrics: dict[str, Any]
    gallery: list[dict[str, str]] = field(default_factory=list)


def _mean(values: Sequence[float]) -> float:
    return round(sum(values) / max(1, len(values)), 3)


def _side(replies: list[str], examples: Sequence[Any], style: str | None,
          captions: list[int], cider_first: bool) -> dict[str, float]:
    extract = ANSWER_OF.get(style or "", lambda text: text)
    answers_of = [extract(r) for r in replies]
    refs = [[extract(r) for r in references(e)] for e in examples]
    expected = [e.expected or reference_answer(e) for e in examples]
    contains = [contains_answer(a, x) for a, x in zip(answers_of, expected)]
    side: dict[str, float] = {}
    if style in CHECKS:
        fmt = [CHECKS[style](r) for r in replies]
        side["format"] = _mean(fmt)
        side["format_and_answers"] = _mean([f and c for f, c in zip(fmt, contains)])
    cider: dict[str, float] = {}
    if len(captions) >= MIN_CIDER_CAPTIONS:
        cider["cider_d"] = round(cider_d([replies[i] for i in captions],
                                         [references(examples[i]) for i in captions])[0], 3)
    if cider_first:
        side.update(cider)
    side["exact_match"] = _mean([exact_match(a, r) for a, r in zip(answers_of, refs)])
    side["vqa_accuracy"] = _mean([vqa_accuracy(a, r) for a, r in zip(answers_of, refs)])
    side["contains"] = _mean(contains)
    side.update(cider)
    return side


def evaluate_examples(evaluator: Evaluator, examples: Sequence[Any], adapter: str, *, style: str | None = None,
                      progress: Callable[[int, int], None] | None = None,
                      description: str | None = None) -> EvalResult:
    """Ask every held-out example of the base and of `adapter` (greedy) and score both sides.

    Per side: `exact_match` and `vqa_accuracy` (normalised, against `references`), `contains`
    (the expected word, or the reference answer, appears in the reply), the style's `format`
    and `format_and_answers` when `style` is a built-in one, and `cider_d` over the caption
    examples when there are at least `MIN_CIDER_CAPTIONS` (else a note in "held_out" says
    why it is absent). The first key is the card's headline: the format for a style, CIDEr-D
    when most examples are captions, else exact match. JSON replies are scored on their
    "answer". `progress(done, total)` follows each answer; `description` names the split.
    """
    if not examples:
        raise UserFacingError("no held-out examples to evaluate; accepted: at least one example in the eval split")
    total, done = 2 * len(examples), 0
    sides: dict[str, list[str]] = {"base": [], "adapter": []}
    for name, ask_with in (("base", None), ("adapter", adapter)):
        for example in examples:
            sides[name].append(evaluator.ask_example(example, adapter=ask_with))
            done += 1
            if progress is not None:
                progress(done, total)
    captions = [i for i, e in enumerate(examples) if is_caption(e, style)]
    cider_first = style not in CHECKS and 2 * len(captions) >= len(examples)
    notes = []
    if captions and len(captions) < MIN_CIDER_CAPTIONS:
        notes.append(f"cider_d absent: {len(captions)} caption example(s); CIDEr-D's IDF comes from the evaluated "
                     f"set, so it needs at least {MIN_CIDER_CAPTIONS}")
    kinds = Counter(e.kind or "unlabelled" for e in examples)
    held_out: dict[str, Any] = {
        "description": description or f"{len(examples)} held-out examples ("
                                      + ", ".join(f"{k} {n}" for k, n in kinds.most_common()) + ")",
        "count": len(examples),
        "captions": len(captions),
        "decoding": f"greedy, the {evaluator.backend.info.preset} preset's answer policy, "
                    f"at most {evaluator.params.max_new_tokens} new tokens",
        "measures": "exact_match / vqa_accuracy: the VQA-normalised reply equals the reference answer(s) "
                    "(VQA: min(#matching / 3, 1) averaged leave-one-out); contains: the expected answer is in "
                    "the reply; cider_d: CIDEr-D over the captions"
                    + ("; format: the style's check" if style in CHECKS else ""),
    }
    if style:
        held_out["style"] = style
    if notes:
        held_out["notes"] = notes
    metrics = {"held_out": held_out,
               "base": _side(sides["base"], examples, style, captions, cider_first),
               "adapter": _side(sides["adapter"], examples, style, captions, cider_first)}
    gallery = []
    for index, example in enumerate(examples):
        paths = list(getattr(example, "images", ()) or ())
        gallery.append({"prompt": evaluator.example_text(example), "image": str(paths[0]) if paths else "",
                        "expected": example.expected or reference_answer(example),
                        "base": sides["base"][index], "adapter": sides["adapter"][index]})
    return EvalResult(metrics, gallery)


def evaluation_backend(model: Any, tokenizer: Any, preset: Any, cache_dir: Path) -> Any:
    """The chat backend of `preset`'s kind built on a trainer's own copy of the base (never the
    serving one), to evaluate with; load the adapter with `backend.adapters.load(name, folder)`.

    `model` must be the bare base: no LoRA layers injected (a fresh copy, or the trained
    `PeftModel` after `unload()`). The offline kind gets the real image pathway
    (`ClassifierLabelPathway` over the shared classifier), as `OfflineBackend.from_preset` does.
    """
    from peft.tuners.tuners_utils import BaseTunerLayer

    if hasattr(model, "peft_config") or any(isinstance(m, BaseTunerLayer) for m in model.modules()):
        raise ValueError("evaluation_backend needs the bare base model; unload the trained LoRA layers first "
                         "(PeftModel.unload()) and load the adapter through backend.adapters")
    model.eval()
    if preset.kind == "offline":
        from mmchat.backends.offline import OfflineBackend

        return OfflineBackend.from_preset(preset, Path(cache_dir), loaded=(model, tokenizer))
    if preset.kind in ("llava", "tiny"):
        from mmchat.backends.llava import LlavaBackend

        return LlavaBackend.from_preset(preset, Path(cache_dir), loaded=(model, tokenizer))
    raise UserFacingError(f"preset {preset.name!r} has kind {preset.kind!r}; evaluation accepts the offline, "
                          "llava and tiny kinds")
