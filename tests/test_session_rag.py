"""ChatSession with a real knowledge base: retrieval per turn, numbered sources in the prompt,
the trace on the answer, notes while indexing, graceful failure, context fitting, images.

Real parts: the tiny random LLaVA (its words are noise; what is asserted is what it was
given), the stand-in image encoder, MiniLM, embedded Chroma in a temp dir.
"""

from __future__ import annotations

import threading
from pathlib import Path

import pytest

from mmchat.backends.base import GenerationParams
from mmchat.session import ChatSession, RagOptions

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "tests" / "fixtures" / "rag" / "docs"
GREEDY = GenerationParams(max_new_tokens=4, temperature=0.0)

pytestmark = pytest.mark.slow


def last_user_text(messages) -> str:
    user = [m for m in messages if m["role"] == "user"][-1]
    return " ".join(c["text"] for c in user["content"] if c["type"] == "text")


def session_with(kb, backend, tmp_path, **rag):
    return ChatSession(backend, kb.encoder, tmp_path / "uploads", knowledge=kb, rag=RagOptions(**rag))


def test_the_latest_question_gets_numbered_sources_and_the_answer_keeps_the_trace(
    make_knowledge, tiny_backend, spy, tmp_path
):
    kb = make_knowledge()
    kb.ingest([DOCS / "handbook-travel-expenses.md", DOCS / "tea-longjing.md"])
    session = session_with(kb, tiny_backend, tmp_path, top_k=2)
    list(session.send("What is the daily allowance for food on a business trip?", params=GREEDY))
    prompt_text = last_user_text(spy[-1][0])
    assert prompt_text.startswith("Answer the question using the numbered sources below")
    assert "[1] (handbook-travel-expenses.md)" in prompt_text
    assert prompt_text.rstrip().endswith("Question: What is the daily allowance for food on a business trip?")
    answer = session.history[-1]
    assert answer.role == "assistant" and answer.retrieval["used"] == 2
    assert answer.retrieval["hits"][0]["file_name"] == "handbook-travel-expenses.md"
    # The next turn retrieves for its own question; the earlier turn goes back to plain text.
    list(session.send("龙井茶产自哪里？", params=GREEDY))
    messages = spy[-1][0]
    users = [m for m in messages if m["role"] == "user"]
    assert users[0]["content"][-1]["text"] == "What is the daily allowance for food on a business trip?"
    assert "[1] (tea-longjing.md)" in last_user_text(messages)
    # Export keeps the traces.
    exported = session.export(tmp_path / "export")
    restored = ChatSession(tiny_backend, kb.encoder, tmp_path / "uploads2")
    restored.import_chat(exported)
    assert restored.history[-1].retrieval["hits"][0]["file_name"] == "tea-longjing.md"


def test_switched_off_or_filtered(make_knowledge, tiny_backend, spy, tmp_path):
    kb = make_knowledge(min_relevance=0.0)  # the oolong note does not answer it: only the filter is tested
    records = kb.ingest([DOCS / "tea-longjing.md", DOCS / "tea-oolong.txt"]).added
    session = session_with(kb, tiny_backend, tmp_path, enabled=False)
    list(session.send("龙井茶产自哪里？", params=GREEDY))
    assert last_user_text(spy[-1][0]) == "龙井茶产自哪里？" and session.history[-1].retrieval is None
    oolong = next(r for r in records if r.file_name == "tea-oolong.txt")
    session.rag = RagOptions(doc_ids=(oolong.doc_id,))
    list(session.send("龙井茶产自哪里？", params=GREEDY))
    assert {h["file_name"] for h in session.history[-1].retrieval["hits"]} == {"tea-oolong.txt"}


def test_questions_while_indexing_say_so(make_knowledge, tiny_backend, tmp_path):
    kb = make_knowledge(chunk_size=48, chunk_overlap=8)
    kb.ingest([DOCS / "tea-longjing.md"])
    release, started = threading.Event(), threading.Event()

    def slow_progress(fraction, message):
        started.set()
        release.wait(timeout=60)

    worker = threading.Thread(target=kb.ingest, args=([DOCS / "dumplings.md"],), kwargs={"progress": slow_progress})
    worker.start()
    try:
        assert started.wait(timeout=60)
        session = session_with(kb, tiny_backend, tmp_path)
        list(session.send("饺子要煮多久？", params=GREEDY))
    finally:
        release.set()
        worker.join(timeout=120)
    roles = [m.role for m in session.history]
    assert roles == ["user", "note", "assistant"]
    assert "Indexing is in progress (dumplings.md)" in session.history[1].text
    # Regenerate replaces the note with a fresh one (none now: indexing has finished).
    list(session.regenerate(GREEDY))
    assert [m.role for m in session.history] == ["user", "assistant"]


def test_a_failing_knowledge_base_does_not_stop_the_chat(make_knowledge, tiny_backend, tmp_path, monkeypatch):
    kb = make_knowledge()

    def broken(*args, **kwargs):
        raise ConnectionError("Chroma server went away")

    monkeypatch.setattr(kb, "search", broken)
    session = session_with(kb, tiny_backend, tmp_path)
    texts = list(session.send("hello", params=GREEDY))
    assert texts and session.history[-1].role == "assistant"
    assert "Retrieval failed (ConnectionError: Chroma server went away)" in session.history[1].text


def test_sources_that_do_not_fit_the_context_are_dropped_weakest_first(make_knowledge, tiny_backend, tmp_path):
    # Chunks of ~190 tokens; the tiny model has a 1024-token context. No relevance floor: a
    # question touching four documents must bring 12 sources, relevant or not.
    kb = make_knowledge(min_relevance=0.0, min_score=0.0)
    kb.ingest(sorted(DOCS.glob("*.md")))
    session = session_with(kb, tiny_backend, tmp_path, top_k=12)
    list(session.send("tea and dumplings and the metro and leave policy", params=GenerationParams(max_new_tokens=200)))
    answer = session.history[-1]
    assert 0 < answer.retrieval["used"] < len(answer.retrieval["hits"]) == 12
    assert any("retrieved sources fit" in m.text for m in session.history if m.role == "note")
    assert answer.stats["prompt_tokens"] + 200 <= tiny_backend.info.context_length


def test_retrieved_images_can_go_to_the_model(make_knowledge, tiny_backend, spy, tmp_path, cat_image):
    kb = make_knowledge()
    kb.ingest([ROOT / "knowledge" / "images" / "cat.png", ROOT / "knowledge" / "images" / "coffee.png"])
    session = session_with(kb, tiny_backend, tmp_path, images_to_model=True)
    cat_path = tmp_path / "my-cat.jpg"
    cat_image.convert("RGB").save(cat_path)
    list(session.send("Is there a picture like this one?", [cat_path], params=GREEDY))
    trace = session.history[-1].retrieval
    assert trace["images"][0]["file_name"] == "cat.png"  # image -> image
    assert len(spy[-1][1]) == 1 + len(trace["context_images"]) >= 2  # the upload + retrieved
