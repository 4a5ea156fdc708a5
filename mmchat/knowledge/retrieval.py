"""Hybrid retrieval: dense top-k (LlamaIndex over Chroma) fused with BM25 by reciprocal rank.

`HybridRetriever.search(query)` embeds the query once, asks the text collection through
LlamaIndex's `VectorIndexRetriever` and the BM25 index (`mmchat.knowledge.lexical`) for
candidates, fuses them with reciprocal rank fusion (score = sum of 1 / (60 + rank)), and
keeps each retriever's own rank and score on the hit, so the sources panel can show why a
chunk was chosen. (LlamaIndex's `QueryFusionRetriever` replaces those with the fused score
and wants an LLM object, hence the few lines of fusion here.) It also finds images: by text
(the image encoder's text tower) and by image (an uploaded chat image's vector).

Results carry timings per step and turn into a JSON-able trace for the chat history. This
module does not ingest and does not build prompts.
"""

from __future__ import annotations

import threading
import time
from dataclasses import asdict, dataclass, field
from typing import Any, Sequence

from mmchat.knowledge.lexical import LexicalIndex
from mmchat.knowledge.store import KnowledgeStore, cosine_from_similarity

RRF_K = 60


@dataclass
class Hit:
    id: str
    doc_id: str
    file_name: str
    text: str
    kind: str = "text"  # "text" or "image"
    page: int | None = None
    chunk: int | None = None
    score: float = 0.0  # fused (RRF) for text; cosine for images
    dense: float | None = None  # cosine similarity to the query
    dense_rank: int | None = None
    lexical: float | None = None  # BM25 score
    lexical_rank: int | None = None
    image_path: str | None = None

    @property
    def where(self) -> str:
        return f"{self.file_name}, p. {self.page}" if self.page else self.file_name

    def to_dict(self) -> dict[str, Any]:
        """JSON-able, for the chat history and exports: ids, scores and text, never a path
        (the sources panel finds an image's kept copy by `doc_id` in the knowledge base)."""
        data = asdict(self)
        data.pop("image_path")
        return data


@dataclass
class RetrievalResult:
    query: str
    hits: list[Hit] = field(default_factory=list)
    images: list[Hit] = field(default_factory=list)
    mode: str = "hybrid"  # "hybrid" or "whole document"
    timings_ms: dict[str, float] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    def to_trace(self) -> dict[str, Any]:
        return {
            "query": self.query,
            "mode": self.mode,
            "hits": [h.to_dict() for h in self.hits],
            "images": [h.to_dict() for h in self.images],
            "timings_ms": {k: round(v, 2) for k, v in self.timings_ms.items()},
            "notes": list(self.notes),
        }


def reciprocal_rank_fusion(rankings: Sequence[Sequence[str]], k: int = RRF_K) -> dict[str, float]:
    fused: dict[str, float] = {}
    for ranking in rankings:
        for rank, item in enumerate(ranking, start=1):
            fused[item] = fused.get(item, 0.0) + 1.0 / (k + rank)
    return fused


def _int_or_none(value: Any) -> int | None:
    try:
        return int(value) if value not in (None, "") else None
    except (TypeError, ValueError):
        return None


def _doc_filter(doc_ids: Sequence[str] | None):
    from llama_index.core.vector_stores import FilterOperator, MetadataFilter, MetadataFilters

    if not doc_ids:
        return None
    return MetadataFilters(filters=[MetadataFilter(key="doc_id", value=list(doc_ids), operator=FilterOperator.IN)])


