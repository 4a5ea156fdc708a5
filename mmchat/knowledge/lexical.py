"""BM25 over the text chunks, with a tokenizer that also works for Chinese.

Dense embedders miss exact terms (part numbers, code names) and the offline one is English
only, so retrieval fuses dense results with BM25 (see `mmchat.knowledge.retrieval`). BM25's
usual whitespace tokenization would turn a Chinese sentence into one token; `tokenize` emits
lower-cased words and identifiers (`max_new_tokens`, `zx-4471` and their parts) plus
character unigrams and bigrams for CJK runs, the standard dictionary-free approach.

`LexicalIndex` is an in-memory `bm25s` index built from the store on open and updated per
document as documents are acknowledged or deleted; it holds nothing the store does not have.
It does not embed or fuse.
"""

from __future__ import annotations

import logging
import re
import threading
from dataclasses import dataclass
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


def tokenize(text: str) -> list[str]:
    tokens: list[str] = []
    for match in _TOKEN.finditer(text.lower()):
        word = match.group()
        if word.startswith("_"):
            continue
        if "\u3400" <= word[0] <= "\ud7af" or "\uf900" <= word[0] <= "\ufaff":
            tokens.extend(word)
            tokens.extend(word[i : i + 2] for i in range(len(word) - 1))
            continue
        if word in STOPWORDS:
            continue
        tokens.append(word)
        if _PARTS.search(word):  # an identifier: also its parts, so "zx 4471" finds "ZX-4471"
            tokens.extend(part for part in _PARTS.split(word) if part and part not in STOPWORDS)
    return tokens


@dataclass(frozen=True)
class LexicalHit:
    id: str
    score: float
    rank: int


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
            self._snapshot_rows = rows

    def search(
        self, query: str, k: int, doc_ids: Sequence[str] | None = None, exclude: Iterable[str] = (),
    ) -> list[LexicalHit]:
        with self._lock:
            retriever, ids, owners = self._retriever, self._ids, self._owners
        if retriever is None or k <= 0:
            return []
        terms = [t for t in dict.fromkeys(tokenize(query)) if t in retriever.vocab_dict]
        if not terms:
            return []
        scores = retriever.get_scores(terms)
        if doc_ids is not None:
            scores = np.where(np.isin(owners, list(doc_ids)), scores, 0.0)
        exclude = list(exclude)
        if exclude:
            scores = np.where(np.isin(owners, exclude), 0.0, scores)
        k = min(k, int(np.count_nonzero(scores)))
        if k == 0:
            return []
        top = np.argpartition(-scores, k - 1)[:k]
        top = top[np.argsort(-scores[top], kind="stable")]
        return [LexicalHit(ids[i], float(scores[i]), rank) for rank, i in enumerate(top, start=1)]
