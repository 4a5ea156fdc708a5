"""Answers that help: what a model is given and shown with retrieval on.

- passages: the sentences of a source that best match the question (trimming and evidence);
- the answer policy per preset: sources per prompt, trimmed sources, repetition control;
- a question about an attached photo leaves the documents out unless it points at them;
- a knowledge base that is not open yet is said, not skipped silently;
- stop during a long prefill ends the worker within a chunk;
- the answer's evidence block, `[n]` links and honest "not cited" marks.

Real parts: the tiny random LLaVA (its words are noise; what is asserted is what it was given),
the offline SmolLM2 for the prefill timing (slow), the stand-in encoder, MiniLM, embedded Chroma.
"""

from __future__ import annotations

import dataclasses
import re
import threading
import time
from pathlib import Path

import pytest

from mmchat.backends.base import GenerationParams
from mmchat.config import AnswerPolicy
from mmchat.knowledge.passages import best_passage, rank_sentences, split_sentences
from mmchat.session import ChatSession, RagOptions
from mmchat.ui.render import chatbot_messages, format_citations, link_citations

ROOT = Path(__file__).resolve().parents[1]
DEMO = ROOT / "knowledge"
GREEDY = GenerationParams(max_new_tokens=4, temperature=0.0)

LORA_TEXT = (
    "LoRA freezes the pretrained weights. It adds two small matrices A and B to each target layer. "
    "With rank 8 on a 4096 x 4096 projection, LoRA trains 65,536 parameters instead of 16.8 million. "
    "The scaling factor is alpha divided by r. Dropout is usually 0.05 or lower."
)
ZH_TEXT = "低秩适配冻结原始权重。秩为 8 时，4096×4096 矩阵只需训练 65536 个参数。学习率通常设为 2e-4。训练三个轮次即可。"


# ----- passages ----------------------------------------------------------------------------
def test_sentences_split_in_english_and_chinese_and_long_runs_are_cut():
    assert split_sentences(LORA_TEXT)[:2] == [
        "LoRA freezes the pretrained weights.", "It adds two small matrices A and B to each target layer."
    ]
    assert split_sentences(ZH_TEXT)[1] == "秩为 8 时，4096×4096 矩阵只需训练 65536 个参数。"
    run = "x" * 1000
    assert max(len(s) for s in split_sentences(run)) <= 400 and "".join(split_sentences(run)) == run


def test_the_best_sentence_answers_the_question():
    assert "65,536 parameters" in rank_sentences("How many parameters does rank 8 LoRA train?", LORA_TEXT)[0].text
    assert "2e-4" in rank_sentences("学习率设为多少？", ZH_TEXT)[0].text


def test_a_passage_is_bounded_keeps_document_order_and_marks_gaps():
    passage = best_passage("What is the scaling factor and how many parameters at rank 8?", LORA_TEXT, 200)
    assert len(passage) <= 200
    assert passage.index("65,536") < passage.index("alpha divided by r")
    assert "freezes" not in passage
    assert best_passage("anything", "short text", 200) == "short text"
    assert best_passage("anything", LORA_TEXT, 0) == LORA_TEXT


# ----- generation parameters -----------------------------------------------------------------
def test_repetition_controls_reach_generate_and_are_checked():
    params = GenerationParams.for_policy(AnswerPolicy(repetition_penalty=1.15, no_repeat_ngram_size=4),
                                         max_new_tokens=8, temperature=0.0)
    kwargs = params.generate_kwargs()
    assert kwargs["repetition_penalty"] == 1.15 and kwargs["no_repeat_ngram_size"] == 4
    assert kwargs["do_sample"] is False
    assert "repetition_penalty" not in GenerationParams().generate_kwargs()
    with pytest.raises(Exception, match="repetition_penalty"):
        GenerationParams(repetition_penalty=3.0)


def test_the_offline_preset_gives_two_trimmed_sources_and_controls_repetition():
    from mmchat.config import PRESETS

    policy = PRESETS["offline"].answer
    assert policy.max_sources <= 2 and 0 < policy.source_chars <= 600
    assert policy.repetition_penalty > 1.0 and policy.no_repeat_ngram_size > 0


