"""Training examples -> token ids with answer-only labels, rendered the way chat renders them.

An `Example` is a question, the answer to learn, and optionally `image_labels`: the ImageNet
labels (with probabilities) of the photo the question is about (the built-in generators), or
`images`: paths of real, validated image copies (`mmchat.training.datasets` makes them). A
multi-turn example carries the whole conversation in `turns` ((role, text) pairs); its
`question`/`answer` are then the last user and assistant texts, so code that reads only those
keeps working. In `turns`, user texts keep their `<image>` markers (`IMAGE_MARKER`): image i
belongs to the turn holding marker i, and with no markers at all every image belongs to the
first user turn. Like chat, a turn's images come before its text.

`Renderer.encode` turns an example into `input_ids` and `labels` where every token is -100
except each assistant turn's text and the end-of-turn token after it, so the loss counts the
answers only (every answer of a multi-turn example). `supervised_spans` decodes the labelled
runs from those very labels, so what the preview highlights is what the collator counts.

The prompt goes through the very path chat uses: `mmchat.prompt.render_messages` with the
configured system prompt, `defuse_special_tokens`, and then, for the offline stand-in,
`mmchat.backends.offline.flatten` (which adds `OFFLINE_SYSTEM_HINT`) with each photo
replaced by the bracketed line `describe_image` writes for real photos, and the tokenizer's
chat template; for LLaVA-kind models, the processor's chat template. So an adapter sees at
train time exactly the tokens chat sends. Real images become their text through `describe`
(`image_describer(pathway)` builds one over the offline image pathway, numbering images
1..n as chat does). `image_labels_for` invents plausible classifier output for an ImageNet
class name (seeded), so examples about photos need no photos.

It does not batch (see `collate`), train, or read dataset files (see `datasets`; `read_jsonl`
stays for today's rows); LLaVA image examples (real pixels) are refused here by name:
`mmchat.training.pixels.PixelRenderer`, the engine's renderer for LLaVA kinds, encodes them
(through the `pixel_images` hook).
"""

from __future__ import annotations

import functools
import hashlib
import json
import random
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

from mmchat.errors import UserFacingError

IGNORE = -100  # the label of a token the loss does not count
IMAGE_MARKER = "<image>"  # where an image goes in a user text (LLaMA-Factory's convention)
_MARKER_SPACE = re.compile(r"[ \t]*<image>[ \t]*\n?")


def strip_markers(text: str) -> str:
    """`text` without its `<image>` markers (and the spaces or line break around each)."""
    return _MARKER_SPACE.sub(" ", text).strip() if IMAGE_MARKER in text else text


@dataclass(frozen=True)
class Example:
    question: str  # the (last) user text, without <image> markers
    answer: str  # the (last) assistant text
    image_labels: tuple[tuple[str, float], ...] = ()  # the photo's classifier labels; () = no photo
    kind: str = ""  # what the example exercises ("photo", "colour", ...), for the dataset summary
    expected: str = ""  # the word a correct answer contains, or alternatives "bird|robin" (evaluation)
    extra: dict[str, Any] = field(default_factory=dict, compare=False)
    turns: tuple[tuple[str, str], ...] = ()  # a whole conversation ("user"|"assistant", text); () = one turn
    images: tuple[str, ...] = ()  # absolute paths of validated image copies, in order

    def conversation(self) -> tuple[tuple[str, str], ...]:
        """The turns to render: `turns`, or the one question and its answer."""
        return self.turns or (("user", self.question), ("assistant", self.answer))

    def to_json(self) -> dict[str, Any]:
        data: dict[str, Any] = {"question": self.question, "answer": self.answer}
        if self.image_labels:
            data["image_labels"] = [[label, round(p, 4)] for label, p in self.image_labels]
        if self.kind:
            data["kind"] = self.kind
        if self.expected:
            data["expected"] = self.expected
        if self.turns:  # only when set, so the digests of older datasets stay what they were
            data["turns"] = [[role, text] for role, text in self.turns]
        if self.images:
            data["images"] = list(self.images)
        return data

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> "Example":
        """The inverse of `to_json` (for examples handed to another process as JSON)."""
        return cls(
            str(data["question"]), str(data["answer"]),
            tuple((str(label), float(p)) for label, p in data.get("image_labels", ())),
            str(data.get("kind", "")), str(data.get("expected", "")),
            turns=tuple((str(role), str(text)) for role, text in data.get("turns", ())),
            images=tuple(str(path) for path in data.get("images", ())),
        )


def imagenet_classes() -> list[str]:
    """The 1000 ImageNet-1k class names (open_clip's list)."""
    return list(_imagenet_classnames())


