"""KnowledgeBase: what the app and a chat session use of RAG, in one object.

It ties the pieces together in the order data flows: file → `loaders.load_file` (validate,
parse with LlamaIndex readers) → `SentenceSplitter` (chunks with overlap, sized in the
embedder's own tokens; a chunk that starts inside a table gets the table's header line,
`tables.with_table_header`) → embeddings → `KnowledgeStore` (Chroma) → manifest record; and
query → `HybridRetriever` → `RetrievalResult`.

Ingestion reports progress, can be cancelled between batches, is idempotent by content hash,
and never leaves a half-indexed document behind (see the store's durability notes). Ingests
are serialised by a lock (two sessions uploading at once take turns; queries never wait), and
`busy_note()` says what is being indexed so an answer can say it may miss those documents.

It holds no UI and no chat history.
"""

from __future__ import annotations

import logging
import re
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

from mmchat.config import KnowledgeConfig
from mmchat.errors import ConfigError, InvalidUpload, UserFacingError
from mmchat.knowledge.retrieval import (
    ATTACHMENT_REFERENCE, Hit, HybridRetriever, RetrievalResult, apply_relevance_floor,
)
from mmchat.knowledge.reembed import HIDDEN_METADATA
from mmchat.knowledge.store import DocumentRecord, KnowledgeStore, open_client
from mmchat.knowledge.tables import table_spans, with_table_header

log = logging.getLogger(__name__)

Progress = Callable[[float, str], None]
EMBED_BATCH = 32
STORE_BATCH = 256
SERVER_PURGE_GRACE_S = 3600.0
DEMO_DIRS = ("demo", "images")
DEMO_SUFFIXES = (".md", ".txt", ".pdf", ".docx", ".html", ".png", ".jpg", ".jpeg", ".webp")


@dataclass
class IngestReport:
    added: list[DocumentRecord] = field(default_factory=list)
    duplicates: list[str] = field(default_factory=list)  # names already in the base
    failed: list[tuple[str, str]] = field(default_factory=list)  # (name, message)
    cancelled: bool = False
    seconds: float = 0.0

    def summary(self) -> str:
        parts = []
        if self.added:
            chunks = sum(r.chunks for r in self.added)
            parts.append(f"indexed {len(self.added)} file(s) ({chunks} chunks) in {self.seconds:.1f} s")
        if self.duplicates:
            parts.append(f"already indexed: {', '.join(self.duplicates)}")
        if self.cancelled:
            parts.append("cancelled; files not yet indexed were skipped and nothing is half-indexed")
        for name, message in self.failed:
            parts.append(f"refused {name}: {message}")
        return "; ".join(parts) or "nothing to index"


@dataclass
class _Job:
    names: list[str]
    done: int = 0


class IngestCancelled(Exception):
    pass


@dataclass
class Reembedding:
    """A re-embedding of the stored chunks: what the Knowledge tab shows and Cancel stops."""

    old: str
    new: str
    cancel: threading.Event = field(default_factory=threading.Event)
    state: str = "running"  # running, done, cancelled, failed, interrupted (found on open)
    fraction: float = 0.0
    message: str = ""  # in English, for logs; the UI words its own from the fields (ui/style.reembedding_line)
    done: int = 0  # chunks re-embedded so far
    total: int = 0  # chunks to re-embed
    error: str = ""  # why it failed
    seconds: float = 0.0
    started: float = field(default_factory=time.perf_counter)

    def finish(self, state: str, message: str) -> None:
        self.state, self.message, self.fraction = state, message, 1.0
        self.seconds = time.perf_counter() - self.started

    @property
    def running(self) -> bool:
        return self.state == "running"


