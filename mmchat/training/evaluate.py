"""Held-out evaluation of an adapter's behaviour, through the real offline chat path.

Checks, one per built-in style: `one_word` (one word or number), `caption` (one sentence
that starts "A photo of"), `json_object` (a JSON object with exactly the keys "answer"
(text) and "confidence" (a number 0..1)); `answers(text, expected)` says whether the
answer still contains the expected word (case-insensitive, number words as digits).

`Evaluator` asks an `OfflineBackend` each question the way chat does: the session's
`render_messages` with the system prompt, then `backend.prepare(..., adapter=name)` and
`backend.stream` with greedy decoding and the preset's answer policy
(`GenerationParams.for_policy`), the adapter loaded through the backend's `AdapterHost`.
Questions about a photo carry the photo's ImageNet labels (`LabelledPhoto`); the backend's
image pathway is wrapped (`LabelledPathway`) so they become the very line `describe_image`
writes for a real photo, while real photos still go through the classifier. It does not
train, and it changes only the evaluation backend it is given (never the serving one).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any, Callable, Sequence

NUMBER_WORDS = {"zero": "0", "none": "0", "one": "1", "two": "2", "three": "3", "four": "4", "five": "5",
                "six": "6", "seven": "7", "eight": "8", "nine": "9", "ten": "10", "eleven": "11",
                "twelve": "12"}


def _normal(text: str) -> str:
    words = re.findall(r"[a-z0-9]+", text.lower())
    return " ".join(NUMBER_WORDS.get(w, w) for w in words)


def answers(text: str, expected: str) -> bool:
    """True when `expected` (or one of its "|"-separated alternatives) appears in `text` as
    whole words (case-insensitive, "four" = "4")."""
    if not expected:
        return True
    return any(f" {_normal(word)} " in f" {_normal(text)} " for word in expected.split("|"))


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


class Evaluator:
    def __init__(self, backend: Any, system_prompt: str, max_new_tokens: int = 48) -> None:
        from mmchat.backends.base import GenerationParams

        if not isinstance(backend.pathway, LabelledPathway):
            backend.pathway = LabelledPathway(backend.pathway)
        self.backend = backend
        self.system_prompt = system_prompt
        self.params = GenerationParams.for_policy(backend.info.answer, max_new_tokens=max_new_tokens,
                                                  temperature=0.0)

    def ask(self, question: str, images: Sequence[Any] = (), adapter: str | None = None) -> str:
        from mmchat.prompt import Turn, render_messages

        ids = tuple(f"image-{i}" for i in range(len(images)))
        messages, _ = render_messages(self.system_prompt, [Turn("user", question, ids)])
        prompt = self.backend.prepare(messages, list(images), adapter=adapter)
        return "".join(self.backend.stream(prompt, self.params)).strip()

    def prompt_text(self, question: str, images: Sequence[Any] = ()) -> str:
        """The user's turn as the model reads it (image lines, then the question)."""
        return "\n".join([*self.backend.pathway.render(list(images)), question])