# ----- sessions with a knowledge base ----------------------------------------------------------
@pytest.fixture
def small_model_backend(tiny_backend, monkeypatch):
    """The tiny backend under the offline preset's policy: at most 2 sources of 300 characters."""
    info = dataclasses.replace(tiny_backend.info, answer=AnswerPolicy(max_sources=2, source_chars=300))
    monkeypatch.setattr(tiny_backend, "info", info)
    return tiny_backend


def last_user_text(messages) -> str:
    user = [m for m in messages if m["role"] == "user"][-1]
    return " ".join(c["text"] for c in user["content"] if c["type"] == "text")


@pytest.mark.slow
def test_a_small_model_gets_at_most_two_sources_trimmed_and_evidence_is_kept(
    make_knowledge, small_model_backend, spy, tmp_path
):
    kb = make_knowledge()
    kb.ingest([DEMO / "demo" / "lora-guide.md", DEMO / "demo" / "lora-guide.zh.md"])
    session = ChatSession(small_model_backend, kb.encoder, tmp_path / "up", knowledge=kb, rag=RagOptions(top_k=6))
    list(session.send("How many parameters does LoRA with rank 8 train on a 4096 x 4096 matrix?", params=GREEDY))
    trace = session.history[-1].retrieval
    assert len(trace["hits"]) <= 2 and trace["used"] == len(trace["hits"]) >= 1
    prompt = last_user_text(spy[-1][0])
    for hit in trace["hits"]:
        assert len(hit["passage"]) <= 300 and hit["passage"] in prompt
        assert hit["evidence"] and len(hit["evidence"]) <= 320
    assert any("65,536" in h["evidence"] or "65536" in h["evidence"] for h in trace["hits"]), trace["hits"]


@pytest.mark.slow
def test_a_question_about_the_photo_leaves_the_documents_out_unless_it_asks_for_them(
    make_knowledge, tiny_backend, spy, tmp_path, cat_image
):
    kb = make_knowledge()
    kb.ingest(sorted((DEMO / "demo").glob("*.md")) + [DEMO / "demo" / "llava-overview.pdf", DEMO / "images" / "cat.png"])
    session = ChatSession(tiny_backend, kb.encoder, tmp_path / "up", knowledge=kb, rag=RagOptions())
    list(session.send("What animal is in this picture?", [cat_image], params=GREEDY))
    trace = session.history[-1].retrieval
    assert trace["hits"] == [] and trace.get("used", 0) == 0
    assert "Answer the question using the numbered sources" not in last_user_text(spy[-1][0])
    # The sources panel says why (not the chat: nothing went wrong), and the similar indexed
    # photo is still shown.
    assert [m.role for m in session.history] == ["user", "assistant"], [m.text for m in session.history]
    assert trace["info"], trace  # the relevance floor or the photo rule says why
    assert [h["file_name"] for h in trace["images"]][:1] == ["cat.png"]
    # Pointing at the documents brings them back.
    list(session.send("According to the documents, what does LLaVA's projector do with this image?",
                      [cat_image], params=GREEDY))
    assert session.history[-1].retrieval["used"] >= 1
    assert "Answer the question using the numbered sources" in last_user_text(spy[-1][0])


def test_a_knowledge_base_not_open_yet_is_said_not_skipped(tiny_backend, tmp_path):
    session = ChatSession(tiny_backend, None, tmp_path / "up", knowledge=None,
                          rag=RagOptions(unavailable="The knowledge base is still opening (loading the embedder)"))
    list(session.send("What does the guide say about rank?", params=GREEDY))
    notes = [m.text for m in session.history if m.role == "note"]
    assert notes == ["The knowledge base is still opening (loading the embedder); this answer does not use the documents."]
    # Off: no note at all.
    session.rag = RagOptions(enabled=False, unavailable="ignored")
    list(session.send("again", params=GREEDY))
    assert [m.role for m in session.history][-2:] == ["user", "assistant"]


