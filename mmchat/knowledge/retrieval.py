"""Hybrid retrieval: dense (LlamaIndex over Chroma) and BM25, fused by trusted, normalised scores.

`HybridRetriever.search(query)` embeds the query once and asks the text collection (through
LlamaIndex's `VectorIndexRetriever`) and the BM25 index (`mmchat.knowledge.lexical`) for
candidates. Every candidate is then scored by BOTH retrievers: BM25 gives the score of any
chunk, and the dense cosine of a BM25-only candidate comes from its stored embedding. Fusion:

- dense evidence `D` = the cosine mapped onto the embedder's own scale (`EmbedderProfile`:
  0 at its typical unrelated-pair cosine, 1 at its typical paraphrase cosine, clipped);
- lexical evidence `L` = BM25 score / the best BM25 score among the candidates, both counted
  on the query terms the chunk's script can hold: a Chinese chunk never contains an English
  question's words, only its identifiers and numbers (`A800`, `vLLM`, `P95`) and CJK terms,
  so word terms weigh (1 − the chunk's CJK share), CJK terms its CJK share, identifiers 1
  (`lexical.term_scripts`; the same weighting gives `coverage` below). Symmetric to dense
  trust; on rag_eval en→zh it took hybrid hit@5 0.75 → 0.81, hit@1 0.38 → 0.56;
- dense trust `t` for a (query, chunk) pair: 1 for text the embedder reads, falling with the
  CJK share of the query and of the chunk by how badly the embedder handles CJK (measured
  once per embedder on translation pairs: ~0.1 for the English-only MiniLM, ~1 for a
  multilingual model);
- lexical weight `w` for a chunk: the share of the query's IDF mass in terms its script can
  hold (an English question without identifiers says nothing lexically about a Chinese chunk:
  w = 0 there), and lexical evidence sqrt(L · C) with C the coverage below (BM25's relative
  ranking held to how much of the query the chunk contains: the best BM25 among the
  candidates is 1 however weak the match);
- score = (t·D + w·sqrt(L·C)) / (t + w): the mean of the evidence that can be trusted for
  that pair. On rag_eval_v2 with language-neutral USE multilingual, hybrid hit@5 en→zh /
  zh→en: 0.62 / 0.50 with the script weight alone, 0.92 / 0.83 with sqrt(L·C) as well
  (`python -m bench retrieval-eval --sets cross`).

Reciprocal rank fusion was used before; it let a chunk ranked mediocre by both retrievers
beat one ranked first by one of them, and trusted MiniLM's near-random ranking of Chinese
text as much as BM25 (see `python -m bench retrieval-eval` for the figures).

Each hit also gets a calibrated `relevance` in [0, 1], comparable across queries and
languages: the same trusted mean on absolute scales, (t·D + w·C) / (t + w), where C is the
IDF-weighted share of the query's terms the chunk contains (query terms no chunk has count
too, so off-topic questions score low; measured on tests/fixtures/rag_eval, a mean separates
answers from off-topic questions better than max(t·D, C)). A question that points at the
chat's own picture ("this picture", "这张图片") counts that reference as a term no chunk
holds and gets no dense support. `apply_relevance_floor` keeps hits at or above a floor and
says when none is relevant enough.
Near-duplicate chunks (re-uploaded near-copies) collapse to the best-ranked one. Each hit
keeps both retrievers' scores and ranks for the sources panel. It also finds images: by text
(the image encoder's text tower) and by image (an uploaded chat image's vector).

Results carry timings per step and turn into a JSON-able trace for the chat history. This
module does not ingest and does not build prompts.
"""

from __future__ import annotations

import logging
import re
import threading
import time
from dataclasses import asdict, dataclass, field
from typing import Any, Sequence

import numpy as np

from mmchat.knowledge.lexical import LexicalIndex, coverage, idf, tokenize
from mmchat.knowledge.probes import PARAPHRASES
from mmchat.knowledge.store import KnowledgeStore, cosine_from_similarity, read_vectors

log = logging.getLogger(__name__)

