"""Re-embedding: copy every stored text chunk into a new collection with another embedder.

`copy_text_chunks(store, embedder, ...)` reads the active text collection page by page (what
is kept: each chunk's text and metadata, LlamaIndex's serialized node included), embeds each
chunk exactly as ingest did (its text with the file name, `embed_text`) and writes it under
the same id into a fresh collection, reporting progress and stopping at Cancel between
batches. It returns the finished collection; it does not make it active. On Cancel, on any
error (a full disk, a lost server) or if fewer rows arrived than were read, it removes the
new collection and raises, so the old one, never written to, keeps serving.

Images are not here: their vectors come from the image encoder, not the text embedder.
`KnowledgeBase.switch_embedder` takes the ingest lock, calls this, then switches.
"""

from __future__ import annotations

import threading
import time
from typing import Any, Callable

from mmchat.knowledge.store import KnowledgeStore

# Metadata an ingest keeps out of the text it embeds (and out of the model's prompt).
HIDDEN_METADATA = ("doc_id", "page", "chunk", "kind", "added", "content_hash")
BATCH = 64


class ReembedCancelled(Exception):
    pass


def embed_text(text: str, metadata: dict[str, Any]) -> str:
    """The text an ingest embedded for a stored chunk: its content with the visible metadata."""
    from llama_index.core.schema import MetadataMode
    from llama_index.core.vector_stores.utils import metadata_dict_to_node

    try:
        node = metadata_dict_to_node(metadata, text=text)
    except Exception:  # a row written by another tool: its text alone
        return text
    node.excluded_embed_metadata_keys = list(HIDDEN_METADATA)
    return node.get_content(metadata_mode=MetadataMode.EMBED)


def copy_text_chunks(
    store: KnowledgeStore, embedder: Any, source: str,
    progress: Callable[[float, str], None] | None = None, cancel: threading.Event | None = None,
    keep: Callable[[set[str]], set[str]] | None = None,
) -> Any:
    """The active text collection re-embedded by `embedder` into a new collection.

    `keep(doc_ids)`: which of the copied documents still exist when the copy ends (a document
    deleted meanwhile is left out of the new collection too).
    """
    progress = progress or (lambda fraction, message: None)
    cancel = cancel or threading.Event()
    old = store.text_collection
    total = old.count()
    dim = len(embedder.get_text_embedding("dimension probe"))
    new = store.new_text_collection(embedder.model_name, source, dim)
    started, done = time.perf_counter(), 0
    try:
        for ids, metadatas, documents in store.scan(old, include=["metadatas", "documents"]):
            for start in range(0, len(ids), BATCH):
                if cancel.is_set():
                    raise ReembedCancelled(f"cancelled after {done:,} of {total:,} chunks")
                rows = slice(start, start + BATCH)
                texts = [embed_text(t or "", m) for t, m in zip(documents[rows], metadatas[rows])]
                new.add(ids=ids[rows], embeddings=embedder.get_text_embedding_batch(texts),
                        metadatas=metadatas[rows], documents=documents[rows])
                done += len(texts)
                progress(done / max(total, 1), f"re-embedded {done:,}/{total:,} chunks "
                         f"({done / max(time.perf_counter() - started, 1e-9):.0f}/s)")
        if keep is not None:
            copied = {m.get("doc_id") for _, metadatas, _ in store.scan(new, include=["metadatas"]) for m in metadatas}
            gone = copied - keep(copied)
            for doc_id in gone:
                new.delete(where={"doc_id": doc_id})
        if new.count() != old.count():
            raise RuntimeError(f"the new collection holds {new.count():,} chunks, the old one {old.count():,}")
        return new
    except BaseException:
        store.drop_collection(new)
        raise
