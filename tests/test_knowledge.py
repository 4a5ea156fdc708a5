"""The knowledge base on real parts: LlamaIndex readers and splitter, the shipped MiniLM
embedder, the stand-in image encoder, and an embedded Chroma store in a temp dir.

Covers ingestion (metadata, idempotency, delete, reset, cancel, progress, bad files),
retrieval quality on a fixture corpus with known answers (English and Chinese), exact terms
via BM25, image search by text and by image, the document filter and whole-document mode.
The server mode, restarts and SIGKILL durability live in `test_knowledge_durability.py`.
"""

from __future__ import annotations

import json
import threading
from pathlib import Path

import pytest

from mmchat.config import KnowledgeConfig

ROOT = Path(__file__).resolve().parents[1]
FIXTURE = ROOT / "tests" / "fixtures" / "rag"
DEMO = ROOT / "knowledge"

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def fixture_kb(tmp_path_factory, standin_encoder, text_embedder):
    from mmchat.knowledge.base import KnowledgeBase

    kb = KnowledgeBase(
        KnowledgeConfig(path=str(tmp_path_factory.mktemp("fixture-kb"))),
        encoder=standin_encoder, text_embedder=text_embedder,
    )
    report = kb.ingest(sorted((FIXTURE / "docs").iterdir()))
    assert not report.failed, report.failed
    return kb


def _hit_at(kb, questions, k=5):
    found = []
    for q in questions:
        result = kb.search(q["question"], top_k=k, image_top_k=0)
        names = [h.file_name for h in result.hits]
        found.append(q["doc"] in names)
    return sum(found) / len(found), [q["question"] for q, ok in zip(questions, found) if not ok]


@pytest.mark.parametrize("lang", ["en", "zh"])
def test_hit_at_5_on_the_fixture_corpus(fixture_kb, lang):
    questions = [q for q in json.loads((FIXTURE / "questions.json").read_text("utf-8")) if q["lang"] == lang]
    assert len(questions) >= 12
    rate, misses = _hit_at(fixture_kb, questions)
    print(f"hit@5 {lang}: {rate:.3f} ({len(questions)} questions); misses: {misses}")
    assert rate >= 0.9, misses


def test_bm25_finds_chinese_text_and_hybrid_is_no_worse_than_either_retriever(fixture_kb):
    """BM25 with CJK bigrams finds Chinese text on its own; fusing it with the dense retriever
    loses nothing either of them finds."""
    questions = [q for q in json.loads((FIXTURE / "questions.json").read_text("utf-8")) if q["lang"] == "zh"]
    dense_found = lexical_found = 0
    for q in questions:
        dense = fixture_kb.retriever.search(q["question"], top_k=5, lexical=False)
        dense_found += q["doc"] in [h.file_name for h in dense.hits]
        lexical = fixture_kb.retriever.search(q["question"], top_k=5, dense=False)
        lexical_found += q["doc"] in [h.file_name for h in lexical.hits]
    hybrid_rate, _ = _hit_at(fixture_kb, questions)
    assert lexical_found / len(questions) >= 0.9
    assert hybrid_rate >= max(dense_found, lexical_found) / len(questions)


def test_exact_identifiers_are_found_first(fixture_kb):
    result = fixture_kb.search("ZX-4471 fault F12", top_k=3, image_top_k=0)
    assert result.hits[0].file_name == "zx-pump-manual.txt"
    assert result.hits[0].lexical_rank is not None
    best = fixture_kb.retriever.lexical.search("zx 4471", 1)[0]  # the identifier's parts find it too
    assert fixture_kb.store.get_text([best.id])[best.id][1]["file_name"] == "zx-pump-manual.txt"
    assert "E_CHROMA_LOCK" in " ".join(h.text for h in fixture_kb.search("E_CHROMA_LOCK", top_k=3).hits)