# Chunk sizes are counted in the embedder's tokens, but WordPiece turns any "word" longer than
# 100 characters into one [UNK]: a 1.9 M-character line without spaces counted as one token and
# became one chunk. So a text counts as at least len/MAX_CHARS_PER_TOKEN tokens (prose runs at
# 4-5 characters per token, so real text is unaffected), and runs of more than LONG_RUN
# characters with neither space nor punctuation the splitter breaks at get a space every
# LONG_RUN characters before splitting (the splitter's last resort, one split per character,
# would tokenize each of 1.9 M characters separately). Chinese prose, which has no spaces but
# has punctuation, is left as it is.
MAX_CHARS_PER_TOKEN = 8
LONG_RUN = 200
_LONG_RUN_RE = re.compile(r"[^\s,.;，。；？！、]{%d,}" % (LONG_RUN + 1))


def _char_floor(tokenize: Callable[[str], list]) -> Callable[[str], list]:
    def count(text: str) -> list:
        tokens = tokenize(text)
        floor = len(text) // MAX_CHARS_PER_TOKEN
        return tokens if len(tokens) >= floor else list(tokens) + [""] * (floor - len(tokens))

    return count


def _break_long_runs(text: str) -> str:
    """`text` with a space every LONG_RUN characters inside longer unbreakable runs."""
    return _LONG_RUN_RE.sub(
        lambda m: " ".join(m[0][i : i + LONG_RUN] for i in range(0, len(m[0]), LONG_RUN)), text
    )


def _source_name(source: Any) -> tuple[Any, str | None]:
    if isinstance(source, tuple):
        return source[0], source[1]
    return source, None


