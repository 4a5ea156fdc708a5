"""The knowledge store: Chroma collections behind LlamaIndex's `ChromaVectorStore`.

Three collections per knowledge base (names start with the configured prefix):
- the text collection: text chunks, embedded by the text embedder (which its metadata names,
  with the source to load it again). `<prefix>_text` at first; re-embedding with another
  embedder (`mmchat.knowledge.reembed`) fills a new `<prefix>_text_<id>` beside it, and the
  manifest's metadata then names the new one as active in one write, so a kill before that
  write leaves the old one active and whole (the unfinished copy is removed on the next open);
- `<prefix>_images`: images, embedded by the image encoder (CLIP or the offline stand-in);
- `<prefix>_documents`: the manifest, one record per acknowledged document.

Chroma is embedded (a persistent folder) or a server (`chroma run`): the same code drives
both. Embeddings are always passed in (Chroma's default embedding function would download a
model) and telemetry is off.

Durability: a document's chunks are written first and its manifest record last; only then is
the ingest acknowledged. `purge_unacknowledged()` (run on open) deletes chunks whose document
has no manifest record, i.e. what an ingest killed part-way left behind. Deletion removes the
record first, then the chunks, so a kill in between also ends as a purge.

This module does not parse files, embed, or rank; it stores and fetches.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence, TypeVar

from mmchat.errors import ConfigError, ModelUnavailable

log = logging.getLogger(__name__)

PAGE_SIZE = 5000  # rows per `collection.get` page when scanning a collection
SEEDED_KEY = "mmchat_demo_seeded"
ACTIVE_TEXT_KEY = "mmchat_text_collection"  # manifest metadata: the text collection in use
BUILDING_KEY = "mmchat_building"  # a text collection's metadata: being filled, not yet switched to
FIRST_WRITE_WAIT_S = 5.0  # how long a read waits for a collection's first write to be indexed
_T = TypeVar("_T")


@dataclass(frozen=True)
class DocumentRecord:
    """What the manifest keeps about one acknowledged document (flat, Chroma-storable)."""

    doc_id: str  # sha256 of the file bytes
    file_name: str
    kind: str  # pdf, docx, markdown, html, text, image
    size_bytes: int
    chunks: int  # text chunks (0 for an image)
    pages: int  # PDF pages (0 otherwise)
    added: float  # unix time
    stored: str  # file name of the kept copy inside the store's files folder

    def to_metadata(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_metadata(cls, doc_id: str, metadata: dict[str, Any]) -> "DocumentRecord":
        values = {f.name: metadata.get(f.name) for f in fields(cls)}
        values["doc_id"] = doc_id
        return cls(**values)


def chroma_settings():
    from chromadb.config import Settings

    return Settings(anonymized_telemetry=False, allow_reset=True)


def open_client(path: Path | None = None, host: str = "", port: int = 8000):
    """An embedded persistent client at `path`, or an HTTP client for a Chroma server."""
    import chromadb

    if host:
        try:
            client = chromadb.HttpClient(host=host, port=port, settings=chroma_settings())
            client.heartbeat()
        except Exception as err:
            raise ModelUnavailable(
                f"cannot reach the Chroma server at {host}:{port} ({err.__class__.__name__}); "
                "start it with `chroma run --path DIR --port PORT` or clear [knowledge] host "
                "to use the embedded store"
            ) from None
        return client
    if path is None:
        raise ConfigError("the embedded knowledge store needs a path")
    path.mkdir(parents=True, exist_ok=True)
    return chromadb.PersistentClient(path=str(path), settings=chroma_settings())


def read_vectors(read: Callable[[], _T], *, wait_s: float = FIRST_WRITE_WAIT_S) -> _T:
    """Run a Chroma read that touches vectors, waiting out a collection's first write.

    Embedded Chroma (1.x) records a collection's dimension when its first records are logged,
    and creates the HNSW index folder a moment later; a query or an embeddings `get` from
    another thread in between fails with "Error creating hnsw segment reader: Nothing found on
    disk" (chroma-core/chroma#4212). That happens when someone asks while the first document of
    a new knowledge base is being ingested, so the read is retried for up to `wait_s`; any
    other error, or this one lasting longer, is raised.
    """
    deadline = time.monotonic() + wait_s
    pause = 0.02
    while True:
        try:
            return read()
        except Exception as err:
            if "Nothing found on disk" not in str(err) or time.monotonic() + pause > deadline:
                raise
        time.sleep(pause)
        pause = min(pause * 2, 0.5)


class KnowledgeStore:
    """The three collections of one knowledge base, and the operations on them."""

    def __init__(
        self, client: Any, prefix: str, *, text_embedder: str, text_dim: int,
        image_encoder: str, image_dim: int, text_source: str = "",
    ) -> None:
        from llama_index.vector_stores.chroma import ChromaVectorStore

        self.client = client
        self.prefix = prefix
        self._write_lock = threading.RLock()
        self.manifest = self._collection(f"{prefix}_documents", "manifest", 1)
        # The active text collection may hold another embedder's vectors: the knowledge base
        # then serves it with that embedder and re-embeds (`recorded_text_embedder`).
        active = (self.manifest.metadata or {}).get(ACTIVE_TEXT_KEY) or f"{prefix}_text"
        self.text_collection = self.client.get_or_create_collection(
            active, embedding_function=None, metadata=_text_metadata(text_embedder, text_source, text_dim),
        )
        self.image_collection = self._collection(f"{prefix}_images", image_encoder, image_dim)
        self.text = ChromaVectorStore(chroma_collection=self.text_collection)
        self.images = ChromaVectorStore(chroma_collection=self.image_collection)

    # ----- the text collection and its embedder -----------------------------------------------
    @property
    def recorded_text_embedder(self) -> tuple[str, str, int | None]:
        """`(name, source, dim)` of the embedder the active text collection was built with
        (source "" for collections written before it was recorded)."""
        metadata = self.text_collection.metadata or {}
        return str(metadata.get("embedder") or ""), str(metadata.get("embedder_source") or ""), metadata.get("dim")

    def new_text_collection(self, embedder: str, source: str, dim: int):
        """An empty collection for re-embedding into; not used until `activate_text_collection`."""
        import uuid

        name = f"{self.prefix}_text_{uuid.uuid4().hex[:12]}"
        return self.client.create_collection(
            name, embedding_function=None, metadata={**_text_metadata(embedder, source, dim), BUILDING_KEY: True},
        )

    def drop_collection(self, collection: Any) -> None:
        try:
            self.client.delete_collection(collection.name)
        except Exception:  # already gone; the next open's purge removes any leftover anyway
            log.warning("could not remove the collection %s", collection.name, exc_info=True)

    def activate_text_collection(self, collection: Any) -> Any:
        """Make `collection` the text collection, in one manifest write; returns the old one
        (still whole: the caller removes it once nothing reads it)."""
        from llama_index.vector_stores.chroma import ChromaVectorStore

        with self._write_lock:
            _update_metadata(collection, **{BUILDING_KEY: False})
            _update_metadata(self.manifest, **{ACTIVE_TEXT_KEY: collection.name})  # the switch
            old = self.text_collection
            self.text_collection = collection
            self.text = ChromaVectorStore(chroma_collection=collection)
            return old

    def purge_inactive_text_collections(self) -> list[tuple[str, str, bool]]:
        """Remove text collections of this base that are not the active one: a re-embedding
        killed before it finished, or an old collection a kill left after the switch.
        Returns `(name, embedder, unfinished)` for each."""
        legacy, prefix = f"{self.prefix}_text", f"{self.prefix}_text_"
        removed = []
        for collection in self.client.list_collections():
            name = collection.name
            if name != self.text_collection.name and (name == legacy or name.startswith(prefix)):
                metadata = collection.metadata or {}
                self.client.delete_collection(name)
                removed.append((name, str(metadata.get("embedder") or ""), bool(metadata.get(BUILDING_KEY))))
        return removed

    def _collection(self, name: str, embedder: str, dim: int):
        collection = self.client.get_or_create_collection(
            name,
            embedding_function=None,
            metadata={"embedder": embedder, "dim": dim, "hnsw:space": "cosine"},
        )
        stored = collection.metadata or {}
        if stored.get("embedder") not in (None, embedder) or stored.get("dim") not in (None, dim):
            raise ConfigError(
                f"the knowledge collection {name!r} was built with {stored.get('embedder')!r} "
                f"({stored.get('dim')}-d vectors) but the app now uses {embedder!r} ({dim}-d); "
                "reset the knowledge base, or point [knowledge] path (or collection_prefix) elsewhere"
            )
        return collection

    # ----- manifest ----------------------------------------------------------------------
    def documents(self) -> list[DocumentRecord]:
        records = []
        for ids, metadatas, _ in self.scan(self.manifest, include=["metadatas"]):
            records.extend(DocumentRecord.from_metadata(i, m) for i, m in zip(ids, metadatas))
        return sorted(records, key=lambda r: (r.added, r.file_name))

    def get_document(self, doc_id: str) -> DocumentRecord | None:
        got = self.manifest.get(ids=[doc_id], include=["metadatas"])
        if not got["ids"]:
            return None
        return DocumentRecord.from_metadata(got["ids"][0], got["metadatas"][0])

    def acknowledge(self, record: DocumentRecord) -> None:
        """The last write of an ingest: from here on the document is part of the base."""
        with self._write_lock:
            self.manifest.upsert(ids=[record.doc_id], embeddings=[[1.0]], metadatas=[record.to_metadata()])

    @property
    def seeded(self) -> bool:
        return bool((self.manifest.metadata or {}).get(SEEDED_KEY))

    def mark_seeded(self) -> None:
        _update_metadata(self.manifest, **{SEEDED_KEY: True})

    # ----- chunks --------------------------------------------------------------------------
    def add_text_nodes(self, nodes: Sequence[Any]) -> None:
        with self._write_lock:
            if nodes:
                self.text.add(list(nodes))

    def add_image_nodes(self, nodes: Sequence[Any]) -> None:
        with self._write_lock:
            if nodes:
                self.images.add(list(nodes))

    def delete_chunks(self, doc_id: str) -> None:
        with self._write_lock:
            self.text_collection.delete(where={"doc_id": doc_id})
            self.image_collection.delete(where={"doc_id": doc_id})

    def delete_document(self, doc_id: str) -> DocumentRecord | None:
        with self._write_lock:
            record = self.get_document(doc_id)
            self.manifest.delete(ids=[doc_id])
            self.delete_chunks(doc_id)
            return record

    def purge_unacknowledged(self, older_than: float | None = None) -> int:
        """Delete chunks of documents the manifest does not know (a killed ingest's leftovers).

        With `older_than` (a unix time), chunks written after it are left alone: on a shared
        server they may belong to another app's ingest that is still running.
        """
        with self._write_lock:
            known = {r.doc_id for r in self.documents()}
            newest: dict[str, float] = {}
            for collection in (self.text_collection, self.image_collection):
                for _, metadatas, _ in self.scan(collection, include=["metadatas"]):
                    for m in metadatas:
                        doc_id = m.get("doc_id")
                        if doc_id not in known:
                            newest[doc_id] = max(newest.get(doc_id, 0.0), float(m.get("added") or 0.0))
            orphans = [d for d, added in newest.items() if older_than is None or added < older_than]
            for doc_id in orphans:
                self.delete_chunks(doc_id)
            if orphans:
                log.warning("removed the chunks of %d unacknowledged document(s)", len(orphans))
            return len(orphans)

    def reset(self) -> None:
        with self._write_lock:
            for collection in (self.text_collection, self.image_collection, self.manifest):
                ids = [i for batch, _, _ in self.scan(collection, include=[]) for i in batch]
                for start in range(0, len(ids), PAGE_SIZE):
                    collection.delete(ids=ids[start : start + PAGE_SIZE])

    def text_rows(self) -> Iterator[tuple[str, str, str, dict[str, Any]]]:
        """`(chunk id, text, doc id, metadata)` for every text chunk: what BM25 indexes."""
        for ids, metadatas, documents in self.scan(self.text_collection, include=["metadatas", "documents"]):
            for row_id, metadata, text in zip(ids, metadatas, documents):
                yield row_id, text or "", metadata.get("doc_id", ""), lexical_metadata(metadata)

    def document_chunks(self, doc_id: str) -> list[tuple[str, str, dict[str, Any]]]:
        """All of a document's text chunks in reading order: `(id, text, metadata)`."""
        got = self.text_collection.get(where={"doc_id": doc_id}, include=["metadatas", "documents"])
        rows = list(zip(got["ids"], got["documents"], got["metadatas"]))
        return sorted(rows, key=lambda row: int(row[2].get("chunk", 0)))

    def get_text(self, ids: Sequence[str]) -> dict[str, tuple[str, dict[str, Any]]]:
        if not ids:
            return {}
        got = self.text_collection.get(ids=list(ids), include=["metadatas", "documents"])
        return {i: (d or "", m) for i, d, m in zip(got["ids"], got["documents"], got["metadatas"])}

    def counts(self) -> dict[str, int]:
        return {
            "documents": self.manifest.count(),
            "chunks": self.text_collection.count(),
            "images": self.image_collection.count(),
        }

    @staticmethod
    def scan(collection: Any, include: list[str]) -> Iterator[tuple[list[str], list[dict], list[str]]]:
        """A collection's rows page by page: `(ids, metadatas, documents)`."""
        offset = 0
        while True:
            got = collection.get(limit=PAGE_SIZE, offset=offset, include=include)
            ids = got["ids"]
            if not ids:
                return
            yield ids, got.get("metadatas") or [{}] * len(ids), got.get("documents") or [""] * len(ids)
            if len(ids) < PAGE_SIZE:
                return
            offset += len(ids)


def _update_metadata(collection: Any, **values: Any) -> None:
    """Set keys of a collection's metadata, keeping the others (Chroma replaces the whole dict)."""
    # Without hnsw:space: it is fixed at creation and Chroma refuses to "change" it.
    metadata = {k: v for k, v in (collection.metadata or {}).items() if k != "hnsw:space"}
    metadata.update(values)
    collection.modify(metadata=metadata)


def _text_metadata(embedder: str, source: str, dim: int) -> dict[str, Any]:
    return {"embedder": embedder, "embedder_source": source, "dim": dim, "hnsw:space": "cosine"}


def lexical_metadata(metadata: dict[str, Any]) -> dict[str, Any]:
    """What a hit needs of a chunk's metadata (not LlamaIndex's serialized node)."""
    return {k: metadata[k] for k in ("doc_id", "file_name", "page", "chunk") if k in metadata}


def cosine_from_similarity(similarity: float | None) -> float:
    """ChromaVectorStore reports exp(-distance); with cosine space that is exp(cos - 1)."""
    if not similarity or similarity <= 0:
        return 0.0
    return 1.0 + math.log(similarity)
