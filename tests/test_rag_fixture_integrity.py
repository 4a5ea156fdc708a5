"""The retrieval-quality fixture (tests/fixtures/rag) is self-consistent.

Every question names a document that exists, its expected answer occurs verbatim in that
document and in no other one (so each question has exactly one correct document), and the
mix of languages and question types stays what the retrieval test relies on.
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

FIXTURE = Path(__file__).resolve().parent / "fixtures" / "rag"
DOCS = FIXTURE / "docs"


def _questions() -> list[dict]:
    return json.loads((FIXTURE / "questions.json").read_text(encoding="utf-8"))


def _docs() -> dict[str, str]:
    return {p.name: p.read_text(encoding="utf-8") for p in sorted(DOCS.iterdir()) if p.is_file()}


def test_every_answer_is_verbatim_in_exactly_its_own_document():
    docs = _docs()
    for q in _questions():
        assert {"question", "doc", "answer_contains", "lang"} <= q.keys(), q
        assert q["doc"] in docs, f"missing document {q['doc']!r}"
        holders = [name for name, text in docs.items() if q["answer_contains"] in text]
        assert holders == [q["doc"]], f"{q['question']!r}: {q['answer_contains']!r} found in {holders}"


def test_question_and_document_mix():
    questions, docs = _questions(), _docs()
    assert 30 <= len(questions) <= 40
    assert len({q["question"] for q in questions}) == len(questions), "duplicate questions"
    langs = Counter(q["lang"] for q in questions)
    assert set(langs) == {"en", "zh"} and langs["zh"] >= 12
    assert sum(q.get("kind") == "identifier" for q in questions) >= 4
    assert 16 <= len(docs) <= 24
    assert sum(name.endswith(".html") for name in docs) <= 2
    assert {name.rsplit(".", 1)[1] for name in docs} <= {"md", "txt", "html"}
