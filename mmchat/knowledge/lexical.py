"""BM25 over the text chunks, with a tokenizer that also works for Chinese.

Dense embedders miss exact terms (part numbers, code names) and the offline one is English
only, so retrieval fuses dense results with BM25 (see `mmchat.knowledge.retrieval`). BM25's
usual whitespace tokenization would turn a Chinese sentence into one token; `tokenize` emits
lower-cased words and identifiers (`max_new_tokens`, `zx-4471` and their parts) plus
character unigrams and bigrams for CJK runs, the standard dictionary-free approach.

`LexicalIndex` is an in-memory `bm25s` index built from the store on open and updated per
document as documents are acknowledged or deleted; it holds nothing the store does not have.
`LexicalIndex.query` returns the top chunks and, for any other chunks asked about (the dense
retriever's candidates), their BM25 score and rank too, plus the query terms' IDF weights, so
the fusion can score every candidate with both retrievers and `coverage` can say which share
of the query's information a chunk contains. Each scored chunk's BM25 also comes split by the
script of the query terms (`term_scripts`: words, CJK terms, and identifiers/numbers that any
script writes the same), so the fusion can judge a Chinese chunk only on the terms it could
contain. It does not embed or fuse.
"""

from __future__ import annotations

import logging
import math
import re
import threading
from dataclasses import dataclass, field
from typing import Iterable, Sequence

import numpy as np

logging.getLogger("bm25s").setLevel(logging.WARNING)  # it logs every index build at DEBUG

_CJK = "\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff\u3040-\u30ff\uac00-\ud7af"
_TOKEN = re.compile(rf"[{_CJK}]+|[^\W_{_CJK}]+(?:[_\-.][^\W_{_CJK}]+)*|_+", re.UNICODE)
_PARTS = re.compile(r"[_\-.]")
STOPWORDS = frozenset(
    "a an and are as at be by for from has have how in is it its of on or that the this to was "
    "were what when where which who why will with do does did can you your i me my we our they "
    "their there these those than then so if not no".split()
)


def is_cjk(term: str) -> bool:
    """Whether a token from `tokenize` is CJK (a character or a character bigram)."""
    return "\u3400" <= term[0] <= "\ud7af" or "\uf900" <= term[0] <= "\ufaff"


def tokenize(text: str) -> list[str]:
    tokens: list[str] = []
    for match in _TOKEN.finditer(text.lower()):
        word = match.group()
        if word.startswith("_"):
            continue
        if is_cjk(word):
            tokens.extend(word)
            tokens.extend(word[i : i + 2] for i in range(len(word) - 1))
            continue
        if word in STOPWORDS:
            continue
        tokens.append(word)
        if _PARTS.search(word):  # an identifier: also its parts, so "zx 4471" finds "ZX-4471"
            tokens.extend(part for part in _PARTS.split(word) if part and part not in STOPWORDS)
    return tokens


SCRIPTS = ("latin", "cjk", "neutral")


def term_scripts(query: str) -> dict[str, str]:
    """Which script writes each of the query's terms: "cjk", "latin" (a word), or "neutral".

    Neutral terms are the ones a text in any script would write the same way: identifiers
    and numbers (a digit, or a capital after the first letter: `A800`, `vLLM`, `QLoRA`,
    `ROUGE-L`, `BM25`) and their parts. A Chinese chunk can hold the neutral and CJK terms of
    an English question, never its English words. Terms come from `tokenize`.
    """
    scripts: dict[str, str] = {}
    for match in _TOKEN.finditer(query):
        word = match.group()
        if is_cjk(word):
            script = "cjk"
        elif any(c.isdigit() for c in word) or any(c.isupper() for c in word[1:]):
            script = "neutral"
        else:
            script = "latin"
        for term in tokenize(word):
            if scripts.get(term) != "neutral":  # a term also written as an identifier is one
                scripts[term] = script
    return scripts


@dataclass(frozen=True)
class LexicalHit:
    id: str
    score: float
    rank: int


@dataclass(frozen=True)
class LexicalResult:
    """What one BM25 query found: the top `hits`, the score and rank of other chunks asked
    about (`scores`: id -> (score, rank or None when it scored 0)), and `weights`, the IDF of
    each distinct query term (terms no chunk contains get the largest IDF the corpus allows).
    `by_script`: for each of those chunks, its BM25 score split over the query terms' scripts
    (`SCRIPTS` order; the parts add up to the score); `scripts`: `term_scripts` of the query."""

    hits: list[LexicalHit]
    scores: dict[str, tuple[float, int | None]]
    weights: dict[str, float]
    chunks: int = 0  # how many chunks the index held (the IDF of an unseen term is idf(0, chunks))
    by_script: dict[str, tuple[float, float, float]] = field(default_factory=dict)
    scripts: dict[str, str] = field(default_factory=dict)


def idf(df: int, n: int) -> float:
    """BM25's (Lucene) inverse document frequency of a term found in `df` of `n` chunks."""
    return math.log(1.0 + (n - df + 0.5) / (df + 0.5))


def coverage(weights: dict[str, float], tokens: Iterable[str], reach: dict[str, float] | None = None) -> float:
    """The IDF-weighted share of the query's terms that occur in `tokens` (0..1).

    Rare terms weigh more than common ones, and a query term no chunk contains still counts
    in the total, so a question about something the corpus does not mention scores low
    everywhere. Comparable across queries and languages, unlike a raw BM25 score. `reach`
    (term -> 0..1, missing = 1) scales each term by how far the chunk could contain it at
    all (its script: see `term_scripts`), so a Chinese chunk is measured against the terms
    a Chinese text can hold.
    """
    reach = reach or {}
    scaled = {term: w * reach.get(term, 1.0) for term, w in weights.items()}
    total = sum(scaled.values())
    if total <= 0:
        return 0.0
    present = set(tokens)
    return sum(w for term, w in scaled.items() if term in present) / total


