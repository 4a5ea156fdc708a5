"""The one interface every chat backend implements, and the value types it speaks.

A backend turns a prompt (chat-template messages plus the images they refer to, in order)
into a stream of text deltas. It owns model weights; it holds no conversation state (that is
`mmchat.session.ChatSession`) and renders nothing. This module imports no torch.
"""

from __future__ import annotations

import threading
import time
from abc import ABC, abstractmethod
from dataclasses import asdict, dataclass, field
from typing import Any, Iterator, Sequence

from mmchat.config import AnswerPolicy
from mmchat.errors import UserFacingError

# Chat-template messages: {"role": "system"|"user"|"assistant", "content": [
#   {"type": "text", "text": "..."} | {"type": "image"}]}. Image items are placeholders; the
# images themselves travel separately, in order of appearance.
PromptMessage = dict[str, Any]

MAX_NEW_TOKENS_LIMIT = 4096


@dataclass(frozen=True)
class GenerationParams:
    max_new_tokens: int = 256
    temperature: float = 0.2
    top_p: float = 0.9
    repetition_penalty: float = 1.0  # 1.0: off
    no_repeat_ngram_size: int = 0  # 0: off

    def __post_init__(self) -> None:
        if not isinstance(self.max_new_tokens, int) or not 1 <= self.max_new_tokens <= MAX_NEW_TOKENS_LIMIT:
            raise UserFacingError(
                f"max_new_tokens {self.max_new_tokens!r} is out of range; use 1..{MAX_NEW_TOKENS_LIMIT}"
            )
        if not 0.0 <= float(self.temperature) <= 2.0:
            raise UserFacingError(f"temperature {self.temperature!r} is out of range; use 0..2 (0 = greedy)")
        if not 0.0 < float(self.top_p) <= 1.0:
            raise UserFacingError(f"top_p {self.top_p!r} is out of range; use a value in (0, 1]")
        if not 1.0 <= float(self.repetition_penalty) <= 2.0:
            raise UserFacingError(f"repetition_penalty {self.repetition_penalty!r} is out of range; use 1.0..2.0")
        if not isinstance(self.no_repeat_ngram_size, int) or not 0 <= self.no_repeat_ngram_size <= 20:
            raise UserFacingError(f"no_repeat_ngram_size {self.no_repeat_ngram_size!r} is out of range; use 0..20")

    @classmethod
    def for_policy(cls, policy: AnswerPolicy, **values: Any) -> "GenerationParams":
        """Params with a preset's repetition controls (`values` sets the rest)."""
        return cls(repetition_penalty=policy.repetition_penalty,
                   no_repeat_ngram_size=policy.no_repeat_ngram_size, **values)

    def generate_kwargs(self) -> dict[str, Any]:
        """Keyword arguments for transformers' `generate` (greedy when temperature is 0)."""
        kwargs: dict[str, Any] = {"max_new_tokens": self.max_new_tokens, "do_sample": False}
        if self.temperature > 0:
            kwargs.update(do_sample=True, temperature=float(self.temperature), top_p=float(self.top_p))
        if self.repetition_penalty != 1.0:
            kwargs["repetition_penalty"] = float(self.repetition_penalty)
        if self.no_repeat_ngram_size:
            kwargs["no_repeat_ngram_size"] = int(self.no_repeat_ngram_size)
        return kwargs


@dataclass
class GenerationStats:
    """Filled in while a stream runs; final once the stream is exhausted."""

    prompt_tokens: int = 0
    output_tokens: int = 0
    time_to_first_token_s: float | None = None
    total_s: float = 0.0
    finish_reason: str = ""  # "stop" (model ended), "length", "cancelled", "error"
    started_at: float = field(default_factory=time.perf_counter, repr=False)

    @property
    def tokens_per_s(self) -> float:
        decode_s = self.total_s - (self.time_to_first_token_s or 0.0)
        if self.output_tokens <= 1 or decode_s <= 0:
            return 0.0
        return (self.output_tokens - 1) / decode_s

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data.pop("started_at")
        data["tokens_per_s"] = round(self.tokens_per_s, 2)
        return data


@dataclass(frozen=True)
class BackendInfo:
    preset: str
    kind: str
    source: str
    device: str
    dtype: str
    quantization: str
    context_length: int
    description: str = ""
    is_stand_in: bool = False  # the offline stand-in is not a vision-language model
    answer: AnswerPolicy = AnswerPolicy()  # sources per prompt, repetition control (the preset's)
    supports_adapters: bool = False  # LoRA adapters can be loaded and chosen per request
    languages: tuple[str, ...] = ("en",)  # what the model writes well (the preset's); see mmchat.language


class TextStream(ABC):
    """An iterator of text deltas with `stats` that are final once it is exhausted."""

    stats: GenerationStats

    @abstractmethod
    def __iter__(self) -> Iterator[str]: ...


@dataclass(frozen=True)
class PreparedPrompt:
    """A rendered, tokenized prompt ready for `Backend.stream` (its inputs are backend-specific)."""

    inputs: dict[str, Any]
    prompt_tokens: int
    adapter: str | None = None  # the LoRA adapter to answer with (None: the bare base)


def defuse_special_tokens(messages: Sequence[PromptMessage], special: Sequence[str]) -> list[PromptMessage]:
    """A copy of `messages` whose text cannot contain the model's special tokens.

    Text comes from people and from uploaded documents: a literal `<image>` in it would count
    as an image placeholder (the processor then refuses the prompt) and `<|im_start|>` would
    open a new role. A zero-width space inside each keeps the text readable and inert.
    """
    markers = sorted({t for t in special if t and len(t) > 1}, key=len, reverse=True)
    result = []
    for message in messages:
        content = []
        for item in message["content"]:
            if item.get("type") == "text":
                text = item["text"]
                for marker in markers:
                    if marker in text:
                        text = text.replace(marker, marker[0] + "\u200b" + marker[1:])
                item = {**item, "text": text}
            content.append(item)
        result.append({**message, "content": content})
    return result


class Backend(ABC):
    info: BackendInfo

    @abstractmethod
    def prepare(
        self, messages: Sequence[PromptMessage], images: Sequence[Any], adapter: str | None = None
    ) -> PreparedPrompt:
        """Render and tokenize a prompt; its `prompt_tokens` count image tokens too.

        `adapter` names the LoRA adapter to answer with (None or "base": the bare base); it
        travels with the prepared prompt, and an unknown one is refused here, naming the
        loaded ones.

        Separate from `stream` so the session can fit the context with the very inputs it
        then generates from, instead of rendering (and running the image pipeline) twice.
        """

    @abstractmethod
    def stream(
        self, prompt: PreparedPrompt, params: GenerationParams, stop: threading.Event | None = None
    ) -> TextStream:
        """Start generating; iterate the result for text deltas. Setting `stop` ends it early."""

    def memory_summary(self) -> str:
        """One line about the memory the weights take (for the status line)."""
        return ""

    def base_fingerprint(self) -> str:
        """Identifies the loaded base for adapter cards (config + vocabulary); "" if none."""
        return ""
