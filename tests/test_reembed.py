"""Changing the text embedder re-embeds what is kept and never loses a document.

Real parts: embedded Chroma, the shipped embedders (all-MiniLM-L6-v2 and USE multilingual),
the real `KnowledgeBase`; the kill is a real SIGKILL of a subprocess. The full disk is the
one thing simulated (Chroma's write raising `OSError(ENOSPC)`): a real one would fill this
machine's disk.
"""

from __future__ import annotations

import errno
import os
import signal
import subprocess
import sys
import textwrap
import threading
from pathlib import Path

import numpy as np
import pytest

from mmchat.config import KnowledgeConfig
from mmchat.ui.style import reembedding_line  # the Knowledge tab's line about it (English by default)

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "tests" / "fixtures" / "rag_eval_v2" / "docs"
MINILM = "builtin:all-MiniLM-L6-v2"
USE = "builtin:use-multilingual"
CROSS_QUESTION = "How many H800 cards does the team plan to add in the second half of the year?"


def _open(path: Path, embedder: str):
    from mmchat.knowledge.base import KnowledgeBase

    return KnowledgeBase(KnowledgeConfig(path=str(path), embedder=embedder), encoder=None)


def _close(kb) -> None:
    from chromadb.api.client import SharedSystemClient

    del kb
    SharedSystemClient.clear_system_cache()  # the next open reads the files, as a new process would


def _text_collections(kb) -> list[str]:
    return sorted(c.name for c in kb.client.list_collections() if "_text" in c.name)


@pytest.fixture
def minilm_base(tmp_path):
    """A knowledge base built with MiniLM: the six cross-lingual documents, then closed."""
    kb = _open(tmp_path / "kb", MINILM)
    report = kb.ingest(sorted(DOCS.iterdir()))
    assert len(report.added) == 6
    chunks = kb.counts()["chunks"]
    _close(kb)
    return tmp_path / "kb", chunks


@pytest.mark.slow
def test_a_new_embedder_reembeds_every_chunk_while_the_old_one_serves(minilm_base, tmp_path):
    path, chunks = minilm_base
    kb = _open(path, USE)
    # Not refused: the stored chunks are served with the embedder that made them.
    assert kb.embedder_pending and kb.text_embedder.model_name == "all-MiniLM-L6-v2"
    assert "takes over once they are re-embedded" in reembedding_line(kb)
    assert kb.search(CROSS_QUESTION, top_k=3, min_relevance=0).hits

    seen: list[str] = []
    job = kb.switch_embedder(progress=lambda fraction, message: seen.append(message))
    assert job.state == "done", job.message
    assert any(m.startswith(f"re-embedded {chunks:,}/{chunks:,} chunks") for m in seen), seen
    assert kb.text_embedder.model_name == "use-multilingual-v3-neutral" and not kb.embedder_pending
    assert kb.counts() == {"documents": 6, "chunks": chunks, "images": 0}
    assert len(_text_collections(kb)) == 1  # the old collection is gone
    # Each chunk's new vector is what an ingest with the new embedder stores for that text
    # (it splits differently, sizing chunks in its own tokens: compare the chunks both hold).
    fresh = _open(tmp_path / "fresh", USE)
    fresh.ingest(sorted(DOCS.iterdir()))
    got = kb.store.text_collection.get(include=["embeddings", "documents"])
    want = fresh.store.text_collection.get(include=["embeddings", "documents"])
    by_text = {(i, d): v for i, d, v in zip(want["ids"], want["documents"], want["embeddings"])}
    cosines = [float(np.dot(v, by_text[(i, d)]))
               for i, d, v in zip(got["ids"], got["documents"], got["embeddings"]) if (i, d) in by_text]
    assert len(cosines) >= 20 and min(cosines) > 0.999
    # The English question now finds the Chinese report (MiniLM reads no Chinese).
    assert kb.search(CROSS_QUESTION, top_k=3).hits[0].file_name == "GPU推理容量规划与成本报告.md"
    _close(kb)
    again = _open(path, "auto")
    assert not again.embedder_pending and again.counts()["chunks"] == chunks