NEAR_DUPLICATE = 0.8  # shingle overlap at which two chunks count as copies of each other
SHINGLE = 5  # characters per shingle (works for CJK and Latin text alike)
# A question that points at the chat's own picture ("this picture", "the photo", "这张图片"):
# no document holds that picture, and the embedder cannot see it (see `_fuse`).
ATTACHMENT_REFERENCE = re.compile(
    r"\b(?:this|that|these|those|the|my|attached|uploaded)\s+(?:picture|image|photo|photograph|pic|screenshot)s?\b"
    r"|这张图片?|这幅图|这张照片|这个图片?|图片?[中里上]|照片[中里上]",
    re.IGNORECASE,
)
# Words by which a question asks for the documents ("according to the guide", "根据文档"): the
# picture it may also point at then does not count against the documents.
DOCUMENT_REFERENCE = re.compile(
    r"\b(documents?|docs?|pdfs?|files?|papers?|sources?|knowledge|according|guides?|manuals?|articles?|"
    r"notes?|uploaded|retrieved|corpus)\b|文档|资料|文件|知识库|根据|论文|文章|指南",
    re.IGNORECASE,
)
_CJK_RUN = re.compile(r"[\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uac00-\ud7af\uf900-\ufaff]+")
_SPACE = re.compile(r"\s+")
_LETTERS = re.compile(r"[^\W_]+")


@dataclass
class Hit:
    id: str
    doc_id: str
    file_name: str
    text: str
    kind: str = "text"  # "text" or "image"
    page: int | None = None
    chunk: int | None = None
    score: float = 0.0  # fused (trusted mean of normalised scores) for text; cosine for images
    dense: float | None = None  # cosine similarity to the query
    dense_rank: int | None = None  # None: not among the dense retriever's candidates
    lexical: float | None = None  # BM25 score
    lexical_rank: int | None = None  # None: no query term in the chunk
    relevance: float | None = None  # calibrated 0..1, comparable across queries and languages
    coverage: float | None = None  # IDF-weighted share of the query's terms in the chunk
    dense_trust: float | None = None  # how far the dense cosine counts for this pair (0..1)
    duplicates: str = ""  # file names of near-copies collapsed into this hit, "; "-separated
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
    notes: list[str] = field(default_factory=list)  # for the person asking (indexing, fallbacks)
    # What the retriever says about relevance (nothing went wrong): for the sources panel.
    info: list[str] = field(default_factory=list)
    best_relevance: float = 0.0  # of the ranked text hits, before any floor; 0.0: none
    min_relevance: float = 0.0  # the floor applied (0.0: none)
    below_floor: list[Hit] = field(default_factory=list)  # ranked hits the floor held back

    @property
    def relevant(self) -> bool:
        """Whether any text source passed the relevance floor (what a chat turn should cite)."""
        return bool(self.hits)

    def to_trace(self) -> dict[str, Any]:
        return {
            "query": self.query,
            "mode": self.mode,
            "hits": [h.to_dict() for h in self.hits],
            "images": [h.to_dict() for h in self.images],
            "timings_ms": {k: round(v, 2) for k, v in self.timings_ms.items()},
            "notes": list(self.notes),
            "info": list(self.info),
            "best_relevance": round(self.best_relevance, 4),
            "min_relevance": self.min_relevance,
            "below_floor": [
                {"id": h.id, "file_name": h.file_name, "page": h.page, "chunk": h.chunk,
                 "relevance": h.relevance, "score": h.score}
                for h in self.below_floor
            ],
        }


def apply_relevance_floor(result: RetrievalResult, floor: float) -> RetrievalResult:
    """Keep the hits whose relevance is at least `floor`; the others move to `below_floor`.

    Nothing is dropped silently: the best relevance stays on the result and in the trace, and
    when no hit is left `result.info` says why ("no source relevant enough (best relevance
    0.xx < floor 0.yy)"). Hits without a relevance (whole-document mode) are always kept.
    """
    result.min_relevance = floor
    if floor <= 0:
        return result
    kept = [h for h in result.hits if h.relevance is None or h.relevance >= floor]
    result.below_floor = [h for h in result.hits if h not in kept]
    if result.hits and not kept:
        result.info.append(
            f"no source relevant enough (best relevance {result.best_relevance:.2f} < floor {floor:.2f})"
        )
    result.hits = kept
    return result