@dataclass(frozen=True)
class LexicalRow:
    """One indexed chunk: its tokens, owner, and what a hit shows (text, metadata)."""

    tokens: tuple[str, ...]
    doc_id: str
    text: str
    metadata: dict


class LexicalIndex:
    """BM25 over chunks, updated per document; `search` can be limited to some documents.

    Rows are kept with their tokens, so adding or removing a document re-runs only the BM25
    statistics (`bm25s.index`), not tokenization or a read of the store; and a BM25-only hit
    has its text and metadata at hand. Searches use the last complete index while a new one
    is built, so they never wait for an ingest.
    """

    def __init__(self) -> None:
        self._write_lock = threading.Lock()  # one mutation at a time
        self._lock = threading.Lock()  # guards the swap of the searchable snapshot
        self._rows: dict[str, LexicalRow] = {}
        self._retriever = None
        self._ids: list[str] = []
        self._owners = np.array([], dtype=object)
        self._positions: dict[str, int] = {}
        self._snapshot_rows: dict[str, LexicalRow] = {}

    def __len__(self) -> int:
        return len(self._ids)

    def replace_all(self, rows: Iterable[tuple[str, str, str, dict]]) -> None:
        """Index exactly `rows`: `(chunk id, text, doc id, metadata)`."""
        with self._write_lock:
            self._rows = {row_id: self._row(text, doc_id, metadata) for row_id, text, doc_id, metadata in rows}
            self._reindex()

    def add(self, rows: Iterable[tuple[str, str, str, dict]]) -> None:
        with self._write_lock:
            self._rows = dict(self._rows)
            for row_id, text, doc_id, metadata in rows:
                self._rows[row_id] = self._row(text, doc_id, metadata)
            self._reindex()

    def remove_document(self, doc_id: str) -> None:
        with self._write_lock:
            self._rows = {k: r for k, r in self._rows.items() if r.doc_id != doc_id}
            self._reindex()

    def row(self, row_id: str) -> LexicalRow | None:
        with self._lock:
            return self._snapshot_rows.get(row_id)

    @staticmethod
    def _row(text: str, doc_id: str, metadata: dict) -> LexicalRow:
        return LexicalRow(tuple(tokenize(text)) or ("\x00",), doc_id, text, dict(metadata))

    def _reindex(self) -> None:
        import bm25s

        rows = self._rows
        retriever = None
        if rows:
            retriever = bm25s.BM25()
            retriever.index([list(r.tokens) for r in rows.values()], show_progress=False)
        with self._lock:
            self._retriever = retriever
            self._ids = list(rows)
            self._owners = np.array([r.doc_id for r in rows.values()], dtype=object)
            self._positions = {row_id: i for i, row_id in enumerate(rows)}
            self._snapshot_rows = rows

    def search(
        self, query: str, k: int, doc_ids: Sequence[str] | None = None, exclude: Iterable[str] = (),
    ) -> list[LexicalHit]:
        return self.query(query, k, doc_ids, exclude).hits

    def query(
        self, query: str, k: int, doc_ids: Sequence[str] | None = None, exclude: Iterable[str] = (),
        score_ids: Iterable[str] = (),
    ) -> LexicalResult:
        """The top `k` chunks for `query`, and the BM25 score and rank of each of `score_ids`."""
        with self._lock:
            retriever, ids, owners, positions = self._retriever, self._ids, self._owners, self._positions
        if retriever is None:
            return LexicalResult([], {}, {}, 0)
        n = len(ids)
        distinct = list(dict.fromkeys(tokenize(query)))
        vocab = retriever.vocab_dict
        indptr = retriever.scores["indptr"]
        weights = {
            t: idf(int(indptr[vocab[t] + 1] - indptr[vocab[t]]) if t in vocab else 0, n) for t in distinct
        }
        terms = [t for t in distinct if t in vocab]
        if not terms or k <= 0 and not score_ids:
            return LexicalResult([], {}, weights, n, {}, term_scripts(query))
        scripts = term_scripts(query)
        groups = [[t for t in terms if scripts.get(t, "neutral") == script] for script in SCRIPTS]
        parts = [retriever.get_scores(group) if group else None for group in groups]
        scores = sum(part for part in parts if part is not None)
        keep = np.ones(n, dtype=bool)
        if doc_ids is not None:
            keep &= np.isin(owners, list(doc_ids))
        exclude = list(exclude)
        if exclude:
            keep &= ~np.isin(owners, exclude)
        scores = np.where(keep, scores, 0.0)
        hits: list[LexicalHit] = []
        k = min(max(k, 0), int(np.count_nonzero(scores)))
        if k > 0:
            top = np.argpartition(-scores, k - 1)[:k]
            top = top[np.argsort(-scores[top], kind="stable")]
            hits = [LexicalHit(ids[i], float(scores[i]), rank) for rank, i in enumerate(top, start=1)]
        ranked = {h.id: (h.score, h.rank) for h in hits}
        others: dict[str, tuple[float, int | None]] = {}
        for row_id in score_ids:
            if row_id in ranked:
                others[row_id] = ranked[row_id]
            elif row_id in positions:
                score = float(scores[positions[row_id]])
                others[row_id] = (score, int(np.count_nonzero(scores > score)) + 1 if score > 0 else None)
        by_script: dict[str, tuple[float, float, float]] = {}
        for row_id in list(ranked) + list(others):
            at = positions.get(row_id)
            if at is not None and keep[at]:
                by_script[row_id] = tuple(float(p[at]) if p is not None else 0.0 for p in parts)
        return LexicalResult(hits, others, weights, n, by_script, scripts)