class HybridRetriever:
    def __init__(
        self, store: KnowledgeStore, text_embedder: Any, image_embedder: Any | None,
        lexical: LexicalIndex | None = None,
    ) -> None:
        from llama_index.core import VectorStoreIndex

        self.store = store
        self.text_embedder = text_embedder
        self.image_embedder = image_embedder
        self.lexical = lexical or LexicalIndex()
        self._rebuild_lock = threading.Lock()
        self._lexical_built = False
        # No global Settings: the embed model is given here, and no LLM is ever asked for.
        self.text_index = VectorStoreIndex.from_vector_store(store.text, embed_model=text_embedder)
        self.image_index = (
            VectorStoreIndex.from_vector_store(store.images, embed_model=image_embedder)
            if image_embedder is not None else None
        )

    def refresh_lexical(self, force: bool = False) -> None:
        """(Re)build BM25 from the store: on open, or with `force` after a reset.

        Ingest and delete update it per document (`lexical.add` / `remove_document`), so a
        search never rebuilds it. (On a Chroma server shared by several apps, documents another
        app adds are found by the dense retriever at once and by BM25 after a restart.)
        """
        with self._rebuild_lock:
            if force or not self._lexical_built:
                self.lexical.replace_all(self.store.text_rows())
                self._lexical_built = True

    # ----- text --------------------------------------------------------------------------
    def search(
        self,
        query: str,
        *,
        top_k: int = 4,
        doc_ids: Sequence[str] | None = None,
        min_score: float = 0.0,
        candidates: int = 20,
        query_embedding: Sequence[float] | None = None,
        lexical: bool = True,
        exclude: set[str] | frozenset[str] = frozenset(),
    ) -> RetrievalResult:
        """Top chunks for `query`; `exclude` names documents being indexed (not yet acknowledged)."""
        from llama_index.core.schema import QueryBundle

        result = RetrievalResult(query=query)
        timings = result.timings_ms
        n = max(candidates, top_k)
        started = time.perf_counter()
        if query_embedding is None:
            query_embedding = self.text_embedder.get_query_embedding(query)
        timings["embed"] = (time.perf_counter() - started) * 1000

        started = time.perf_counter()
        retriever = self.text_index.as_retriever(similarity_top_k=n, filters=_doc_filter(doc_ids))
        dense = retriever.retrieve(QueryBundle(query_str=query, embedding=list(query_embedding)))
        timings["dense"] = (time.perf_counter() - started) * 1000

        if exclude:
            dense = [s for s in dense if s.node.ref_doc_id not in exclude]
        hits: dict[str, Hit] = {}
        for rank, scored in enumerate(dense, start=1):
            node = scored.node
            hit = self._hit_from(node.node_id, node.get_content(), node.metadata, node.ref_doc_id)
            hit.dense, hit.dense_rank = cosine_from_similarity(scored.score), rank
            hits[hit.id] = hit

        lexical_ranking: list[str] = []
        if lexical:
            started = time.perf_counter()
            self.refresh_lexical()  # a no-op once built
            lexical_hits = self.lexical.search(query, n, doc_ids, exclude)
            for lexical_hit in lexical_hits:
                if lexical_hit.id not in hits:  # a BM25-only hit: its text is in the index
                    row = self.lexical.row(lexical_hit.id)
                    if row is None:
                        continue
                    hits[lexical_hit.id] = self._hit_from(lexical_hit.id, row.text, row.metadata, row.doc_id)
                hits[lexical_hit.id].lexical = lexical_hit.score
                hits[lexical_hit.id].lexical_rank = lexical_hit.rank
                lexical_ranking.append(lexical_hit.id)
            timings["lexical"] = (time.perf_counter() - started) * 1000

        started = time.perf_counter()
        dense_ranking = [s.node.node_id for s in dense if hits[s.node.node_id].dense >= min_score]
        fused = reciprocal_rank_fusion([dense_ranking, lexical_ranking])
        ranked = sorted(fused, key=lambda i: (-fused[i], i))[:top_k]
        for row_id in ranked:
            hits[row_id].score = fused[row_id]
        result.hits = [hits[i] for i in ranked]
        timings["fuse"] = (time.perf_counter() - started) * 1000
        return result

    @staticmethod
    def _hit_from(row_id: str, text: str, metadata: dict[str, Any], doc_id: Any) -> Hit:
        return Hit(
            id=row_id,
            doc_id=str(metadata.get("doc_id") or doc_id or ""),
            file_name=str(metadata.get("file_name", "")),
            text=text,
            page=_int_or_none(metadata.get("page")) or None,  # 0: not a paged document
            chunk=_int_or_none(metadata.get("chunk")),
        )

    # ----- images ------------------------------------------------------------------------
    def search_images(
        self,
        query: str | None = None,
        *,
        image_vector: Sequence[float] | None = None,
        top_k: int = 2,
        min_score: float = 0.0,
        doc_ids: Sequence[str] | None = None,
        exclude: set[str] | frozenset[str] = frozenset(),
    ) -> list[Hit]:
        """Indexed images near a text query (text→image) or an image's vector (image→image)."""
        from llama_index.core.schema import QueryBundle

        if self.image_index is None or top_k <= 0 or self.store.image_collection.count() == 0:
            return []
        if image_vector is not None:
            bundle = QueryBundle(query_str=query or "", embedding=[float(x) for x in image_vector])
        elif query:
            bundle = QueryBundle(query_str=query, embedding=self.image_embedder.get_query_embedding(query))
        else:
            return []
        retriever = self.image_index.as_retriever(similarity_top_k=top_k, filters=_doc_filter(doc_ids))
        found = []
        for scored in retriever.retrieve(bundle):
            score = cosine_from_similarity(scored.score)
            if score < min_score or scored.node.ref_doc_id in exclude:
                continue
            node = scored.node
            metadata = node.metadata
            found.append(Hit(
                id=node.node_id, doc_id=str(metadata.get("doc_id") or node.ref_doc_id or ""),
                file_name=str(metadata.get("file_name", "")), text=node.get_content(), kind="image",
                score=score, dense=score, dense_rank=len(found) + 1,
                image_path=getattr(node, "image_path", None) or metadata.get("image_path"),
            ))
        return found
