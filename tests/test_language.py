"""Answers in the question's language where the model can (`mmchat.language`).

- a question is Chinese by the CJK share of its letters; mixed-script questions count by that
  share, pinyin counts as English;
- presets declare the languages their model writes, checked like other fields, overridable in
  the config file;
- a preset that writes Chinese gets an answer-language line in its system prompt;
- on the offline preset (English only) a Chinese question is answered with a note in Chinese
  and the supporting passages, streamed like any answer, the model not run; English questions
  are unchanged.

Real parts: the tiny random LLaVA (what is asserted is what it was given), the offline SmolLM2
on its shipped weights, the stand-in encoder, MiniLM, embedded Chroma in a temp dir.
"""

from __future__ import annotations

import threading
from pathlib import Path

import pytest

from mmchat import language
from mmchat.backends.base import GenerationParams
from mmchat.backends.registry import resolve_preset
from mmchat.config import PRESETS, ModelPreset, load_config
from mmchat.errors import ConfigError
from mmchat.prompt import LANGUAGE_INSTRUCTIONS
from mmchat.session import ChatSession, RagOptions

ROOT = Path(__file__).resolve().parents[1]
DEMO = ROOT / "knowledge" / "demo"
GREEDY = GenerationParams(max_new_tokens=4, temperature=0.0)


# ----- detection -----------------------------------------------------------------------------
@pytest.mark.parametrize("question, expected", [
    ("秩为 8 的 LoRA 要训练多少个参数？", "zh"),
    ("LoRA 的 rank 是多少?", "zh"),  # mixed script: 4 of 12 letters are CJK (0.33)
    ("gpu_memory_utilization 最后设成了多少？", "zh"),  # the lowest share among rag_eval's Chinese questions
    ("How many parameters does rank 8 LoRA train?", "en"),
    ("What does 龙井 mean?", "en"),  # an English question quoting a Chinese name (0.14)
    ("LoRA de rank shi duoshao?", "en"),  # pinyin is Latin letters
    ("Lóngjǐng chá chǎn zì nǎlǐ?", "en"),  # pinyin with tone marks too
    ("", "en"),
    ("？？ 42", "en"),
])
def test_a_question_is_chinese_by_the_share_of_its_letters(question, expected):
    assert language.question_language(question) == expected


def test_only_a_chinese_question_to_a_model_without_chinese_falls_back():
    assert language.unwritten_language("LoRA 的 rank 是多少?", ("en",)) == "zh"
    assert language.unwritten_language("LoRA 的 rank 是多少?", ("en", "zh")) is None
    assert language.unwritten_language("LoRA de rank shi duoshao?", ("en",)) is None
    assert language.instruction("LoRA 的 rank 是多少?", ("en", "zh")) == LANGUAGE_INSTRUCTIONS["zh"]
    assert language.instruction("What rank?", ("en", "zh")) == LANGUAGE_INSTRUCTIONS["en"]
    assert language.instruction("What rank?", ("en",)) == ""  # one language: nothing to choose


# ----- presets and config ----------------------------------------------------------------------
def test_presets_declare_the_languages_their_model_writes():
    assert PRESETS["offline"].languages == ("en",)
    for name in ("llava-1.5-7b-nf4", "llava-interleave-0.5b", "tiny"):
        assert "zh" in PRESETS[name].languages, name
    assert ModelPreset(name="x", kind="llava", source="hf-hub:a/b").languages == ("en",)


@pytest.mark.parametrize("languages, fragment", [
    (("fr",), "'fr' is not valid; choose one of: en, zh"),
    (("en", "en"), "names a language twice"),
    ((), "list one or more of: en, zh"),
    (["en"], "list one or more of"),
])
def test_bad_preset_languages_are_named(languages, fragment):
    with pytest.raises(ConfigError) as info:
        ModelPreset(name="x", kind="llava", source="hf-hub:a/b", languages=languages)
    assert fragment in str(info.value)


def test_the_config_file_can_override_a_presets_languages(tmp_path):
    path = tmp_path / "mmchat.toml"
    path.write_text('[model]\npreset = "llava-interleave-0.5b"\nsource = "local-dir:/models/mine"\nlanguages = ["en"]\n')
    preset = resolve_preset(load_config(path, env={}).model)
    assert preset.languages == ("en",) and preset.source == "local-dir:/models/mine"
    assert resolve_preset(load_config(env={}, overrides={"model": {"preset": "offline"}}).model).languages == ("en",)
    path.write_text('[model]\nlanguages = ["de"]\n')
    with pytest.raises(ConfigError, match="'de' is not valid"):
        load_config(path, env={})


# ----- the prompt of a model that writes Chinese -------------------------------------------------
def system_text(messages) -> str:
    return " ".join(c["text"] for m in messages if m["role"] == "system" for c in m["content"])


