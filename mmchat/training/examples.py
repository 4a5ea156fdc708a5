"""Training examples -> token ids with answer-only labels, rendered the way chat renders them.

An `Example` is a question, the answer to learn, and optionally `image_labels`: the ImageNet
labels (with probabilities) of the photo the question is about. `Renderer.encode` turns it
into `input_ids` and `labels` where every prompt token is -100, so the loss counts the
answer (and the end-of-turn token that stops generation) only.

The prompt goes through the very path chat uses: `mmchat.prompt.render_messages` with the
configured system prompt, `defuse_special_tokens`, and then, for the offline stand-in,
`mmchat.backends.offline.flatten` (which adds `OFFLINE_SYSTEM_HINT`) with each photo
replaced by the bracketed line `describe_image` writes for real photos, and the tokenizer's
chat template; for LLaVA-kind models, the processor's chat template. So an adapter sees at
train time exactly the tokens chat sends. `image_labels_for` invents plausible classifier
output for an ImageNet class name (seeded), so examples about photos need no photos.

It does not batch (see `collate`), train, or read dataset files other than JSONL rows given
to it; LLaVA image examples (real pixels) are not supported here and are refused by name.
"""

from __future__ import annotations

import hashlib
import json
import random
from dataclasses import dataclass, field
from typing import Any, Iterable, Sequence

from mmchat.errors import UserFacingError

IGNORE = -100  # the label of a token the loss does not count


@dataclass(frozen=True)
class Example:
    question: str
    answer: str
    image_labels: tuple[tuple[str, float], ...] = ()  # the photo's classifier labels; () = no photo
    kind: str = ""  # what the example exercises ("photo", "colour", ...), for the dataset summary
    expected: str = ""  # the word a correct answer contains, or alternatives "bird|robin" (evaluation)
    extra: dict[str, Any] = field(default_factory=dict, compare=False)

    def to_json(self) -> dict[str, Any]:
        data: dict[str, Any] = {"question": self.question, "answer": self.answer}
        if self.image_labels:
            data["image_labels"] = [[label, round(p, 4)] for label, p in self.image_labels]
        if self.kind:
            data["kind"] = self.kind
        if self.expected:
            data["expected"] = self.expected
        return data


def imagenet_classes() -> list[str]:
    from open_clip.zero_shot_metadata import IMAGENET_CLASSNAMES

    return list(IMAGENET_CLASSNAMES)


def image_labels_for(class_name: str, rng: random.Random) -> tuple[tuple[str, float], ...]:
    """Three (label, probability) pairs as the offline classifier would give for a photo of
    `class_name`: the class first (35-95%), then two others, often of the same broad kind."""
    from mmchat.backends.offline import BROAD_KINDS

    classes = imagenet_classes()
    if class_name not in classes:
        close = [c for c in classes if class_name.lower() in c.lower()][:5]
        raise UserFacingError(
            f"image_label {class_name!r} is not an ImageNet class name"
            + (f"; did you mean one of {close}?" if close else "; accepted: one of the 1000 ImageNet-1k class names")
        )
    index = classes.index(class_name)
    family = next((list(r) for r, _ in BROAD_KINDS if index in r), None)
    kindless = [i for i in range(len(classes)) if not any(i in r for r, _ in BROAD_KINDS)]
    others: list[str] = []
    while len(others) < 2:
        # Like the real classifier: look-alikes of the same kind, or things of no broad kind
        # (a stray "Samoyed 2%" under a water tower would make the subject "a dog").
        pool = family if family and rng.random() < 0.6 else kindless
        candidate = classes[rng.choice(list(pool))]
        if candidate != class_name and candidate not in others:
            others.append(candidate)
    top = rng.uniform(0.35, 0.95)
    second = rng.uniform(0.02, (1 - top) * 0.8)
    third = rng.uniform(0.005, min(second, 1 - top - second))
    return ((class_name, top), (others[0], second), (others[1], third))


def example_from_row(row: Any, number: int, seed: int = 0) -> Example:
    """One JSONL row {"question", "answer", optional "image_label"} -> an Example (row `number` for messages)."""
    if not isinstance(row, dict):
        raise UserFacingError(f"dataset row {number} is not a JSON object; accepted: {{\"question\", \"answer\", "
                              "optional \"image_label\"}")
    unknown = sorted(set(row) - {"question", "answer", "image_label", "image_labels", "kind", "expected"})
    if unknown:
        raise UserFacingError(f"dataset row {number} has unknown key(s) {unknown}; accepted: question, answer, "
                              "image_label (an ImageNet class name)")
    for key in ("question", "answer"):
        if not isinstance(row.get(key), str) or not row[key].strip():
            raise UserFacingError(f"dataset row {number}: {key} is {row.get(key)!r}; accepted: a non-empty string")
    labels: tuple[tuple[str, float], ...] = ()
    if row.get("image_labels"):
        labels = tuple((str(label), float(p)) for label, p in row["image_labels"])
    elif row.get("image_label"):
        digest = hashlib.sha256(f"{seed}:{number}:{row['image_label']}".encode()).digest()
        labels = image_labels_for(str(row["image_label"]), random.Random(digest))
    return Example(row["question"], row["answer"], labels, str(row.get("kind", "")), str(row.get("expected", "")))