def cjk_share(text: str) -> float:
    """The share of a text's letters and digits that are CJK characters (0..1)."""
    letters = sum(map(len, _LETTERS.findall(text)))
    return sum(map(len, _CJK_RUN.findall(text))) / letters if letters else 0.0


def shingles(text: str, size: int = SHINGLE) -> set[str]:
    """Character shingles of the lower-cased, space-normalised text (for near-duplicates)."""
    flat = _SPACE.sub(" ", text.lower()).strip()
    if len(flat) <= size:
        return {flat} if flat else set()
    return {flat[i : i + size] for i in range(len(flat) - size + 1)}


def near_duplicate(a: set[str], b: set[str], threshold: float = NEAR_DUPLICATE) -> bool:
    """Whether two shingle sets overlap by `threshold` of the smaller one (>= their Jaccard),
    so a near-copy whose chunk boundaries moved by a sentence still counts."""
    if not a or not b:
        return False
    return len(a & b) / min(len(a), len(b)) >= threshold


@dataclass(frozen=True)
class EmbedderProfile:
    """How to read one embedder's cosines, measured on a few sentence pairs (no knobs).

    `unrelated`: its mean cosine between unrelated English sentences; `related`: between
    English paraphrases. Cosines are mapped to 0 at `unrelated` and 1 at `related`, so the
    dense evidence of different embedders (MiniLM spreads 0..0.8, others crowd 0.6..1) lives
    on one scale. `cjk_trust`: how well it tells a Chinese sentence's English translation from
    unrelated English, relative to how well it tells English paraphrases apart (0..1):
    ~0.1 for all-MiniLM-L6-v2 (English only), ~1 for a multilingual embedder.
    """

    unrelated: float = 0.0
    related: float = 1.0
    cjk_trust: float = 1.0

    def calibrate(self, cosine: float | np.ndarray) -> Any:
        return np.clip((np.asarray(cosine) - self.unrelated) / (self.related - self.unrelated), 0.0, 1.0)

    def trust(self, query_cjk: float, chunk_cjk: float | np.ndarray) -> Any:
        """How far the dense cosine counts for a (query, chunk) pair, from their CJK shares."""
        gap = 1.0 - self.cjk_trust
        return (1.0 - query_cjk * gap) * (1.0 - np.asarray(chunk_cjk) * gap)

    @classmethod
    def measure(cls, embedder: Any) -> "EmbedderProfile":
        try:
            vectors = np.asarray(embedder.get_text_embedding_batch([s for row in PARAPHRASES for s in row]), dtype=np.float64)
        except Exception as err:  # a stub embedder: read cosines as they are
            log.warning("could not profile the text embedder (%s); dense scores are used uncalibrated", err)
            return cls()
        vectors /= np.maximum(np.linalg.norm(vectors, axis=1, keepdims=True), 1e-12)
        english, paraphrase, chinese = (vectors[i::3] for i in range(3))
        n = len(PARAPHRASES)
        off = ~np.eye(n, dtype=bool)
        similar = english @ paraphrase.T
        related, unrelated = float(np.diag(similar).mean()), float(similar[off].mean())
        if related - unrelated < 0.05:  # it cannot tell paraphrases from unrelated text at all
            return cls()
        crossed = chinese @ english.T
        gap = float(np.diag(crossed).mean() - crossed[off].mean())
        return cls(unrelated=unrelated, related=related,
                   cjk_trust=float(np.clip(gap / (related - unrelated), 0.0, 1.0)))


_PROFILES: dict[int, tuple[Any, EmbedderProfile]] = {}
_PROFILES_LOCK = threading.Lock()


