"""A question's language, and what answers it when the model cannot write that language.

- `question_language(text)`: "zh" when CJK characters make up at least `CHINESE_SHARE` of the
  question's letters and digits (`mmchat.knowledge.retrieval.cjk_share`), else "en". One Hanzi
  carries about what three Latin letters do (a Chinese word is ~1.5 characters, an English one
  ~4.7 letters), so a quarter of the letters is about half the words: "LoRA 的 rank 是多少?"
  (0.33) is Chinese, "What does 龙井 mean?" (0.14) and pinyin ("LoRA de rank shi duoshao?", 0)
  are English. On the Chinese questions of tests/fixtures/rag_eval*, full of English terms, the
  lowest share is 0.26 ("gpu_memory_utilization 最后设成了多少？"); their English questions
  that quote a Chinese name stay below 0.05.
- `instruction(question, languages)`: for a model that writes more than one language, the line
  the system prompt gets so the answer follows the question's language (`mmchat.prompt`).
- `unwritten_language(question, languages)`: "zh" for a Chinese question to a model whose preset
  does not list "zh" (the offline SmolLM2-135M), else None.
- `fallback_stream(...)`: the answer such a question gets instead of the model's: a short note in
  Chinese (the model cannot write Chinese; below are the supporting passages, in the documents'
  own language), the retrieved sources' best sentences numbered `[n]` as in the prompt (the
  passage the preset's `source_chars` trims them to, else the evidence shown under answers), and
  what to do for a generated answer. With no relevant source the note says none was found. It
  is a `TextStream`, so the session streams and records it like any answer; its stats say
  `finish_reason="language-fallback"` and count no tokens (the model did not run).

The model's own answer is left out on purpose: asked in Chinese, SmolLM2-135M misreads the
question and miscopies numbers from the sources ("4096 × 4032 = 178564", "龙云累茶" for
Longjing, measured on knowledge/demo), and a wrong number beside the right passage does harm.

It does not translate, does not call a model, and tells only Chinese from not-Chinese: Japanese
kana and Korean Hangul count as CJK (`cjk_share`), so such a question counts as "zh" too.
"""

from __future__ import annotations

import threading
import time
from typing import Any, Iterator, Mapping, Sequence

from mmchat.backends.base import GenerationStats, TextStream
from mmchat.knowledge.retrieval import cjk_share
from mmchat.prompt import LANGUAGE_INSTRUCTIONS, hit_sources

CHINESE_SHARE = 0.25
FINISH_REASON = "language-fallback"
TRACE_NOTE = "the model does not write Chinese: the answer is the supporting passages, not generated"


def question_language(text: str) -> str:
    """"zh" when the question's letters are CJK by at least `CHINESE_SHARE`, else "en"."""
    return "zh" if cjk_share(text or "") >= CHINESE_SHARE else "en"


def instruction(question: str, languages: Sequence[str]) -> str:
    """The answer-language line for the system prompt; "" for a model that writes one language
    (nothing to choose) or a question in a language it cannot write (see `fallback_stream`)."""
    language = question_language(question)
    if len(languages) < 2 or language not in languages:
        return ""
    return LANGUAGE_INSTRUCTIONS[language]


def unwritten_language(question: str, languages: Sequence[str]) -> str | None:
    """The question's language when it is Chinese and the model does not write it, else None."""
    language = question_language(question)
    return language if language == "zh" and language not in languages else None


def chinese_presets() -> list[str]:
    """Presets whose model writes Chinese (the test-only tiny model left out), for the note."""
    from mmchat.config import PRESETS

    return [p.name for p in PRESETS.values() if "zh" in p.languages and p.kind != "tiny"]


def fallback_text(preset: str, retrieval: Mapping[str, Any] | None) -> str:
    """The answer to a Chinese question for a model that cannot write Chinese (see the module)."""
    hits = list((retrieval or {}).get("hits", []))
    hits = hits[: (retrieval or {}).get("used", len(hits))]
    lines = [f"当前模型（{preset}）不会写中文，所以这条回答不由模型生成。"]
    if hits:
        lines[0] += "下面是知识库中支持这个问题的原文段落（保留文档原来的语言），编号与下方的来源一致："
        for source in hit_sources(hits, prefer=("passage", "evidence")):
            lines.append(f"[{source.number}] {source.where}：“{' '.join(source.text.split())}”")
    elif retrieval is None:
        lines[0] += "这次回答没有使用知识库，所以也没有可以给出的原文段落。"
    else:
        lines[0] += "知识库中没有找到与这个问题相关的段落。"
    others = "、".join(chinese_presets())
    lines.append("如需模型生成的回答，请用英文提问" + (f"，或换用能写中文的模型（{others}）。" if others else "。"))
    return "\n\n".join(lines)


class FallbackStream(TextStream):
    """A fixed answer streamed paragraph by paragraph through the session's usual loop."""

    def __init__(self, text: str, stop: threading.Event | None = None) -> None:
        self.text, self.stop = text, stop
        self.stats = GenerationStats()

    def __iter__(self) -> Iterator[str]:
        pieces = self.text.split("\n\n")
        for index, piece in enumerate(pieces):
            if self.stop is not None and self.stop.is_set():
                self.stats.finish_reason = "cancelled"
                break
            if index == 0:
                self.stats.time_to_first_token_s = time.perf_counter() - self.stats.started_at
            yield piece if index == 0 else "\n\n" + piece
        else:
            self.stats.finish_reason = FINISH_REASON
        self.stats.total_s = time.perf_counter() - self.stats.started_at


def fallback_stream(preset: str, retrieval: dict[str, Any] | None, stop: threading.Event | None = None) -> FallbackStream:
    """`fallback_text` as a stream; every retrieved source counts as used (`retrieval["used"]`)."""
    if retrieval is not None:
        retrieval["used"] = len(retrieval.get("hits", []))
    return FallbackStream(fallback_text(preset, retrieval), stop)