def read_jsonl(lines: Iterable[str], seed: int = 0) -> list[Example]:
    examples = []
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as err:
            raise UserFacingError(f"dataset line {number} is not JSON ({err.msg})") from None
        examples.append(example_from_row(row, number, seed))
    if not examples:
        raise UserFacingError("the dataset has no examples; accepted: JSONL, one {\"question\", \"answer\"} per line")
    return examples


def dataset_digest(examples: Sequence[Example]) -> str:
    """sha256 of the examples as canonical JSON lines (what the card records)."""
    digest = hashlib.sha256()
    for example in examples:
        digest.update(json.dumps(example.to_json(), sort_keys=True, ensure_ascii=False).encode() + b"\n")
    return digest.hexdigest()


@dataclass(frozen=True)
class Encoded:
    input_ids: list[int]
    labels: list[int]

    @property
    def prompt_length(self) -> int:
        return next((i for i, label in enumerate(self.labels) if label != IGNORE), len(self.labels))


class Renderer:
    """Renders examples for one model as chat would, and encodes them with answer-only labels.

    `kind`: the preset's backend kind ("offline", or "llava"/"tiny"); `tokenizer`: the
    tokenizer (offline) or processor (LLaVA kinds) that `load_base_copy` returned.
    """

    def __init__(self, kind: str, tokenizer: Any, system_prompt: str, max_length: int = 256) -> None:
        self.kind = kind
        self.processor = tokenizer if kind != "offline" else None
        self.tokenizer = getattr(tokenizer, "tokenizer", tokenizer)
        self.system_prompt = system_prompt
        self.max_length = max_length
        self.eos_id = self.tokenizer.convert_tokens_to_ids(self.tokenizer.eos_token)

    def messages(self, example: Example) -> tuple[list[dict[str, Any]], list[str]]:
        """Chat-template messages as the session builds them, and the text of each image."""
        from mmchat.backends.base import defuse_special_tokens
        from mmchat.backends.offline import describe_image
        from mmchat.prompt import Turn, render_messages

        images = ("photo",) if example.image_labels else ()
        messages, _ = render_messages(self.system_prompt, [Turn("user", example.question, images)])
        special = list(self.tokenizer.all_special_tokens)
        if self.processor is not None:
            special.append(getattr(self.processor, "image_token", "<image>"))
        image_texts = [describe_image(1, example.image_labels)] if example.image_labels else []
        return defuse_special_tokens(messages, special), image_texts

    def prompt_ids(self, example: Example, answer: str | None = None) -> list[int]:
        """Token ids of the prompt chat sends (with `answer`: the prompt plus that assistant turn)."""
        messages, image_texts = self.messages(example)
        if self.kind == "offline":
            from mmchat.backends.offline import flatten

            flat = flatten(messages, image_texts)
            if answer is None:
                return list(self.tokenizer.apply_chat_template(flat, add_generation_prompt=True, return_dict=True)
                            ["input_ids"])
            flat.append({"role": "assistant", "content": answer})
            return list(self.tokenizer.apply_chat_template(flat, return_dict=True)["input_ids"])
        if image_texts:
            raise UserFacingError(
                f"examples about photos (image_label) train the offline stand-in only; the {self.kind} model "
                "sees pixels, which this engine does not train on yet"
            )
        if answer is not None:
            messages = [*messages, {"role": "assistant", "content": [{"type": "text", "text": answer}]}]
        text = self.processor.apply_chat_template(messages, add_generation_prompt=answer is None, tokenize=False)
        return list(self.processor(text=[text], return_tensors=None)["input_ids"][0])

    def encode(self, example: Example) -> Encoded:
        prompt = self.prompt_ids(example)
        full = self.prompt_ids(example, example.answer)
        if full[: len(prompt)] != prompt:
            raise UserFacingError(
                "the chat template renders the prompt differently once an answer follows; "
                f"answer-only labels cannot be placed (question: {example.question[:60]!r})"
            )
        answer = full[len(prompt):]
        if self.eos_id in answer:  # learn to end the turn; what the template adds after it is not generated
            answer = answer[: answer.index(self.eos_id) + 1]
        else:
            answer = [*answer, self.eos_id]
        ids = prompt + answer
        if len(ids) > self.max_length:
            raise UserFacingError(
                f"an example is {len(ids)} tokens long, more than max_length {self.max_length}; raise max_length "
                f"or shorten it (question: {example.question[:60]!r})"
            )
        return Encoded(ids, [IGNORE] * len(prompt) + answer)