@functools.lru_cache(maxsize=1)
def _imagenet_classnames() -> tuple[str, ...]:
    import importlib.util
    import sys

    if "open_clip" not in sys.modules:
        # The list is a plain module, but importing the open_clip package loads torch (~5 s);
        # a dataset check that only needs the names loads that one file.
        spec = importlib.util.find_spec("open_clip")
        folders = list(spec.submodule_search_locations or []) if spec else []
        path = Path(folders[0]) / "zero_shot_metadata.py" if folders else None
        if path is not None and path.is_file():
            module_spec = importlib.util.spec_from_file_location("_mmchat_imagenet_names", path)
            module = importlib.util.module_from_spec(module_spec)
            module_spec.loader.exec_module(module)
            return tuple(module.IMAGENET_CLASSNAMES)
    from open_clip.zero_shot_metadata import IMAGENET_CLASSNAMES

    return tuple(IMAGENET_CLASSNAMES)


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
        data = example.to_json()
        if example.images:  # the copies are named by their content hash; where they lie does not count
            data["images"] = [Path(path).name for path in example.images]
        digest.update(json.dumps(data, sort_keys=True, ensure_ascii=False).encode() + b"\n")
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
    tokenizer (offline) or processor (LLaVA kinds) that `load_base_copy` returned;
    `describe(paths) -> texts`: the text each real image becomes on the offline model, numbered
    1..n in order (see `image_describer`); without it, examples with real images are refused.
    """

    def __init__(self, kind: str, tokenizer: Any, system_prompt: str, max_length: int = 256,
                 describe: Callable[[list[str]], list[str]] | None = None) -> None:
        self.kind = kind
        self.processor = tokenizer if kind != "offline" else None
        self.tokenizer = getattr(tokenizer, "tokenizer", tokenizer)
        self.system_prompt = system_prompt
        self.max_length = max_length
        self.describe = describe
        self.eos_id = self.tokenizer.convert_tokens_to_ids(self.tokenizer.eos_token)

    def _name(self, example: Example) -> str:
        return f"question: {example.question[:60]!r}"

    def image_texts(self, example: Example) -> list[str]:
        """The text each of the example's images becomes (offline), in order; [] without images."""
        if example.image_labels and example.images:
            raise UserFacingError(f"an example has both image_labels and images; accepted: one ({self._name(example)})")
        if self.kind != "offline" and (example.image_labels or example.images):
            if example.images:
                raise UserFacingError(
                    f"examples with images ({', '.join(Path(p).name for p in example.images)}) cannot train the "
                    f"{self.kind} model yet: training on pixels is not supported; use the offline preset, or "
                    f"remove the images ({self._name(example)})"
                )
            raise UserFacingError(
                f"examples about photos (image_label) train the offline stand-in only; the {self.kind} model "
                "sees pixels, which this engine does not train on yet"
            )
        if example.image_labels:
            from mmchat.backends.offline import describe_image

            return [describe_image(1, example.image_labels)]
        if not example.images:
            return []
        if self.describe is None:
            raise UserFacingError(
                f"an example has images ({', '.join(Path(p).name for p in example.images)}) but this renderer has "
                f"no image describer; pass describe= (see image_describer) ({self._name(example)})"
            )
        texts = list(self.describe(list(example.images)))
        if len(texts) != len(example.images):
            raise UserFacingError(f"the image describer gave {len(texts)} texts for {len(example.images)} images "
                                  f"({self._name(example)})")
        return texts

    def turns(self, example: Example) -> list[Any]:
        """The example's conversation as the session's `Turn`s, each image in its turn (ids "image-1", ...)."""
        from mmchat.prompt import Turn

        conversation = example.conversation()
        count = len(example.images) or (1 if example.image_labels else 0)
        user_turns = [i for i, (role, _) in enumerate(conversation) if role == "user"]
        markers = [text.count(IMAGE_MARKER) if role == "user" else 0 for role, text in conversation]
        if count and not any(markers) and user_turns:
            markers[user_turns[0]] = count  # no markers: every image before the first user text
        if sum(markers) != count:
            raise UserFacingError(f"an example has {sum(markers)} {IMAGE_MARKER} markers and {count} images; "
                                  f"accepted: as many markers as images, or none ({self._name(example)})")
        turns, number = [], 0
        for (role, text), n in zip(conversation, markers):
            ids = tuple(f"image-{number + k + 1}" for k in range(n))
            number += n
            turns.append(Turn(role, strip_markers(text) if role == "user" else text, ids))
        return turns

    def _ids(self, turns: Sequence[Any], image_texts: Sequence[str], generation_prompt: bool) -> list[int]:
        """Token ids of the conversation `turns` as chat renders it."""
        from mmchat.backends.base import defuse_special_tokens
        from mmchat.prompt import render_messages

        messages, _ = render_messages(self.system_prompt, list(turns))
        special = list(self.tokenizer.all_special_tokens)
        if self.processor is not None:
            special.append(getattr(self.processor, "image_token", IMAGE_MARKER))
        messages = defuse_special_tokens(messages, special)
        if self.kind == "offline":
            from mmchat.backends.offline import flatten

            flat = flatten(messages, image_texts)  # a prefix of the turns uses the first texts only
            return list(self.tokenizer.apply_chat_template(flat, add_generation_prompt=generation_prompt,
                                                           return_dict=True)["input_ids"])
        text = self.processor.apply_chat_template(messages, add_generation_prompt=generation_prompt, tokenize=False)
        images = self.pixel_images(sum(len(turn.image_ids) for turn in turns))
        return list(self.processor(text=[text], images=images, return_tensors=None)["input_ids"][0])

    def pixel_images(self, count: int) -> list[Any] | None:
        """The first `count` images of the example being encoded, for a LLaVA processor to expand
        into image tokens; None here (see `mmchat.training.pixels.PixelRenderer`)."""
        return None

    def prompt_ids(self, example: Example, answer: str | None = None) -> list[int]:
        """Token ids of the prompt chat sends for the example's last answer (with `answer`: the
        prompt plus that assistant turn)."""
        from mmchat.prompt import Turn

        texts = self.image_texts(example)
        turns = self.turns(example)
        last = max(i for i, t in enumerate(turns) if t.role == "assistant")
        turns = turns[:last]
        if answer is None:
            return self._ids(turns, texts, True)
        return self._ids([*turns, Turn("assistant", answer)], texts, False)

    def _encode(self, example: Example) -> Encoded:
        texts = self.image_texts(example)
        turns = self.turns(example)
        answers = [i for i, turn in enumerate(turns) if turn.role == "assistant"]
        if not answers:
            raise UserFacingError(f"an example has no assistant turn; accepted: at least one answer "
                                  f"({self._name(example)})")
        ids: list[int] = []
        labels: list[int] = []
        for index in answers:
            prompt = self._ids(turns[:index], texts, True)
            full = self._ids(turns[: index + 1], texts, False)
            if prompt[: len(ids)] != ids or full[: len(prompt)] != prompt:
                raise UserFacingError(
                    "the chat template renders the prompt differently once an answer follows; "
                    f"answer-only labels cannot be placed ({self._name(example)})"
                )
            answer = full[len(prompt):]
            if self.eos_id in answer:  # learn to end the turn; what the template adds after it is not generated
                answer = answer[: answer.index(self.eos_id) + 1]
            else:
                answer = [*answer, self.eos_id]
            labels += [IGNORE] * (len(prompt) - len(ids)) + answer
            ids = prompt + answer
        return Encoded(ids, labels)

    def token_count(self, example: Example) -> int:
        """How many tokens the example is once rendered (the prompt and every answer)."""
        return len(self._encode(example).input_ids)

    def encode(self, example: Example, check_length: bool = True) -> Encoded:
        """Token ids and labels; longer than `max_length` is refused with its token count
        (unless `check_length` is False: the dataset report counts them instead)."""
        encoded = self._encode(example)
        if check_length and len(encoded.input_ids) > self.max_length:
            raise UserFacingError(
                f"an example is {len(encoded.input_ids)} tokens long, more than max_length {self.max_length}; raise "
                f"max_length or shorten it ({self._name(example)})"
            )
        return encoded


