"""The Knowledge tab and the citation path through the real Gradio server and `gradio_client`.

Real parts: the app served in this process, the tiny random LLaVA (its words are noise; the
sources footer and panel are what is asserted), the stand-in encoder, MiniLM, embedded Chroma.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from gradio_client import Client, handle_file

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "tests" / "fixtures" / "rag" / "docs"
SYSTEM = "You are terse."

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def server(tmp_path_factory, launch_app, tiny_backend, standin_encoder, text_embedder):
    from mmchat.config import KnowledgeConfig
    from mmchat.knowledge.base import KnowledgeBase

    data_dir = tmp_path_factory.mktemp("app-knowledge")
    kb = KnowledgeBase(KnowledgeConfig(path=str(data_dir / "kb")), encoder=standin_encoder, text_embedder=text_embedder)
    url = launch_app(data_dir, tiny_backend, standin_encoder, preset="tiny",
                     generation={"max_new_tokens": 8, "temperature": 0.0}, knowledge_base=kb)
    return url, kb


def rows(listing) -> list[list]:
    return listing["data"] if isinstance(listing, dict) else listing


def test_upload_list_search_delete_and_reset(server, tmp_path):
    url, kb = server
    client = Client(url, verbose=False)
    bad = tmp_path / "slides.pdf"
    bad.write_bytes(b"PK\x03\x04 this is a zip, not a PDF" * 10)
    odd = tmp_path / "ü 指南 (final).md"
    odd.write_text("# 指南\n\n青川市地铁每天首班车五点半发车。The first train leaves at 05:30.", encoding="utf-8")
    result, table, *_ = client.predict(
        [handle_file(str(DOCS / "tea-oolong.txt")), handle_file(str(bad)), handle_file(str(odd))],
        api_name="/knowledge_add",
    )
    assert "indexed 2 file(s)" in result and "refused slides.pdf" in result, result
    names = sorted(r[0] for r in rows(table))
    assert names == ["tea-oolong.txt", "ü 指南 (final).md"]
    # Same bytes again: idempotent, and said so.
    result, table, *_ = client.predict([handle_file(str(DOCS / "tea-oolong.txt"))], api_name="/knowledge_add")
    assert "already indexed: tea-oolong.txt" in result and len(rows(table)) == 2
    # Search without the LLM.
    hits, gallery = client.predict("首班车几点发车", 3, [], api_name="/knowledge_search")
    table_rows = [line for line in hits.splitlines() if line.startswith("| ")][1:]
    assert any("ü 指南 (final).md" in row and "(#1)" in row for row in table_rows), hits  # BM25's best
    assert "| dense | BM25 |" in hits
    # Delete one by id.
    doc_id = next(r.doc_id for r in kb.documents() if r.file_name == "tea-oolong.txt")
    result, table, *_ = client.predict(doc_id, api_name="/knowledge_delete")
    assert result.startswith("deleted tea-oolong.txt") and [r[0] for r in rows(table)] == ["ü 指南 (final).md"]
    # Reset needs the confirmation tick.
    result, table, *_ = client.predict(False, api_name="/knowledge_reset")
    assert "tick" in result and len(rows(table)) == 1
    result, table, *_ = client.predict(True, api_name="/knowledge_reset")
    assert result == "the knowledge base is empty" and rows(table) == []
    assert kb.counts() == {"documents": 0, "chunks": 0, "images": 0}


def test_an_answer_cites_its_sources_and_shows_them(server):
    url, kb = server
    kb.ingest([DOCS / "handbook-travel-expenses.md", DOCS / "jupiter-moons.md", ROOT / "knowledge" / "images" / "cat.png"])
    client = Client(url, verbose=False)
    job = client.submit({"text": "What is the daily allowance for food on a business trip? ", "files": []},
                        SYSTEM, 8, 0.0, 0.9, True, 2, api_name="/chat")
    job.result(timeout=120)
    chatbot, _, trace, sources, gallery = job.outputs()[-1]
    answer = chatbot[-1]["content"][0]["text"]
    assert "Sources: [1] handbook-travel-expenses.md" in answer
    assert "| [1] | handbook-travel-expenses.md |" in sources and "| [2] |" in sources
    assert "embed" in sources and "ms" in sources  # timings
    # Text -> image: a question about a photo brings the indexed photo into the sources panel.
    job = client.submit({"text": "Show me a photo of a cat", "files": []}, SYSTEM, 8, 0.0, 0.9, True, 2, api_name="/chat")
    job.result(timeout=120)
    gallery = job.outputs()[-1][4]
    assert [Path(item["image"]).suffix for item in gallery] == [".png"]  # downloaded by the client
    assert "cat.png" in gallery[0]["caption"]
    # Off for this conversation: no sources.
    job = client.submit({"text": "And for hotels?", "files": []}, SYSTEM, 8, 0.0, 0.9, False, api_name="/chat")
    job.result(timeout=120)
    chatbot, _, _, sources, _ = job.outputs()[-1]
    assert "Sources:" not in chatbot[-1]["content"][0]["text"] and "No retrieval" in sources


def test_choosing_another_embedder_reembeds_and_keeps_every_document(server):
    url, kb = server
    client = Client(url, verbose=False)
    client.predict([handle_file(str(DOCS / "tea-oolong.txt"))], api_name="/knowledge_add")
    counts = kb.counts()
    chunks = counts["chunks"]
    assert client.predict(api_name="/knowledge_reembed_cancel") == "no re-embedding is running"
    result, table, *_, status, embedder = client.predict("builtin:all-MiniLM-L6-v2", api_name="/knowledge_reembed")
    assert result.startswith(f"✅ Re-embedded {chunks:,} chunks with `all-MiniLM-L6-v2`"), result
    assert "`use-multilingual-v3-neutral` is no longer used" in result
    assert "embedder `all-MiniLM-L6-v2`" in status and embedder["value"] == "builtin:all-MiniLM-L6-v2"
    assert "tea-oolong.txt" in [r[0] for r in rows(table)] and kb.counts() == counts
    hits, _ = client.predict("oolong tea", 3, [], api_name="/knowledge_search")
    assert "tea-oolong.txt" in hits
    result, *_ = client.predict("builtin:all-MiniLM-L6-v2", api_name="/knowledge_reembed")
    assert result == "the knowledge base already uses all-MiniLM-L6-v2"
    result, *_ = client.predict("builtin:use-multilingual", api_name="/knowledge_reembed")
    assert "with `use-multilingual-v3-neutral`" in result and kb.text_embedder.model_name == "use-multilingual-v3-neutral"