def test_runtime_waits_for_the_knowledge_base_then_says_why_not(tmp_path):
    from mmchat.config import load_config
    from mmchat.runtime import Runtime

    config = load_config(env={}, overrides={"": {"data_dir": str(tmp_path)}, "model": {"preset": "tiny"}})
    runtime = Runtime(config, backend=object(), encoder=None)
    runtime.knowledge_phase = "opening the knowledge base"
    started = time.perf_counter()
    knowledge, why = runtime.knowledge_for_answer(timeout=0.3)
    assert knowledge is None and why == "The knowledge base is still opening (opening the knowledge base)"
    assert 0.25 <= time.perf_counter() - started < 2
    runtime.knowledge_error = RuntimeError("disk full")
    runtime._knowledge_done.set()
    assert runtime.knowledge_for_answer(timeout=0.3) == (None, "The knowledge base is unavailable (disk full)")


# ----- stop during prefill -----------------------------------------------------------------
def test_chunked_prefill_gives_the_same_greedy_answer(tiny_backend, monkeypatch):
    import mmchat.backends.streaming as streaming

    messages = [{"role": "user", "content": [{"type": "text", "text": LORA_TEXT * 6}]}]
    prompt = tiny_backend.prepare(messages, [])
    assert prompt.prompt_tokens > 64
    params = GenerationParams(max_new_tokens=12, temperature=0.0)
    whole = "".join(tiny_backend.stream(prompt, params))
    monkeypatch.setattr(streaming, "PREFILL_CHUNK", 16)
    chunked = tiny_backend.stream(prompt, params)
    assert "".join(chunked) == whole and chunked.stats.output_tokens == 12


def test_stop_during_a_long_prefill_ends_after_the_chunk_in_progress(tiny_backend, monkeypatch):
    """Stop pressed while the prompt is being read: no further chunk runs and nothing is generated.

    Counted in forward passes, not seconds (timings on a shared 2-core machine vary 5-25x); a
    chunk of `PREFILL_CHUNK` tokens takes ~0.2 s with the offline model on 2 idle cores.
    """
    import mmchat.backends.streaming as streaming

    monkeypatch.setattr(streaming, "PREFILL_CHUNK", 64)
    prompt = tiny_backend.prepare([{"role": "user", "content": [{"type": "text", "text": LORA_TEXT * 8}]}], [])
    assert prompt.prompt_tokens > 4 * 64
    stop = threading.Event()
    calls = []
    model = tiny_backend.model
    real_forward = model.forward

    def forward(*args, **kwargs):
        calls.append(kwargs["input_ids"].shape[-1])
        stop.set()  # pressed while the first chunk is being read
        return real_forward(*args, **kwargs)

    monkeypatch.setattr(model, "forward", forward)
    stream = tiny_backend.stream(prompt, GenerationParams(max_new_tokens=8, temperature=0.0), stop)
    assert "".join(stream) == ""
    assert calls == [64]
    assert stream.stats.finish_reason == "cancelled" and stream.stats.output_tokens == 0


# ----- rendering -----------------------------------------------------------------------------
def test_citations_link_to_their_source_and_uncited_sources_are_marked():
    retrieval = {"used": 2, "hits": [
        {"file_name": "guide.pdf", "page": 2, "text": "A <b>bold</b> claim.", "evidence": "A <b>bold</b> claim."},
        {"file_name": "notes.md", "text": "Other.", "evidence": "Other."},
    ]}
    assert format_citations(retrieval, "It is so [1].") == "Sources: [1] guide.pdf, p. 2 · [2] notes.md (not cited)"
    linked = link_citations("It is so [1], not [7].", 3, 2)
    assert '<a class="mmchat-cite" href="#mmchat-src-3-1">[1]</a>' in linked and "[7]" in linked

    class Session:
        images = {}
        history = [type("M", (), {"role": "assistant", "text": "It is so [1].", "retrieval": retrieval,
                                  "stats": None, "image_ids": []})()]

    content = chatbot_messages(Session())[0]["content"]
    assert 'id="mmchat-src-0-1"' in content and "<b>[1]</b> guide.pdf, p. 2" in content
    assert "&lt;b&gt;bold&lt;/b&gt;" in content and "<b>bold</b>" not in content  # document text is escaped