def test_the_trace_names_each_retriever_and_times_each_step(fixture_kb):
    result = fixture_kb.search("What is the daily allowance for food on a business trip?", top_k=4)
    trace = result.to_trace()
    assert trace["mode"] == "hybrid"
    assert set(trace["timings_ms"]) >= {"embed", "dense", "lexical", "fuse", "images", "total"}
    top = trace["hits"][0]
    assert top["file_name"] == "handbook-travel-expenses.md"
    assert top["dense_rank"] is not None and top["dense"] > 0.3
    # Both retrievers scored it; the fused score and the relevance are on a 0..1 scale.
    assert top["lexical_rank"] is not None and top["lexical"] > 0
    assert 0 < top["score"] <= 1 and 0 < top["relevance"] <= 1 and top["dense_trust"] == pytest.approx(1.0)
    assert trace["best_relevance"] == pytest.approx(max(h["relevance"] for h in trace["hits"]), abs=1e-3)
    json.dumps(trace)  # stored on the chat message and exported with it


def test_document_filter_limits_every_retriever(fixture_kb):
    tea = [d for d in fixture_kb.documents() if d.file_name == "tea-oolong.txt"]
    result = fixture_kb.search("西湖龙井的产地在哪里", top_k=5, doc_ids=[tea[0].doc_id])
    assert result.hits and {h.file_name for h in result.hits} == {"tea-oolong.txt"}


def test_demo_corpus_metadata_pages_and_images(make_knowledge):
    kb = make_knowledge()
    steps = []
    report = kb.seed_demo(DEMO, progress=lambda f, m: steps.append((f, m)))
    assert not report.failed, report.failed
    names = {d.file_name: d for d in kb.documents()}
    assert {"llava-overview.pdf", "rag-howto.docx", "lora-guide.md", "lora-guide.zh.md", "cat.png"} <= set(names)
    assert "build_demo.py" not in names
    assert names["llava-overview.pdf"].pages == 3 and names["cat.png"].kind == "image"
    assert [f for f, _ in steps] == sorted(f for f, _ in steps) and steps[-1][0] == 1.0
    # A chunk carries file name, page, chunk index, content hash and upload time.
    result = kb.search("What data did LLaVA use to pre-train its projector?", top_k=3)
    top = next(h for h in result.hits if "595K" in h.text)  # the answer is on page 2
    assert top.file_name == "llava-overview.pdf" and top.page == 2
    row = kb.store.text_collection.get(ids=[top.id], include=["metadatas"])["metadatas"][0]
    assert row["content_hash"] == names["llava-overview.pdf"].doc_id == top.doc_id
    assert row["added"] == pytest.approx(names["llava-overview.pdf"].added)
    assert isinstance(row["chunk"], int)
    # Seeding happens once: a deleted demo file does not come back.
    kb.delete(names["cat.png"].doc_id)
    assert kb.seed_demo(DEMO) is None
    assert "cat.png" not in {d.file_name for d in kb.documents()}


def test_images_by_text_and_by_image(make_knowledge, coffee_image, standin_encoder):
    kb = make_knowledge()
    kb.ingest(sorted((DEMO / "images").glob("*.png")))
    by_text = kb.search("a photo of a cat", image_top_k=1).images
    assert [h.file_name for h in by_text] == ["cat.png"] and Path(by_text[0].image_path).is_file()
    vector = standin_encoder.encode_images([coffee_image])[0]
    by_image = kb.search("what is this?", image_top_k=1, image_vectors=[vector]).images
    assert by_image[0].file_name == "coffee.png" and by_image[0].score > 0.9


def test_reupload_is_idempotent_and_delete_removes_every_chunk(make_knowledge):
    kb = make_knowledge()
    doc = FIXTURE / "docs" / "tea-longjing.md"
    first = kb.ingest([doc])
    again = kb.ingest([(doc.read_bytes(), "renamed.md")])
    assert len(first.added) == 1 and not again.added and again.duplicates == ["renamed.md"]
    record = first.added[0]
    assert kb.counts() == {"documents": 1, "chunks": record.chunks, "images": 0} and record.chunks >= 2
    kb.delete(record.doc_id)
    assert kb.counts() == {"documents": 0, "chunks": 0, "images": 0}
    assert not kb.search("龙井", top_k=3).hits  # BM25 forgot it too
    assert not list(kb.files_dir.iterdir())