def test_a_preset_that_writes_chinese_is_asked_for_the_questions_language(tiny_backend, spy, tmp_path):
    assert "zh" in tiny_backend.info.languages
    session = ChatSession(tiny_backend, None, tmp_path / "up", system_prompt="Be brief.", params=GREEDY)
    list(session.send("LoRA 的 rank 是多少?"))
    assert system_text(spy[-1][0]) == "Be brief.\n" + LANGUAGE_INSTRUCTIONS["zh"]
    assert session.history[-1].stats["finish_reason"] != language.FINISH_REASON  # the model answered
    list(session.send("And in English?"))
    assert system_text(spy[-1][0]) == "Be brief.\n" + LANGUAGE_INSTRUCTIONS["en"]
    assert session.system_prompt == "Be brief."  # the person's own prompt is not changed


# ----- the fallback answer ---------------------------------------------------------------------------
def test_the_fallback_text_leads_with_the_passages_or_says_there_are_none():
    hits = [{"file_name": "guide.pdf", "page": 2, "text": "whole chunk", "passage": "The best\nsentences.",
             "evidence": "short"},
            {"file_name": "notes.md", "text": "只有原文。"}]
    text = language.fallback_text("offline", {"hits": hits, "used": 2})
    note, first, second, advice = text.split("\n\n")
    assert note.startswith("当前模型（offline）不会写中文") and "原文段落" in note
    assert first == "[1] guide.pdf, p. 2：“The best sentences.”" and second == "[2] notes.md：“只有原文。”"
    assert "请用英文提问" in advice and "llava-interleave-0.5b" in advice and "tiny" not in advice
    assert "没有找到" in language.fallback_text("offline", {"hits": [], "used": 0})
    assert "没有使用知识库" in language.fallback_text("offline", None)


def test_the_fallback_streams_in_pieces_and_stops_when_asked():
    stream = language.fallback_stream("offline", {"hits": [], "notes": []})
    pieces = list(stream)
    assert len(pieces) == 2 and "".join(pieces) == language.fallback_text("offline", {"hits": [], "used": 0})
    assert stream.stats.finish_reason == language.FINISH_REASON and stream.stats.output_tokens == 0
    assert stream.stats.time_to_first_token_s is not None
    stop = threading.Event()
    stop.set()
    stopped = language.fallback_stream("offline", None, stop)
    assert list(stopped) == [] and stopped.stats.finish_reason == "cancelled"


@pytest.mark.slow
def test_the_offline_model_answers_a_chinese_question_with_a_chinese_note_and_the_passages(
    make_knowledge, offline_backend, tmp_path, monkeypatch
):
    kb = make_knowledge()
    kb.ingest([DEMO / "lora-guide.md", DEMO / "lora-guide.zh.md"])
    generated = []
    real_stream = offline_backend.stream
    monkeypatch.setattr(offline_backend, "stream", lambda *a, **k: generated.append(a) or real_stream(*a, **k))
    system = "You are a helpful assistant. Answer briefly and accurately."
    session = ChatSession(offline_backend, kb.encoder, tmp_path / "up", system_prompt=system, knowledge=kb,
                          rag=RagOptions(top_k=4))
    params = GenerationParams.for_policy(offline_backend.info.answer, max_new_tokens=24, temperature=0.0)

    partials = list(session.send("秩为 8 的 LoRA 要训练多少个参数？", params=params))
    answer = session.history[-1]
    assert answer.role == "assistant" and generated == []  # the model did not run
    assert len(partials) >= 3 and partials[-1] == answer.text  # streamed: "", the note, each passage...
    assert answer.text.startswith("当前模型（offline）不会写中文")
    trace = answer.retrieval
    assert trace["used"] == len(trace["hits"]) >= 1
    assert "[1] lora-guide.zh.md：“" in answer.text and "65536" in answer.text  # the passage, in its language
    assert answer.stats["finish_reason"] == language.FINISH_REASON and answer.stats["output_tokens"] == 0
    assert answer.stats["note"] == language.TRACE_NOTE and answer.adapter is None

    # Nothing relevant in the documents: said in Chinese, not left to the model.
    list(session.send("龙井茶产自哪里？", params=params))
    assert "没有找到" in session.history[-1].text and generated == []

    # An English question is unchanged: the model answers from the same prompt as before.
    spy_prepare = _Spy(offline_backend.prepare)
    monkeypatch.setattr(offline_backend, "prepare", spy_prepare)
    list(session.send("How many parameters does LoRA with rank 8 train on a 4096 x 4096 matrix?", params=params))
    assert len(generated) == 1 and session.history[-1].stats["finish_reason"] in ("stop", "length")
    assert system_text(spy_prepare.calls[-1]) == system  # no answer-language line for an English-only model
    assert not session.history[-1].text.startswith("当前模型")

    # The trace survives export and import.
    restored = ChatSession(offline_backend, kb.encoder, tmp_path / "up2")
    restored.import_chat(session.export(tmp_path / "export"))
    first = [m for m in restored.history if m.role == "assistant"][0]
    assert first.stats["finish_reason"] == language.FINISH_REASON and first.stats["note"] == language.TRACE_NOTE


class _Spy:
    """Records the messages a backend's `prepare` is given (the real one still runs)."""

    def __init__(self, real):
        self.real, self.calls = real, []

    def __call__(self, messages, images, adapter=None):
        self.calls.append(messages)
        return self.real(messages, images, adapter=adapter)