class KnowledgeBase:
    def __init__(
        self, config: KnowledgeConfig, *, encoder: Any | None, text_embedder: Any | None = None,
        client: Any | None = None,
    ) -> None:
        from mmchat.knowledge.embeddings import ImageEncoderEmbedding, canonical_embedder, load_text_embedder
        from mmchat.knowledge.loaders import WORK_DIR_NAME, KnowledgeLimits, purge_work_dir

        self.config = config
        self.root = config.resolved_path()
        self.files_dir = self.root / "files"
        self.files_dir.mkdir(parents=True, exist_ok=True)
        self.limits = KnowledgeLimits.from_config(config)
        # Readers' working copies (loaders' default: files/.work), never the system temp dir.
        self.work_dir = self.files_dir / WORK_DIR_NAME
        self.encoder = encoder
        self.text_embedder = text_embedder or load_text_embedder(config.embedder)
        self.text_source = canonical_embedder(config.embedder) if text_embedder is None else ""
        self.image_embedder = ImageEncoderEmbedding(encoder) if encoder is not None else None
        text_dim = len(self.text_embedder.get_text_embedding("dimension probe"))
        self.client = client or open_client(self.root / "chroma", config.host, config.port)
        self.store = KnowledgeStore(
            self.client, config.collection_prefix,
            text_embedder=self.text_embedder.model_name, text_dim=text_dim, text_source=self.text_source,
            image_encoder=encoder.name if encoder is not None else "none",
            image_dim=int(encoder.dim) if encoder is not None else 1,
        )
        self.reembedding: Reembedding | None = None  # the running or last re-embedding
        # The chunks were embedded by another embedder: serve them with it until they are
        # re-embedded (`switch_embedder`; the runtime starts it after opening).
        self.wanted_embedder: Any | None = None
        recorded, recorded_source, _ = self.store.recorded_text_embedder
        if recorded != self.text_embedder.model_name:
            self.wanted_embedder = (self.text_embedder, self.text_source)
            self.text_embedder = self._recorded_embedder(recorded, recorded_source)
            self.text_source = recorded_source
        # Embedded, this process is the only writer: anything unacknowledged is a leftover. On
        # a shared server another app may be mid-ingest, so only old leftovers are purged.
        grace = None if not config.host else time.time() - SERVER_PURGE_GRACE_S
        if not config.host:  # a server's other collections may be another app's re-embedding
            for name, embedder, unfinished in self.store.purge_inactive_text_collections():
                log.warning("knowledge base: removed %s (%s), left by %s", name, embedder,
                            "an interrupted re-embedding" if unfinished else "a re-embedding stopped after its switch")
                if unfinished:  # the Knowledge tab says what happened
                    self.reembedding = Reembedding(self.text_embedder.model_name, embedder)
                    self.reembedding.finish("interrupted", (
                        f"re-embedding with {embedder} was interrupted (the app stopped); "
                        f"still using {self.text_embedder.model_name}, nothing lost"))
        purged = self.store.purge_unacknowledged(older_than=grace)
        if purged:
            log.warning("knowledge base: removed leftovers of %d interrupted ingest(s)", purged)
        self._remove_unlisted_files(grace)
        leftovers = purge_work_dir(self.work_dir, older_than=grace)
        if leftovers:
            log.warning("knowledge base: removed %d reading copies left by a killed ingest", leftovers)
        self.retriever = HybridRetriever(self.store, self.text_embedder, self.image_embedder)
        self.retriever.refresh_lexical(force=True)
        self.splitter = self._splitter()
        self._ingest_lock = threading.Lock()
        self._jobs_lock = threading.Lock()
        self._jobs: list[_Job] = []
        self._pending: set[str] = set()

    def _recorded_embedder(self, name: str, source: str) -> Any:
        """The embedder the stored chunks were made with, to serve them until re-embedded."""
        from mmchat.knowledge.embeddings import load_text_embedder, source_for_name

        source = source or source_for_name(name)
        if source:
            try:
                return load_text_embedder(source)
            except UserFacingError as err:
                log.warning("cannot load %s, which embedded the stored chunks (%s)", source, err)
        raise ConfigError(
            f"the knowledge base's chunks were embedded with {name!r}, which cannot be loaded here to "
            f"serve them while they are re-embedded with {self.text_embedder.model_name!r}; set "
            f"[knowledge] embedder to {source or name!r} or reset the knowledge base"
        )

    @property
    def embedder_pending(self) -> bool:
        """Whether the configured embedder differs from the one the chunks are served with."""
        return self.wanted_embedder is not None

    def switch_embedder(
        self, embedder: Any | str | None = None, progress: Progress | None = None,
        cancel: threading.Event | None = None,
    ) -> Reembedding:
        """Re-embed every stored chunk with `embedder` (a source such as
        'builtin:use-multilingual', a loaded embedder, or None for the configured one) into a
        new collection, then serve from it. Until it is complete the old collection answers;
        Cancel, an error or a kill leaves it as it was. Uploads wait meanwhile.
        """
        from mmchat.knowledge.embeddings import canonical_embedder, load_text_embedder
        from mmchat.knowledge.reembed import ReembedCancelled, copy_text_chunks

        progress = progress or (lambda fraction, message: None)
        cancel = cancel or threading.Event()
        if embedder is None and self.wanted_embedder is None:
            raise UserFacingError("the knowledge base already uses the configured embedder")
        if embedder is None:
            new, source = self.wanted_embedder
        elif isinstance(embedder, str):
            source = canonical_embedder(embedder)
            new = load_text_embedder(source)
        else:
            new, source = embedder, ""
        old_name = self.text_embedder.model_name
        job = Reembedding(old_name, new.model_name, cancel=cancel)
        if new.model_name == old_name:
            job.finish("done", f"the knowledge base already uses {old_name}")
            return job
        self.reembedding = job

        def step(fraction: float, message: str) -> None:
            job.fraction, job.message = fraction, message
            job.done = round(fraction * job.total)
            progress(fraction, message)

        if not self._ingest_lock.acquire(blocking=False):
            step(0.0, "waiting for indexing to finish before re-embedding…")
            self._ingest_lock.acquire()
        try:
            job.total = self.store.text_collection.count()  # under the lock: no upload adds to it now

            def still_listed(doc_ids: set[str]) -> set[str]:  # a document deleted meanwhile is left out
                return {d for d in doc_ids if self.store.get_document(d) is not None}

            collection = copy_text_chunks(self.store, new, source, step, cancel, keep=still_listed)
            old = self.store.activate_text_collection(collection)
            self.text_embedder, self.text_source = new, source
            self.wanted_embedder = None
            retriever = HybridRetriever(self.store, new, self.image_embedder, lexical=self.retriever.lexical)
            retriever._lexical_built = True  # same chunks, same ids: BM25 stays as it is
            self.retriever = retriever
            self.splitter = self._splitter()
            self.store.drop_collection(old)
            job.finish("done", f"re-embedded {collection.count():,} chunks with {new.model_name} "
                               f"in {time.perf_counter() - job.started:.0f} s; {old_name} is no longer used")
        except ReembedCancelled as err:
            job.finish("cancelled", f"re-embedding with {new.model_name} {err}; still using {old_name}, nothing lost")
        except Exception as err:  # a full disk, a lost server: the old collection was never written
            log.exception("re-embedding failed")
            job.error = f"{err.__class__.__name__}: {err}"
            job.finish("failed", f"re-embedding with {new.model_name} failed ({err.__class__.__name__}: {err}); "
                                 f"still using {old_name}, nothing lost")
        finally:
            self._ingest_lock.release()
        progress(1.0, job.message)
        return job

    def _remove_unlisted_files(self, older_than: float | None) -> None:
        """Kept copies no record names (an ingest killed before its record was written)."""
        listed = {r.stored for r in self.store.documents()}
        for path in self.files_dir.iterdir():
            if path.is_file() and path.name not in listed and (older_than is None or path.stat().st_mtime < older_than):
                path.unlink(missing_ok=True)

    def _splitter(self):
        from llama_index.core.node_parser import SentenceSplitter

        from mmchat.knowledge.embeddings import max_tokens, text_tokenizer

        size = self.config.chunk_size or min(512, max_tokens(self.text_embedder) * 3 // 4)
        overlap = self.config.chunk_overlap if self.config.chunk_overlap >= 0 else size // 5
        return SentenceSplitter(chunk_size=size, chunk_overlap=overlap,
                                tokenizer=_char_floor(text_tokenizer(self.text_embedder)))

    @property
    def image_min_score(self) -> float:
        if self.config.image_min_score > 0:
            return self.config.image_min_score
        # The stand-in compares label texts (MiniLM: related ~0.4+), CLIP compares across
        # modalities (matching text-image pairs score ~0.25-0.35).
        return 0.35 if getattr(self.encoder, "is_stand_in", False) else 0.2

    @property
    def image_match_min_score(self) -> float:
        """The cosine an indexed image needs to count as a match for a chat photo (image→image)."""
        if self.config.image_match_min_score > 0:
            return self.config.image_match_min_score
        # Measured with the stand-in (label texts through MiniLM): the same photo re-encoded,
        # resized, cropped to 70 % or mirrored scores >= 0.94; different photos (cat vs coffee
        # 0.41, a horse vs the cat 0.61) stay below. CLIP's image-image cosines run higher for
        # unrelated photos; 0.85 is its usual near-duplicate level (not measured here).
        return 0.8 if getattr(self.encoder, "is_stand_in", False) else 0.85

    # ----- ingest ------------------------------------------------------------------------
    def ingest(
        self,
        sources: Sequence[Any],
        progress: Progress | None = None,
        cancel: threading.Event | None = None,
    ) -> IngestReport:
        """Index files (paths, bytes, or `(source, original name)` pairs); never raises for a bad file."""
        from mmchat.knowledge.loaders import Deadline, load_file

        progress = progress or (lambda fraction, message: None)
        cancel = cancel or threading.Event()
        report = IngestReport()
        pairs = [_source_name(s) for s in sources]
        job = _Job([name or Path(str(src)).name for src, name in pairs])
        with self._jobs_lock:
            self._jobs.append(job)
        started = time.perf_counter()
        try:
            if not self._ingest_lock.acquire(blocking=False):
                progress(0.0, "waiting for another upload to finish indexing…")
                self._ingest_lock.acquire()
            try:
                for index, (source, name) in enumerate(pairs):
                    label = job.names[index]
                    if cancel.is_set():
                        report.cancelled = True
                        break

                    def step(fraction: float, message: str, _i=index) -> None:
                        progress((_i + fraction) / len(pairs), f"{label}: {message} ({_i + 1}/{len(pairs)})")

                    step(0.0, "reading")
                    deadline = Deadline(self.limits.max_parse_seconds, label)
                    try:
                        loaded = load_file(source, store_dir=self.files_dir, limits=self.limits, original_name=name,
                                           work_dir=self.work_dir, deadline=deadline)
                    except UserFacingError as err:
                        report.failed.append((label, str(err)))
                        continue
                    except Exception as err:  # a reader bug must not stop the other files
                        log.exception("could not read %s", label)
                        report.failed.append((label, f"could not be read ({err.__class__.__name__}: {err})"))
                        continue
                    if self.store.get_document(loaded.sha256) is not None:
                        report.duplicates.append(loaded.display_name)
                        job.done += 1
                        continue
                    self._pending.add(loaded.sha256)  # searches skip it until acknowledged
                    try:
                        record = self._index(loaded, step, cancel, deadline)
                    except Exception as err:
                        self._discard(loaded)
                        if isinstance(err, IngestCancelled):
                            report.cancelled = True
                            break
                        if isinstance(err, UserFacingError):
                            report.failed.append((label, str(err)))
                        else:
                            log.exception("indexing %s failed", label)
                            report.failed.append((label, f"indexing failed ({err.__class__.__name__}: {err})"))
                        continue
                    finally:
                        self._pending.discard(loaded.sha256)
                    report.added.append(record)
                    job.done += 1
            finally:
                self._ingest_lock.release()
        finally:
            with self._jobs_lock:
                self._jobs.remove(job)
        report.seconds = time.perf_counter() - started
        progress(1.0, report.summary())
        return report

    def _discard(self, loaded: Any) -> None:
        """Remove what an unacknowledged ingest wrote: its chunks and its kept copy."""
        self.store.delete_chunks(loaded.sha256)
        Path(loaded.path).unlink(missing_ok=True)

    def _index(self, loaded: Any, step: Progress, cancel: threading.Event, deadline: Any = None) -> DocumentRecord:
        added = time.time()
        rows: list[tuple[str, str, str, dict]] = []  # for BM25, once acknowledged
        if loaded.kind == "image":
            self._index_image(loaded, added)
        else:
            rows = self._index_text(loaded, added, step, cancel, deadline)
        chunks = len(rows)
        if cancel.is_set():
            raise IngestCancelled
        if rows:  # e.g. another client purged them on a shared Chroma server
            stored = len(self.store.text_collection.get(where={"doc_id": loaded.sha256}, include=[])["ids"])
            if stored != chunks:
                raise RuntimeError(f"the store holds {stored} of the {chunks} chunks written")
        record = DocumentRecord(
            doc_id=loaded.sha256, file_name=loaded.display_name, kind=loaded.kind,
            size_bytes=loaded.size_bytes, chunks=chunks, pages=loaded.pages or 0, added=added,
            stored=Path(loaded.path).name,
        )
        self.store.acknowledge(record)
        if rows:
            step(1.0, "updating the keyword (BM25) index")
            self.retriever.lexical.add(rows)
        return record

    def _index_text(
        self, loaded: Any, added: float, step: Progress, cancel: threading.Event, deadline: Any = None,
    ) -> list[tuple[str, str, str, dict]]:
        """Split, embed and store a document's chunks; returns its BM25 rows.

        Splitting is bounded: `limits.max_chunks` chunks per file (refused as soon as it is
        passed) and the reading `deadline`, checked between the file's parts."""
        from llama_index.core.schema import MetadataMode, NodeRelationship, RelatedNodeInfo

        from mmchat.knowledge.loaders import Deadline

        deadline = deadline or Deadline(self.limits.max_parse_seconds, loaded.display_name)
        max_chunks = self.limits.max_chunks
        too_many = (
            f"{loaded.display_name}: splits into more than {max_chunks:,} chunks; the limit is "
            f"{max_chunks:,} per file; split it into smaller files."
        )
        if len(loaded.documents) > max_chunks:
            raise InvalidUpload(too_many)

        hidden = list(HIDDEN_METADATA)
        for number, document in enumerate(loaded.documents):
            # Distinct ids while splitting: the splitter copies each chunk's metadata (its
            # page) from the document its ref id names.
            document.id_ = f"{loaded.sha256}-part{number}"
            document.metadata.update({"kind": loaded.kind, "added": added, "content_hash": loaded.sha256})
            document.excluded_embed_metadata_keys = list(hidden)
            document.excluded_llm_metadata_keys = list(hidden)
            if _LONG_RUN_RE.search(document.text):
                document.set_content(_break_long_runs(document.text))
        nodes = []
        for document in loaded.documents:  # one at a time: the same nodes, checked in between
            if cancel.is_set():
                raise IngestCancelled
            deadline.check("splitting the text into chunks")
            split = self.splitter.get_nodes_from_documents([document])
            spans = table_spans(document.text)
            for node in split if spans else ():
                if node.start_char_idx is not None:  # where the splitter found the chunk
                    node.set_content(with_table_header(document.text, spans, node.start_char_idx, node.text))
            nodes.extend(split)
            if len(nodes) > max_chunks:
                raise InvalidUpload(too_many)
        if not nodes:
            raise InvalidUpload(f"{loaded.display_name}: no text to index")
        source = RelatedNodeInfo(node_id=loaded.sha256)
        for number, node in enumerate(nodes):
            node.id_ = f"{loaded.sha256[:24]}-{number:05d}"
            # Every chunk's ref_doc_id is the file's hash: deletion and document filters use it.
            # (The splitter's previous/next links are dropped: nothing reads them, and each
            # carries a copy of the metadata into every stored row.)
            node.relationships = {NodeRelationship.SOURCE: source}
            node.metadata["chunk"] = number
            node.metadata.setdefault("page", 0)
        pending: list[Any] = []
        for start in range(0, len(nodes), EMBED_BATCH):
            if cancel.is_set():
                raise IngestCancelled
            batch = nodes[start : start + EMBED_BATCH]
            vectors = self.text_embedder.get_text_embedding_batch(
                [n.get_content(metadata_mode=MetadataMode.EMBED) for n in batch]
            )
            for node, vector in zip(batch, vectors):
                node.embedding = vector
                # Embedded: the metadata-exclusion lists have done their job, and LlamaIndex
                # would store them in every row's serialized node.
                node.excluded_embed_metadata_keys, node.excluded_llm_metadata_keys = [], []
            pending.extend(batch)
            if len(pending) >= STORE_BATCH or start + EMBED_BATCH >= len(nodes):
                self.store.add_text_nodes(pending)  # Chroma writes are cheaper in bigger batches
                pending = []
            step(min(start + len(batch), len(nodes)) / len(nodes), f"embedded {start + len(batch)}/{len(nodes)} chunks")
        return [
            (n.id_, n.get_content(metadata_mode=MetadataMode.NONE), loaded.sha256,
             {"doc_id": loaded.sha256, "file_name": n.metadata.get("file_name", ""),
              "page": n.metadata.get("page", 0), "chunk": n.metadata["chunk"]})
            for n in nodes
        ]

    def _index_image(self, loaded: Any, added: float) -> None:
        from llama_index.core.schema import ImageNode, NodeRelationship, RelatedNodeInfo
        from PIL import Image

        if self.encoder is None:
            raise InvalidUpload(f"{loaded.display_name}: images need the image encoder, which is not loaded")
        with Image.open(loaded.path) as opened:
            image = opened.convert("RGB")
        vector = self.encoder.encode_images([image])[0]
        labels = self.encoder.describe(image, top_k=3)
        caption = ", ".join(label for label, _ in labels)
        node = ImageNode(
            id_=f"{loaded.sha256[:24]}-image",
            # An ImageNode without text is dropped by LlamaIndex; the labels also make the
            # image findable by words in the sources panel.
            text=f"{loaded.display_name}: {caption}",
            image_path=str(loaded.path),
            embedding=[float(x) for x in vector],
            metadata={"file_name": loaded.display_name, "kind": "image", "added": added,
                      "labels": caption, "content_hash": loaded.sha256},
            relationships={NodeRelationship.SOURCE: RelatedNodeInfo(node_id=loaded.sha256)},
        )
        self.store.add_image_nodes([node])

    def seed_demo(self, knowledge_dir: Path, progress: Progress | None = None) -> IngestReport | None:
        """Index the shipped demo corpus once per knowledge base (deleted demo files stay deleted)."""
        if self.store.seeded:
            return None
        files = sorted(
            p for d in DEMO_DIRS for p in (knowledge_dir / d).glob("*")
            if p.is_file() and not p.name.startswith(".") and p.suffix.lower() in DEMO_SUFFIXES
        )
        report = self.ingest(files, progress)
        if not report.cancelled:
            self.store.mark_seeded()
        return report

    # ----- state -------------------------------------------------------------------------
    def busy_note(self) -> str | None:
        with self._jobs_lock:
            jobs = list(self._jobs)
        if not jobs:
            return None
        pending = [n for job in jobs for n in job.names[job.done :]]
        shown = ", ".join(pending[:3]) + (f" and {len(pending) - 3} more" if len(pending) > 3 else "")
        return (
            f"Indexing is in progress ({shown}); this answer uses only the documents indexed "
            "so far. Ask again when indexing has finished to include them."
        )

    def documents(self) -> list[DocumentRecord]:
        return self.store.documents()

    def image_file(self, doc_id: Any) -> Path | None:
        """The kept copy of an indexed image, by its document id (sha256); None when unknown.

        What the sources panel shows: a retrieval trace (which may come from an imported chat)
        names images by id only, and only files inside `files_dir` are ever returned.
        """
        if not isinstance(doc_id, str) or len(doc_id) != 64 or not all(c in "0123456789abcdef" for c in doc_id):
            return None
        record = self.store.get_document(doc_id)
        if record is None or record.kind != "image" or not record.stored:
            return None
        path = (self.files_dir / record.stored).resolve()
        if path.parent != self.files_dir.resolve() or not path.is_file():
            return None
        return path

    def delete(self, doc_id: str) -> DocumentRecord:
        record = self.store.delete_document(doc_id)
        if record is None:
            raise UserFacingError(f"no document with id {doc_id[:12]}… in the knowledge base")
        stored = self.files_dir / record.stored
        if stored.parent == self.files_dir:
            stored.unlink(missing_ok=True)
        self.retriever.lexical.remove_document(doc_id)
        return record

    def reset(self) -> None:
        if self._ingest_lock.locked():
            raise UserFacingError("indexing is in progress; cancel it or wait before resetting")
        self.store.reset()
        for stored in self.files_dir.glob("*"):
            if stored.is_file():
                stored.unlink()
        self.retriever.refresh_lexical(force=True)

    def counts(self) -> dict[str, int]:
        return self.store.counts()

    # ----- retrieval ---------------------------------------------------------------------
    def search(
        self,
        query: str,
        *,
        top_k: int | None = None,
        doc_ids: Sequence[str] | None = None,
        whole_document: bool = False,
        image_top_k: int | None = None,
        image_vectors: Iterable[Sequence[float]] = (),
        min_relevance: float | None = None,
    ) -> RetrievalResult:
        """What a chat turn retrieves for `query`: the text sources to cite, and images.

        - `result.hits`: the best `top_k` chunks whose calibrated relevance (0..1,
          `Hit.relevance`) is at least the floor (`[knowledge] min_relevance`, or
          `min_relevance` here; 0 turns it off). `result.relevant` is False when none passed:
          then answer without sources, and `result.info` carries "no source relevant enough
          (best relevance 0.xx < floor 0.yy)"; the held-back hits are in `result.below_floor`
          and `result.best_relevance` is the best score before the floor (both in the trace).
        - `result.images`: indexed images near the chat photos' vectors (`image_vectors`,
          image→image, at least `image_match_min_score`) or near the query's text (text→image,
          at least `image_min_score`; not for a question about the chat's own picture).
        """
        top_k = top_k or self.config.top_k
        image_top_k = self.config.image_top_k if image_top_k is None else image_top_k
        image_vectors = list(image_vectors)
        if not any(c.isalnum() for c in query) and not image_vectors:
            # Nothing to match (empty, spaces, punctuation): say so rather than rank noise.
            return RetrievalResult(query=query, info=["the question has no words to search for"])
        started = time.perf_counter()
        result = None
        if whole_document:
            result = self._whole_documents(query, doc_ids)
        if result is None:
            result = self.retriever.search(
                query, top_k=top_k, doc_ids=doc_ids or None, min_score=self.config.min_score,
                exclude=set(self._pending),
            )
            if whole_document:
                result.notes.append(
                    "'Whole document' needs one or more documents chosen in the filter, together "
                    f"under {self.config.whole_document_max_chars} characters; used the best chunks instead."
                )
            apply_relevance_floor(result, self.config.min_relevance if min_relevance is None else min_relevance)
        image_started = time.perf_counter()
        images: dict[str, Hit] = {}
        for vector in image_vectors:
            for hit in self.retriever.search_images(image_vector=vector, top_k=image_top_k,
                                                    min_score=self.image_match_min_score, exclude=set(self._pending)):
                images.setdefault(hit.id, hit)
        # A question about the chat's own picture ("what animal is in this picture?") finds
        # indexed images by that picture (above), not by its words.
        if not ATTACHMENT_REFERENCE.search(query):
            for hit in self.retriever.search_images(query, top_k=image_top_k, min_score=self.image_min_score,
                                                    doc_ids=doc_ids or None, exclude=set(self._pending)):
                images.setdefault(hit.id, hit)
        result.images = sorted(images.values(), key=lambda h: -h.score)[: max(image_top_k, 0)]
        result.timings_ms["images"] = (time.perf_counter() - image_started) * 1000
        result.timings_ms["total"] = (time.perf_counter() - started) * 1000
        note = self.busy_note()
        if note:
            result.notes.insert(0, note)
        return result

    def _whole_documents(self, query: str, doc_ids: Sequence[str] | None) -> RetrievalResult | None:
        """The chosen documents' full text (page by page) if they are short enough, else None."""
        from mmchat.knowledge.loaders import load_file

        if not doc_ids:
            return None
        hits: list[Hit] = []
        total = 0
        for doc_id in doc_ids:
            record = self.store.get_document(doc_id)
            if record is None or record.kind == "image":
                continue
            loaded = load_file(self.files_dir / record.stored, store_dir=self.files_dir, limits=self.limits,
                               original_name=record.file_name)
            for document in loaded.documents:
                total += len(document.text)
                if total > self.config.whole_document_max_chars:
                    return None
                hits.append(Hit(
                    id=f"{doc_id[:24]}-whole-{len(hits)}", doc_id=doc_id, file_name=record.file_name,
                    text=document.text, page=document.metadata.get("page") or None, score=1.0,
                ))
        if not hits:
            return None
        return RetrievalResult(query=query, hits=hits, mode="whole document")