def test_bad_files_are_refused_by_name_and_nothing_is_indexed(make_knowledge, tmp_path):
    kb = make_knowledge()
    fake = tmp_path / "report.pdf"
    fake.write_bytes(b"MZ\x90\x00" + bytes(range(256)) * 20)
    empty = tmp_path / "empty.txt"
    empty.write_bytes(b"")
    good = FIXTURE / "docs" / "pizza-dough.md"
    report = kb.ingest([fake, empty, good])
    assert [r.file_name for r in report.added] == ["pizza-dough.md"]
    refused = dict(report.failed)
    assert set(refused) == {"report.pdf", "empty.txt"}
    assert "PDF" in refused["report.pdf"] or "pdf" in refused["report.pdf"]
    assert kb.counts()["documents"] == 1
    assert "refused report.pdf" in report.summary()


def test_cancel_leaves_nothing_half_indexed(make_knowledge):
    kb = make_knowledge(chunk_size=64, chunk_overlap=8)
    cancel = threading.Event()
    docs = [FIXTURE / "docs" / "handbook-remote-work.md", FIXTURE / "docs" / "jupiter-moons.md"]

    def progress(fraction, message):
        if "embedded" in message and "jupiter" in message:
            cancel.set()  # mid-way through the second file

    report = kb.ingest(docs, progress=progress, cancel=cancel)
    assert report.cancelled
    assert [r.file_name for r in report.added] == ["handbook-remote-work.md"]
    assert [p.name for p in kb.files_dir.iterdir()] == [report.added[0].stored]
    assert kb.counts()["chunks"] == report.added[0].chunks
    assert {d.file_name for d in kb.documents()} == {"handbook-remote-work.md"}


def test_questions_during_ingest_say_so(make_knowledge):
    kb = make_knowledge()
    seen = []

    def progress(fraction, message):
        if "embedded" in message and not seen:
            # Chunks already written but not acknowledged are not cited (the ingest may fail).
            result = kb.search("乌龙茶", top_k=2)
            seen.append(result.notes)
            seen.append([h.file_name for h in result.hits])

    kb.ingest([FIXTURE / "docs" / "tea-oolong.txt"], progress=progress)
    assert seen and "Indexing is in progress" in seen[0][0] and "tea-oolong.txt" in seen[0][0]
    assert seen[1] == []
    assert kb.search("乌龙茶", top_k=2).hits
    assert not any("Indexing" in note for note in kb.search("tea", top_k=2).notes)


def test_two_sessions_ingesting_and_querying_at_once(make_knowledge):
    kb = make_knowledge()
    docs = sorted((FIXTURE / "docs").glob("*.md"))
    halves = [docs[::2], docs[1::2]]
    errors, reports = [], []
    stop = threading.Event()

    def ingest(batch):
        try:
            reports.append(kb.ingest(batch))
        except Exception as err:  # pragma: no cover - the assertion below reports it
            errors.append(err)

    def query():
        while not stop.is_set():
            try:
                kb.search("how long should dumplings boil", top_k=3, image_top_k=0)
            except Exception as err:  # pragma: no cover
                errors.append(err)

    threads = [threading.Thread(target=ingest, args=(h,)) for h in halves] + [threading.Thread(target=query)]
    for t in threads:
        t.start()
    for t in threads[:2]:
        t.join(timeout=300)
    stop.set()
    threads[2].join(timeout=60)
    assert not errors
    added = [r for report in reports for r in report.added]
    assert len(added) == len(docs)
    assert kb.counts() == {"documents": len(docs), "chunks": sum(r.chunks for r in added), "images": 0}
    assert len(kb.retriever.lexical) == kb.counts()["chunks"]