def image_describer(pathway: Any, limits: Any = None) -> Callable[[list[str]], list[str]]:
    """`describe(paths)` for `Renderer`: opens each image copy as chat opens an attachment
    (re-validated, EXIF orientation applied, RGB) and returns `pathway.render(images)`, one
    text per image numbered 1..n. The paths are copies named by their SHA-256, as
    `datasets.read_dataset` writes them; `limits`: the `UploadLimits` to re-check them with."""

    def describe(paths: list[str]) -> list[str]:
        from mmchat.attachments import load_attachment
        from mmchat.config import UploadLimits

        images = []
        for path in map(Path, paths):
            attachment = load_attachment(path.parent, path.name.split(".")[0], display_name=path.name,
                                         limits=limits or UploadLimits())
            images.append(attachment.open_image())
        return list(pathway.render(images))

    return describe


def supervised_spans(tokenizer: Any, encoded: Encoded) -> list[tuple[str, bool]]:
    """The decoded text of `encoded` in runs, True where the labels count the tokens (special
    tokens kept), read from `encoded.labels`: the very labels the collator batches."""
    tokenizer = getattr(tokenizer, "tokenizer", tokenizer)
    spans: list[tuple[str, bool]] = []
    start = 0
    for end in range(1, len(encoded.input_ids) + 1):
        counted = encoded.labels[start] != IGNORE
        if end == len(encoded.input_ids) or (encoded.labels[end] != IGNORE) != counted:
            spans.append((tokenizer.decode(encoded.input_ids[start:end], skip_special_tokens=False), counted))
            start = end
    return spans
