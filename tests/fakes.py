"""A fake backend for session logic tests that need no model: answers in microseconds.

`EchoBackend` says which adapter answered and repeats the question ("[alpha] what is up"), so a
test can see which adapter and which prompt reached the backend. It fakes only the model: the
session, prompt building and adapter-name checks (`AdapterHost.check`) are the real ones. Use
the real backends (tiny LLaVA, offline SmolLM2) for anything about generation itself.
"""

from __future__ import annotations

import threading
from typing import Any, Iterator, Sequence

from mmchat.adapters.host import AdapterHost
from mmchat.backends.base import Backend, BackendInfo, GenerationParams, GenerationStats, PreparedPrompt, TextStream


class NamedAdapters(AdapterHost):
    """The real host's name checks with these adapters "loaded" and no model behind them."""

    def __init__(self, names: Sequence[str]) -> None:
        super().__init__(model=None)
        self._names = list(names)


class _EchoStream(TextStream):
    def __init__(self, words: list[str], prompt_tokens: int, max_new_tokens: int, stop: threading.Event | None):
        self.words, self.stop, self.max_new_tokens = words, stop, max_new_tokens
        self.stats = GenerationStats(prompt_tokens=prompt_tokens)

    def __iter__(self) -> Iterator[str]:
        for index, word in enumerate(self.words[: self.max_new_tokens]):
            if self.stop is not None and self.stop.is_set():
                self.stats.finish_reason = "cancelled"
                return
            if index == 0:
                self.stats.time_to_first_token_s = 0.0
            self.stats.output_tokens += 1
            yield word if index == 0 else " " + word
        self.stats.finish_reason = "stop"


class EchoBackend(Backend):
    def __init__(self, adapters: Sequence[str] = ("alpha", "beta"), context_length: int = 2048) -> None:
        self.info = BackendInfo(preset="echo", kind="fake", source="fake:echo", device="cpu", dtype="none",
                                quantization="none", context_length=context_length, supports_adapters=True)
        self.adapters = NamedAdapters(adapters)
        self.prepared: list[PreparedPrompt] = []  # every prompt it was given, in order

    def prepare(self, messages: Sequence[dict], images: Sequence[Any], adapter: str | None = None) -> PreparedPrompt:
        question = next(item["text"] for m in reversed(messages) if m["role"] == "user"
                        for item in m["content"] if item["type"] == "text")
        words = sum(len(item.get("text", "").split()) + 1 for m in messages for item in m["content"])
        prompt = PreparedPrompt({"question": question, "images": len(images)}, words, self.adapters.check(adapter))
        self.prepared.append(prompt)
        return prompt

    def stream(self, prompt: PreparedPrompt, params: GenerationParams, stop: threading.Event | None = None) -> TextStream:
        words = [f"[{prompt.adapter or 'base'}]", *prompt.inputs["question"].split()]
        return _EchoStream(words, prompt.prompt_tokens, params.max_new_tokens, stop)