def profile_of(embedder: Any) -> EmbedderProfile:
    """The embedder's profile, measured on first use and kept for the process (with a
    reference to the embedder, so its id cannot be reused by another one)."""
    key = id(embedder)
    with _PROFILES_LOCK:
        if key not in _PROFILES:
            _PROFILES[key] = (embedder, EmbedderProfile.measure(embedder))
        return _PROFILES[key][1]


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
        self._cjk_cache: dict[str, float] = {}
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
        dense: bool = True,
        exclude: set[str] | frozenset[str] = frozenset(),
    ) -> RetrievalResult:
        """Top chunks for `query`; `exclude` names documents being indexed (not yet acknowledged).

        `lexical=False` / `dense=False` turn one retriever off (the baselines the evaluation
        compares with). `min_score`: dense candidates under this cosine are not taken from the
        dense list (BM25 may still bring them). Near-duplicates of a better-ranked hit are left
        out and named on it (`Hit.duplicates`). No relevance floor here: see
        `apply_relevance_floor`.
        """
        from llama_index.core.schema import QueryBundle

        if not (dense or lexical):
            raise ValueError("search needs the dense retriever, BM25, or both")
        result = RetrievalResult(query=query)
        timings = result.timings_ms
        n = max(candidates, top_k)
        hits: dict[str, Hit] = {}
        profile = EmbedderProfile()
        if dense:
            profile = profile_of(self.text_embedder)
            started = time.perf_counter()
            if query_embedding is None:
                query_embedding = self.text_embedder.get_query_embedding(query)
            timings["embed"] = (time.perf_counter() - started) * 1000
            started = time.perf_counter()
            retriever = self.text_index.as_retriever(similarity_top_k=n, filters=_doc_filter(doc_ids))
            bundle = QueryBundle(query_str=query, embedding=list(query_embedding))
            found_dense = read_vectors(lambda: retriever.retrieve(bundle))
            timings["dense"] = (time.perf_counter() - started) * 1000
            for scored in found_dense:
                node = scored.node
                cosine = cosine_from_similarity(scored.score)
                if node.ref_doc_id in exclude or cosine < min_score:
                    continue
                hit = self._hit_from(node.node_id, node.get_content(), node.metadata, node.ref_doc_id)
                hit.dense, hit.dense_rank = cosine, len(hits) + 1
                hits[hit.id] = hit

        weights: dict[str, float] = {}
        by_script: dict[str, tuple[float, float, float]] = {}
        scripts: dict[str, str] = {}
        if lexical:
            started = time.perf_counter()
            self.refresh_lexical()  # a no-op once built
            found = self.lexical.query(query, n, doc_ids, exclude, score_ids=list(hits))
            weights = dict(found.weights)
            by_script, scripts = found.by_script, found.scripts
            if ATTACHMENT_REFERENCE.search(query) and not DOCUMENT_REFERENCE.search(query):
                # The picture the question points at is in no chunk: one unmatched term at the
                # largest IDF this corpus allows.
                weights["\x00attachment"] = idf(0, found.chunks)
            for lexical_hit in found.hits:
                if lexical_hit.id not in hits:  # a BM25-only hit: its text is in the index
                    row = self.lexical.row(lexical_hit.id)
                    if row is None:
                        continue
                    hits[lexical_hit.id] = self._hit_from(lexical_hit.id, row.text, row.metadata, row.doc_id)
            for row_id, (score, rank) in found.scores.items():
                hits[row_id].lexical, hits[row_id].lexical_rank = score, rank
            for lexical_hit in found.hits:
                if lexical_hit.id in hits:
                    hits[lexical_hit.id].lexical, hits[lexical_hit.id].lexical_rank = lexical_hit.score, lexical_hit.rank
            timings["lexical"] = (time.perf_counter() - started) * 1000
            if dense:
                started = time.perf_counter()
                self._dense_for_lexical_only(hits, query_embedding)
                timings["rescore"] = (time.perf_counter() - started) * 1000

        started = time.perf_counter()
        result.hits = self._fuse(query, hits, profile, weights, top_k, dense, lexical, by_script, scripts)
        if "\x00attachment" in weights:
            result.info.append("the question points at a picture in the chat; documents count only for what it names")
        result.best_relevance = max((h.relevance or 0.0 for h in result.hits), default=0.0)
        timings["fuse"] = (time.perf_counter() - started) * 1000
        return result

    def _dense_for_lexical_only(self, hits: dict[str, Hit], query_embedding: Sequence[float]) -> None:
        """The dense cosine of BM25-only candidates, from their stored embeddings."""
        missing = [row_id for row_id, hit in hits.items() if hit.dense is None]
        if not missing:
            return
        got = read_vectors(lambda: self.store.text_collection.get(ids=missing, include=["embeddings"]))
        if got.get("embeddings") is None or not len(got["ids"]):
            return
        vectors = np.asarray(got["embeddings"], dtype=np.float32)
        query = np.asarray(query_embedding, dtype=np.float32)
        norms = np.linalg.norm(vectors, axis=1) * max(float(np.linalg.norm(query)), 1e-12)
        cosines = vectors @ query / np.maximum(norms, 1e-12)
        for row_id, cosine in zip(got["ids"], cosines):
            hits[row_id].dense = float(cosine)

    def _cjk_of(self, row_id: str, text: str) -> float:
        """A chunk's CJK share, remembered by id (ids are content hashes: the text never changes)."""
        share = self._cjk_cache.get(row_id)
        if share is None:
            share = self._cjk_cache[row_id] = cjk_share(text)
        return share

    def _fuse(
        self, query: str, hits: dict[str, Hit], profile: "EmbedderProfile", weights: dict[str, float],
        top_k: int, dense: bool, lexical: bool,
        by_script: dict[str, tuple[float, float, float]] | None = None, scripts: dict[str, str] | None = None,
    ) -> list[Hit]:
        """Score, order, collapse near-duplicates and cut to `top_k` (see the module docstring).

        `by_script`: each candidate's BM25 split by the query terms' script (`LexicalResult`);
        `scripts`: the script of each query term. Without them BM25 is judged on all terms.
        """
        if not hits:
            return []
        ids = list(hits)
        cosine = np.array([hits[i].dense or 0.0 for i in ids])
        bm25 = np.array([hits[i].lexical or 0.0 for i in ids])
        scripts = scripts or {}
        script_bound = lexical and {"latin", "cjk"} & set(scripts.values())
        chunk_cjk = np.array([self._cjk_of(i, hits[i].text) for i in ids]) if script_bound else None
        if dense:
            evidence = profile.calibrate(cosine)
            if profile.cjk_trust >= 1.0:  # reads CJK as well as anything else: no need to look
                trust = np.ones(len(ids))
            else:
                shares = chunk_cjk if chunk_cjk is not None else np.array([self._cjk_of(i, hits[i].text) for i in ids])
                trust = profile.trust(cjk_share(query), shares)
        else:
            evidence = trust = np.zeros(len(ids))
        if chunk_cjk is not None and by_script:
            # Each chunk is judged on the terms its script can hold: reach[i] weighs the BM25
            # of word, CJK and identifier terms by (1 - CJK share, CJK share, 1) of chunk i.
            reach = np.stack([1.0 - chunk_cjk, chunk_cjk, np.ones(len(ids))], axis=1)
            parts = np.array([by_script.get(i, (0.0, 0.0, 0.0)) for i in ids])
            attainable = reach @ parts.T  # [i, j]: candidate j's BM25 on chunk i's terms
            best = attainable.max(axis=1)
            lexical_evidence = np.where(best > 0, np.diag(attainable) / np.maximum(best, 1e-12), 0.0)
        else:
            top = float(bm25.max())
            lexical_evidence = bm25 / top if lexical and top > 0 else np.zeros(len(ids))
        # IDF coverage of the query's terms (on the terms each chunk's script can hold): an
        # absolute measure, where BM25 / the best BM25 gives 1 to the best chunk however weak.
        covered = np.array([self._coverage(hits[i], weights, scripts, chunk_cjk, n) for n, i in enumerate(ids)])
        if weights:
            for row_id, value in zip(ids, covered):
                hits[row_id].coverage = float(value)
        # How far BM25 can speak for each chunk: the share of the query's IDF mass written in
        # a script the chunk holds. An English question without identifiers says nothing
        # lexically about a Chinese chunk, so there its score is the dense evidence alone
        # (with weight 1 it was dragged to half of it, below any English chunk sharing a word).
        reachable = self._lexical_reach(weights, scripts, chunk_cjk, len(ids)) if lexical else np.zeros(len(ids))
        if lexical:
            if weights:  # the relative ranking BM25 knows, held to how much of the query is there
                lexical_evidence = np.sqrt(lexical_evidence * covered)
            fused = (trust * evidence + reachable * lexical_evidence) / np.maximum(trust + reachable, 1e-12)
        else:
            fused = evidence
        # Relevance: the same trusted mean on absolute scales (calibrated cosine, IDF coverage).
        # A question about the chat's picture gets no dense support (the embedder read the
        # words, not the picture), with full weight: only what it names in the documents counts.
        about_picture = "\x00attachment" in weights
        for number, row_id in enumerate(ids):
            hit = hits[row_id]
            hit.score = float(fused[number])
            hit.dense_trust = float(trust[number]) if dense else None
            dense_part, weight = float(trust[number] * evidence[number]), float(trust[number])
            lexical_weight = float(reachable[number])
            if about_picture:
                dense_part, weight, lexical_weight = 0.0, 1.0, 1.0
            if lexical:
                hit.relevance = (dense_part + lexical_weight * (hit.coverage or 0.0)) / max(weight + lexical_weight, 1e-12)
            else:
                hit.relevance = dense_part
        order = sorted(ids, key=lambda i: (-hits[i].score, -(hits[i].dense or 0.0), -(hits[i].lexical or 0.0), i))
        kept: list[Hit] = []
        kept_shingles: list[set[str]] = []
        for row_id in order:
            hit = hits[row_id]
            own = shingles(hit.text)
            copy_of = next((k for k, ks in zip(kept, kept_shingles) if near_duplicate(own, ks)), None)
            if copy_of is not None:
                names = [n for n in copy_of.duplicates.split("; ") if n]
                if hit.file_name not in names:
                    copy_of.duplicates = "; ".join(names + [hit.file_name])
                continue
            kept.append(hit)
            kept_shingles.append(own)
            if len(kept) == top_k:
                break
        return kept

    def _coverage(
        self, hit: Hit, weights: dict[str, float], scripts: dict[str, str], chunk_cjk: np.ndarray | None, number: int,
    ) -> float:
        if not weights:
            return 0.0
        row = self.lexical.row(hit.id)
        tokens = row.tokens if row is not None else tokenize(hit.text)
        reach = None
        if chunk_cjk is not None:
            share = float(chunk_cjk[number])
            by = {"latin": 1.0 - share, "cjk": share}
            reach = {term: by.get(script, 1.0) for term, script in scripts.items()}
        return coverage(weights, tokens, reach)

    @staticmethod
    def _lexical_reach(
        weights: dict[str, float], scripts: dict[str, str], chunk_cjk: np.ndarray | None, n: int,
    ) -> np.ndarray:
        """Per chunk, the IDF-weighted share of the query's terms its script can hold (0..1):
        word terms count by (1 - the chunk's CJK share), CJK terms by its CJK share,
        identifiers and numbers fully. 1 everywhere when scripts are not told apart."""
        total = sum(weights.values())
        if chunk_cjk is None or total <= 0:
            return np.ones(n)
        by_script = {"latin": 0.0, "cjk": 0.0, "neutral": 0.0}
        for term, weight in weights.items():
            by_script[scripts.get(term, "neutral")] += weight
        return (by_script["latin"] * (1.0 - chunk_cjk) + by_script["cjk"] * chunk_cjk + by_script["neutral"]) / total

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
        for scored in read_vectors(lambda: retriever.retrieve(bundle)):
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
