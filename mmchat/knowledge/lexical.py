"""BM25 over the text chunks, with a tokenizer that also works for Chinese.

Dense embedders miss exact terms (part numbers, code names) and the offline one is English
only, so retrieval fuses dense results with BM25 (see `mmchat.knowledge.retrieval`). BM25's
usual whitespace tokenization would turn a Chinese sentence into one token; `tokenize` emits
lower-cased words and identifiers (`max_new_tokens`, `zx-4471` and their parts) plus
character unigrams and bigrams for CJK runs, the standard dictionary-free approach.

`LexicalIndex` is an in-memory `bm25s` index rebuilt from the store when it changes; it holds
no state of its own that the store does not have. It does not embed or fuse.
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


class LexicalIndex:
    """BM25 over `(id, text, doc_id)` rows; `search` can be limited to some documents."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._retriever = None
        self._ids: list[str] = []
        self._doc_ids = np.array([], dtype=object)
        self.version = -1  # the store version this index reflects

    def __len__(self) -> int:
        return len(self._ids)

    def rebuild(self, rows: Iterable[tuple[str, str, str]], version: int) -> None:
        import bm25s

        ids, corpus, doc_ids = [], [], []
        for row_id, text, doc_id in rows:
            ids.append(row_id)
            corpus.append(tokenize(text) or ["\x00"])
            doc_ids.append(doc_id)
        retriever = None
        if ids:
            retriever = bm25s.BM25()
            retriever.index(corpus, show_progress=False)
        with self._lock:
            self._retriever, self._ids = retriever, ids
            self._doc_ids = np.array(doc_ids, dtype=object)
            self.version = version

    def search(
        self, query: str, k: int, doc_ids: Sequence[str] | None = None, exclude: Iterable[str] = (),
    ) -> list[LexicalHit]:
        with self._lock:
            retriever, ids, owners = self._retriever, self._ids, self._doc_ids
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