def test_a_read_waits_out_chromas_first_write_race_and_nothing_else():
    """Chroma's race between a collection's first write and a query (see `read_vectors`) is
    timing-dependent, so the test above meets it only now and then (it failed CI once): here
    the error it raises is replayed by a stand-in read, the one thing faked."""
    from chromadb.errors import InternalError

    from mmchat.knowledge.store import read_vectors

    race = "Error executing plan: Internal error: Error creating hnsw segment reader: Nothing found on disk"
    calls = []

    def first_write_in_progress():
        calls.append(1)
        if len(calls) < 3:
            raise InternalError(race)
        return "hits"

    assert read_vectors(first_write_in_progress) == "hits" and len(calls) == 3

    def other_failure():
        calls.append(1)
        raise InternalError("Error executing plan: Internal error: Error loading hnsw index")

    calls.clear()
    with pytest.raises(InternalError, match="loading"):
        read_vectors(other_failure)
    assert len(calls) == 1  # not retried

    def never_settles():
        raise InternalError(race)

    with pytest.raises(InternalError, match="Nothing found"):
        read_vectors(never_settles, wait_s=0.1)


def test_whole_document_mode_sends_short_documents_whole(make_knowledge):
    kb = make_knowledge(whole_document_max_chars=100_000)
    record = kb.ingest([DEMO / "demo" / "llava-overview.pdf"]).added[0]
    result = kb.search("summarise", doc_ids=[record.doc_id], whole_document=True)
    assert result.mode == "whole document"
    assert [h.page for h in result.hits] == [1, 2, 3]
    small = make_knowledge(whole_document_max_chars=500, path=str(kb.root) + "-small")
    small.ingest([DEMO / "demo" / "llava-overview.pdf"])
    fallback = small.search("summarise", doc_ids=[record.doc_id], whole_document=True)
    assert fallback.mode == "hybrid" and "Whole document" in fallback.notes[0]


def test_a_different_image_encoder_on_the_same_store_is_refused_clearly(make_knowledge, tmp_path):
    """(A different *text* embedder is re-embedded instead: tests/test_reembed.py.)"""
    from mmchat.errors import ConfigError
    from mmchat.knowledge.store import KnowledgeStore, open_client

    kb = make_knowledge()
    name, source, dim = kb.store.recorded_text_embedder
    with pytest.raises(ConfigError, match="reset the knowledge base"):
        KnowledgeStore(open_client(kb.root / "chroma"), "mmchat", text_embedder=name, text_dim=dim,
                       image_encoder="other-encoder", image_dim=768)


@pytest.mark.slow
def test_odd_queries_are_ranked_or_refused_clearly(make_knowledge):
    """Mixed script, traditional characters, full-width digits find the Chinese report; pinyin,
    punctuation and empty questions are refused with a reason; a 10,000-character query is
    answered without an error."""
    kb = make_knowledge()
    kb.ingest(sorted((ROOT / "tests" / "fixtures" / "rag_eval_v2" / "docs").iterdir()))
    report = "GPU推理容量规划与成本报告.md"
    for query in ("GPU 推理 capacity 规划", "推理平臺下半年計劃新增多少張 H800？", "下半年计划新增多少张Ｈ８００？",
                  "How many H800 cards will be added in the second half of the year?"):
        assert kb.search(query, top_k=3).hits[0].file_name == report, query
    for query in ("", "   ", "？？？"):
        result = kb.search(query, top_k=3)
        assert result.hits == [] and result.info == ["the question has no words to search for"]
    pinyin = kb.search("tuili rongliang guihua", top_k=3)
    assert pinyin.hits == [] and pinyin.info[0].startswith("no source relevant enough")
    long = kb.search("显存" * 5000, top_k=3)
    assert long.hits and long.hits[0].file_name == report