def test_special_tokens_in_text_are_inert(tiny_backend, cat_image):
    """A document or message containing `<image>` must neither break nor fake an image slot."""
    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "The <image> token and <s> marker."}]}]
    prompt = tiny_backend.prepare(messages, [cat_image])
    image_id = tiny_backend.processor.tokenizer.convert_tokens_to_ids(tiny_backend.processor.image_token)
    plain = tiny_backend.prepare([{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "x"}]}], [cat_image])
    count = lambda p: int((p.inputs["input_ids"] == image_id).sum())  # noqa: E731
    assert count(prompt) == count(plain) > 0


def test_repetition_control_lets_an_answer_quote_its_sources_but_not_repeat_itself():
    import torch

    from mmchat.backends.streaming import answer_only_repetition_control

    kwargs = {"max_new_tokens": 8, "repetition_penalty": 1.5, "no_repeat_ngram_size": 3}
    prompt = [5, 6, 7, 8, 5, 6]  # the sources say "5 6 7" (and "5 6" again at the end)
    processors = answer_only_repetition_control(kwargs, prompt_length=len(prompt))
    assert kwargs == {"max_new_tokens": 8}  # generate gets the processors instead
    scores = torch.ones(1, 10)
    # Quoting the prompt: "5 6" -> 7 is allowed and 7 is not penalised (it is only in the prompt).
    quoting = torch.tensor([prompt + [5, 6]])
    out = scores.clone()
    for processor in processors:
        out = processor(quoting, out)
    assert out[0, 7] == 1 and out[0, 5] < 1  # 5 and 6 were generated: penalised
    # Repeating the answer itself: "5 6 9 5 6" -> 9 is banned.
    repeating = torch.tensor([prompt + [5, 6, 9, 5, 6]])
    out = scores.clone()
    for processor in processors:
        out = processor(repeating, out)
    assert out[0, 9] == float("-inf")


@pytest.mark.slow
def test_the_shipped_examples_answer_correctly_with_retrieval_on(make_knowledge, offline_backend, tmp_path):
    """The Chat tab's examples, default settings, the demo corpus indexed: the photo wins."""
    from mmchat.config import AppConfig
    from mmchat.ui.chat import examples

    kb = make_knowledge()
    kb.seed_demo(DEMO)
    gen = AppConfig().generation
    params = GenerationParams.for_policy(offline_backend.info.answer, max_new_tokens=48,
                                         temperature=gen.temperature, top_p=gen.top_p)
    expected = {"cat.png": r"\bcats?\b", "coffee.png": r"espresso|coffee"}
    shown = examples()
    assert {Path(e["files"][0]).name for e in shown} == set(expected)
    for example in shown:
        session = ChatSession(offline_backend, kb.encoder, tmp_path / "up", system_prompt=gen.system_prompt,
                              knowledge=kb, rag=RagOptions(top_k=kb.config.top_k))
        answer = list(session.send(example["text"], example["files"], params=params))[-1]
        assert re.search(expected[Path(example["files"][0]).name], answer, re.IGNORECASE), answer
        assert session.history[-1].retrieval["used"] == 0  # no document text distracted the model


def test_a_photo_question_needs_two_of_its_own_terms_in_a_source_to_use_it(tiny_backend, tmp_path):
    """The rule itself, on hand-made hits (the retriever's floor usually removes such hits first)."""
    from types import SimpleNamespace

    from mmchat.knowledge.retrieval import Hit

    from mmchat.config import KnowledgeConfig

    session = ChatSession(tiny_backend, None, tmp_path / "up", knowledge=SimpleNamespace(config=KnowledgeConfig()))
    chunk = "The projector of LLaVA maps each image patch into the language model; a cat photo is an example."

    def gate(question: str, relevance: float):
        result = SimpleNamespace(hits=[Hit(id="1", doc_id="d", file_name="llava-overview.pdf", text=chunk,
                                           relevance=relevance)])
        return session._gate_image_question(question, result), result.hits

    why, hits = gate("What animal is in this picture?", 1.0)  # one shared word, however relevant
    assert hits == [] and "about the attached image" in why
    assert gate("What does the LLaVA projector do with this image?", 0.7) == (None, gate("x llava projector", 0.7)[1])
    why, hits = gate("What does the LLaVA projector do with this image?", 0.3)  # two terms, weak match
    assert hits == [] and "0.30" in why
    assert gate("What does the PDF say about this cat?", 0.1)[0] is None  # points at the documents