@pytest.mark.slow
def test_cancel_and_a_full_disk_leave_the_old_collection_serving(minilm_base, monkeypatch):
    path, chunks = minilm_base
    kb = _open(path, USE)
    before = _text_collections(kb)
    cancel = threading.Event()
    job = kb.switch_embedder(progress=lambda fraction, message: cancel.set(), cancel=cancel)
    assert job.state == "cancelled"
    assert "still using all-MiniLM-L6-v2, nothing lost" in job.message
    assert "cancelled after" in reembedding_line(kb) and "still using `all-MiniLM-L6-v2`, nothing lost" in reembedding_line(kb)
    assert _text_collections(kb) == before and kb.counts()["chunks"] == chunks and kb.embedder_pending
    assert kb.search(CROSS_QUESTION, top_k=3, min_relevance=0).hits

    import chromadb.api.models.Collection as chroma_collection

    real_add = chroma_collection.Collection.add
    calls = []

    def add_until_full(self, *args, **kwargs):
        calls.append(self.name)
        if len(calls) > 1:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_add(self, *args, **kwargs)

    monkeypatch.setattr(chroma_collection.Collection, "add", add_until_full)
    job = kb.switch_embedder()
    assert job.state == "failed" and "No space left on device" in job.message and "nothing lost" in job.message
    monkeypatch.undo()
    assert _text_collections(kb) == before and kb.counts()["chunks"] == chunks
    # Uploads still work, into the collection that serves.
    assert kb.ingest([(b"Plain text about kiwi fruit harvests.", "kiwi.txt")]).added


KILLED_WORKER = textwrap.dedent("""
    import sys, time
    from mmchat.config import KnowledgeConfig
    from mmchat.knowledge.base import KnowledgeBase
    kb = KnowledgeBase(KnowledgeConfig(path=sys.argv[1], embedder="builtin:use-multilingual"), encoder=None)

    def progress(fraction, message):
        if message.startswith("re-embedded"):
            print("MIDWAY", flush=True)  # one batch is in the new collection
            time.sleep(600)

    kb.switch_embedder(progress=progress)
""")


@pytest.mark.slow
def test_a_kill_during_reembedding_leaves_the_old_collection_whole(minilm_base):
    path, chunks = minilm_base
    worker = subprocess.Popen([sys.executable, "-c", KILLED_WORKER, str(path)], cwd=ROOT,
                              stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    try:
        assert worker.stdout.readline().strip() == "MIDWAY"
        os.kill(worker.pid, signal.SIGKILL)
        worker.wait(30)
    finally:
        worker.kill()
    kb = _open(path, USE)
    # The half-filled collection is removed on open and the tab says so; the old one answers,
    # then re-embedding works.
    assert len(_text_collections(kb)) == 1 and kb.embedder_pending
    assert kb.reembedding.state == "interrupted" and "was interrupted (the app stopped)" in reembedding_line(kb)
    assert "nothing lost" in reembedding_line(kb)
    assert kb.counts() == {"documents": 6, "chunks": chunks, "images": 0}
    assert kb.switch_embedder().state == "done" and kb.counts()["chunks"] == chunks


@pytest.mark.slow
def test_the_app_started_on_an_older_base_reembeds_it_while_it_serves(minilm_base, tmp_path):
    """The runtime (what `python app.py` runs) opens a MiniLM-built base with the default
    embedder configured: it serves at once, re-embeds in the background, then uses USE."""
    import time

    from mmchat.config import load_config
    from mmchat.runtime import Runtime

    path, chunks = minilm_base
    config = load_config(env={}, overrides={
        "model": {"preset": "tiny"}, "": {"data_dir": str(tmp_path / "data")},
        "knowledge": {"path": str(path), "seed_demo": False},
    })
    runtime = Runtime(config, backend=object(), encoder=None).start()
    knowledge = runtime.wait_knowledge(timeout=60)
    assert knowledge.search(CROSS_QUESTION, top_k=3, min_relevance=0).hits  # serving meanwhile
    deadline = time.monotonic() + 120
    while not runtime.knowledge_settled() and time.monotonic() < deadline:
        time.sleep(0.2)
    assert knowledge.reembedding is not None and knowledge.reembedding.state == "done", knowledge.reembedding
    assert knowledge.text_embedder.model_name == "use-multilingual-v3-neutral"
    assert knowledge.counts()["chunks"] == chunks and not knowledge.embedder_pending
