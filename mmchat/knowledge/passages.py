"""The sentences of a retrieved chunk that best match a question.

Used twice on the way from retrieval to the answer: to trim each source to its most relevant
sentences before it goes into a small model's prompt (a 135M model loses the question in a
long context), and to show the supporting passage under an answer, so the evidence is visible
even when the model writes poorly. Sentences are scored by the question's terms they contain
(the BM25 tokenizer's terms, so Chinese works through character unigrams and bigrams), with
rarer and longer terms counting more. Pure text: no models, no store, no prompt building.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Sequence

from mmchat.knowledge.lexical import is_cjk, tokenize

# A sentence ends at . ! ? followed by a space, at CJK full stops, or at a line break (lists,
# table rows and headings are sentences of their own).
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+(?=[\"'(\[A-Z0-9\u3400-\u9fff])|(?<=[。！？；])|\n+")
MAX_SENTENCE_CHARS = 400


@dataclass(frozen=True)
class Sentence:
    index: int  # position in the chunk
    text: str
    score: float


def split_sentences(text: str) -> list[str]:
    """Sentences (and list items, table rows, headings) of `text`, long ones cut to a bound."""
    sentences = []
    for piece in _SENTENCE_END.split(text):
        piece = " ".join(piece.split())
        while len(piece) > MAX_SENTENCE_CHARS:  # no punctuation for a long stretch: cut at a space
            cut = piece.rfind(" ", 0, MAX_SENTENCE_CHARS)
            cut = cut if cut > MAX_SENTENCE_CHARS // 2 else MAX_SENTENCE_CHARS
            sentences.append(piece[:cut].strip())
            piece = piece[cut:].strip()
        if piece:
            sentences.append(piece)
    return sentences


def _term_weight(term: str) -> float:
    if is_cjk(term):
        return 1.0 if len(term) > 1 else 0.3  # a CJK bigram says much more than one character
    if any(ch.isdigit() for ch in term):
        return 2.0  # numbers and identifiers are what factual questions ask about
    return 1.0 + min(len(term), 12) / 12


def rank_sentences(question: str, text: str) -> list[Sentence]:
    """`text`'s sentences, best match for `question` first (ties: earlier first)."""
    sentences = split_sentences(text)
    if not sentences:
        return []
    query_terms = set(tokenize(question))
    sentence_terms = [set(tokenize(s)) for s in sentences]
    # Terms that occur in every sentence of the chunk do not tell sentences apart.
    document_frequency = {t: sum(t in terms for terms in sentence_terms) for t in query_terms}
    n = len(sentences)
    weights = {
        t: _term_weight(t) * math.log(1 + n / document_frequency[t])
        for t in query_terms if document_frequency[t]
    }
    ranked = []
    for index, (sentence, terms) in enumerate(zip(sentences, sentence_terms)):
        score = sum(w for t, w in weights.items() if t in terms)
        # Prefer a sentence to a bare heading or a fragment of a few characters.
        score *= min(1.0, 0.5 + len(sentence) / 80)
        ranked.append(Sentence(index, sentence, score))
    ranked.sort(key=lambda s: (-s.score, s.index))
    return ranked


def best_passage(question: str, text: str, max_chars: int) -> str:
    """The best-matching sentences of `text` up to `max_chars`, in the order the text has them.

    Skipped stretches are marked with "…". With no term in common the chunk's first sentence
    is returned. `max_chars` <= 0 returns the whole text.
    """
    return best_passages(question, text, [max_chars])[0]


def best_passages(question: str, text: str, budgets: Sequence[int]) -> list[str]:
    """`best_passage` for several lengths at once, ranking the sentences once."""
    ranked: list[Sentence] | None = None
    passages = []
    for max_chars in budgets:
        if max_chars <= 0 or len(text) <= max_chars:
            passages.append(text.strip())
            continue
        if ranked is None:
            ranked = rank_sentences(question, text)
        passages.append(_pick(ranked, max_chars))
    return passages


def _pick(ranked: list[Sentence], max_chars: int) -> str:
    if not ranked:
        return ""
    chosen: list[Sentence] = []
    used = 0
    for sentence in ranked:
        if chosen and sentence.score <= 0:
            break
        cost = len(sentence.text) + 2
        if chosen and used + cost > max_chars:
            continue
        chosen.append(sentence)
        used += cost
        if used >= max_chars:
            break
    chosen.sort(key=lambda s: s.index)
    parts: list[str] = []
    previous = None
    for sentence in chosen:
        if previous is not None and sentence.index != previous + 1:
            parts.append("…")
        parts.append(sentence.text[:max_chars])
        previous = sentence.index
    return " ".join(parts)
