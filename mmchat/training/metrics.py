"""Answer and caption metrics: exact match, VQA accuracy, "contains the answer", CIDEr-D.

Pure functions over strings (no torch, no models, no files), each tested on known values:

- `normalize_answer`: the official VQA evaluation's answer normalisation (vqaEval.py:
  punctuation, number words to digits, articles dropped, contractions restored);
- `exact_match`: the normalised prediction equals a reference;
- `vqa_accuracy`: the official min(#humans that said it / 3, 1), averaged over the
  leave-one-out subsets of the references;
- `contains_answer`: the expected word (or one of "a|b") appears as whole words (the check the
  shipped adapters' cards report as "answers");
- `cider_d`: CIDEr-D (Vedantam et al. 2015, as coco-caption computes it) with a Python
  PTB-style tokenizer, so no Java is needed.

It does not ask models or read datasets (that is `mmchat.training.evaluate`).
"""

from __future__ import annotations

import math
import re
from collections import Counter
from typing import Sequence

from mmchat.errors import UserFacingError

# vqaEval.py's tables. Number words stop at ten there; eleven/twelve only in `contains_answer`.
VQA_NUMBERS = {"none": "0", "zero": "0", "one": "1", "two": "2", "three": "3", "four": "4", "five": "5",
               "six": "6", "seven": "7", "eight": "8", "nine": "9", "ten": "10"}
ARTICLES = frozenset({"a", "an", "the"})
VQA_PUNCTUATION = (";", "/", "[", "]", '"', "{", "}", "(", ")", "=", "+", "\\", "_", "-", ">", "<", "@", "`",
                   ",", "?", "!")
_PERIOD_STRIP = re.compile(r"\.(?!\d)")  # a period that is not a decimal point
_COMMA_IN_NUMBER = re.compile(r"(\d)(,)(\d)")

# The official table maps an answer written without its apostrophe back to the contraction.
# Its keys that are also ordinary words ("its", "lets", "well", "hell", "shell", "wed", "id")
# are left out here: "its" must stay the possessive.
_CONTRACTIONS = (
    "ain't", "aren't", "can't", "could've", "couldn't", "couldn't've", "didn't", "doesn't", "don't", "hadn't",
    "hadn't've", "hasn't", "haven't", "he'd", "he'd've", "he's", "how'd", "how'll", "how's", "i'd've", "i'm",
    "i've", "isn't", "it'd", "it'd've", "it'll", "ma'am", "mightn't", "mightn't've", "might've",
    "mustn't", "must've", "needn't", "not've", "o'clock", "oughtn't", "shan't", "she'd've",
    "she's", "should've", "shouldn't", "shouldn't've", "somebody'd", "somebody'd've", "somebody'll",
    "somebody's", "someone'd", "someone'd've", "someone'll", "someone's", "something'd", "something'd've",
    "something'll", "that's", "there'd", "there'd've", "there're", "there's", "they'd", "they'd've",
    "they'll", "they're", "they've", "'twas", "wasn't", "we'd've", "we've", "weren't", "what'll", "what're",
    "what's", "what've", "when's", "where'd", "where's", "where've", "who'd", "who'd've", "who'll", "who're",
    "who's", "who've", "why'll", "why're", "why's", "won't", "would've", "wouldn't", "wouldn't've", "y'all",
    "y'all'll", "y'all'd've", "you'd", "you'd've", "you'll", "you're", "you've",
)
CONTRACTIONS = {c.replace("'", ""): c for c in _CONTRACTIONS}


def _strip_punctuation(text: str) -> str:
    # As vqaEval.processPunctuation: a mark next to a space (or any mark in a text with a
    # "1,000"-style number) is deleted, one inside a word becomes a space ("black/white").
    out = text
    number_comma = _COMMA_IN_NUMBER.search(text) is not None
    for mark in VQA_PUNCTUATION:
        if f"{mark} " in text or f" {mark}" in text or number_comma:
            out = out.replace(mark, "")
        else:
            out = out.replace(mark, " ")
    return _PERIOD_STRIP.sub("", out)


def normalize_answer(text: str) -> str:
    """An answer as the official VQA evaluation compares it: "The Two cats." -> "2 cats",
    "1,000" -> "1000", "3.5" stays, "dont" -> "don't", whitespace collapsed."""
    text = str(text).replace("\n", " ").replace("\t", " ").strip()
    words = []
    for word in _strip_punctuation(text).lower().split():
        word = VQA_NUMBERS.get(word, word)
        if word not in ARTICLES:
            words.append(CONTRACTIONS.get(word, word))
    return " ".join(words)


def _as_list(references: str | Sequence[str]) -> list[str]:
    return [references] if isinstance(references, str) else list(references)


def exact_match(prediction: str, references: str | Sequence[str]) -> float:
    """1.0 when the normalised prediction equals any normalised reference, else 0.0."""
    answer = normalize_answer(prediction)
    return float(any(answer == normalize_answer(r) for r in _as_list(references)))


def vqa_accuracy(prediction: str, references: Sequence[str]) -> float:
    """VQA accuracy: for each reference left out in turn, min(#other references equal to the
    prediction / 3, 1); the mean over the leave-one-out sets (the official eval's 10-choose-9).

    With 10 references: 4 or more agreeing -> 1.0, 3 -> 0.9, 1 -> 0.3. With fewer, the same
    average over what there is, the "3 humans" bar lowered to the n - 1 others when they are
    fewer than 3 (2 agreeing of 2 -> 1.0); one reference has no others, so it is exact match.
    No references: 0.0.
    """
    refs = [normalize_answer(r) for r in _as_list(references)]
    if len(refs) <= 1:
        return exact_match(prediction, refs) if refs else 0.0
    answer = normalize_answer(prediction)
    agreeing = sum(r == answer for r in refs)
    bar = min(3, len(refs) - 1)
    total = sum(min((agreeing - (r == answer)) / bar, 1.0) for r in refs)
    return total / len(refs)


_NUMBER_WORDS = {**VQA_NUMBERS, "eleven": "11", "twelve": "12"}


def _words(text: str) -> str:
    return " ".join(_NUMBER_WORDS.get(w, w) for w in re.findall(r"[a-z0-9]+", text.lower()))


def contains_answer(prediction: str, expected: str) -> bool:
    """True when `expected` (or one of its "|"-separated alternatives) appears in `prediction`
    as whole words (case-insensitive, "four" = "4"); an empty `expected` always holds."""
    if not expected:
        return True
    return any(f" {_words(word)} " in f" {_words(prediction)} " for word in expected.split("|"))


# --- CIDEr-D --------------------------------------------------------------------------------

MIN_CIDER_CAPTIONS = 5

# PTB tokenisation as coco-caption uses it: clitics split off ("dog's" -> "dog 's",
# "don't" -> "do n't"), hyphenated words and numbers ("3.5", "1,000") kept whole, then every
# punctuation token dropped.
_CLITIC = re.compile(r"(?i)\b(\w+)(n't)\b|\b(\w+)('s|'re|'ve|'ll|'d|'m)\b")
_TOKEN = re.compile(r"n't|'(?:s|re|ve|ll|d|m)\b|[^\W_]+(?:-[^\W_]+)*(?:[.,]\d+)*|\S")


def caption_tokens(text: str) -> list[str]:
    """Lower-case words as coco-caption's PTB tokenizer leaves them, punctuation removed."""
    text = str(text).lower().replace("\u2019", "'")
    text = _CLITIC.sub(lambda m: f"{m[1]} {m[2]}" if m[1] else f"{m[3]} {m[4]}", text)
    return [t for t in _TOKEN.findall(text) if re.search(r"[^\W_]", t)]


def _ngrams(tokens: list[str], n: int) -> Counter:
    return Counter(tuple(tokens[i:i + k]) for k in range(1, n + 1) for i in range(len(tokens) - k + 1))


def cider_d(candidates: Sequence[str], references: Sequence[Sequence[str]], *, n: int = 4,
            sigma: float = 6.0) -> tuple[float, list[float]]:
    """CIDEr-D of each candidate caption against its reference captions, and their mean.

    Each caption becomes TF-IDF vectors of its 1..n-grams, the IDF counted over the reference
    sets of the evaluated images (log(#images / #images whose references hold the n-gram));
    per n-gram size, the candidate's weights are clipped by the reference's (CIDEr-D's guard
    against repeating words) before the cosine, which is multiplied by a Gaussian penalty on the
    length difference (sigma); averaged over n and over the references, times 10. Identical
    captions on varied images score high (up to 10 and more), unrelated ones 0.

    The IDF comes from the evaluated set itself, so a handful of images says little and one
    image scores 0.0 by construction: fewer than `MIN_CIDER_CAPTIONS` is refused.
    """
    if len(candidates) != len(references):
        raise UserFacingError(f"CIDEr-D needs one reference set per caption; got {len(candidates)} captions and "
                              f"{len(references)} reference sets")
    if len(candidates) < MIN_CIDER_CAPTIONS:
        raise UserFacingError(
            f"CIDEr-D needs at least {MIN_CIDER_CAPTIONS} captions; got {len(candidates)}. Its IDF weights come "
            "from the evaluated set itself (one image scores 0.0 by construction): evaluate more captions"
        )
    for number, refs in enumerate(references, start=1):
        if isinstance(refs, str) or not refs:
            raise UserFacingError(f"CIDEr-D: caption {number} has reference {refs!r}; accepted: a non-empty list "
                                  "of reference captions")
    cand_tokens = [caption_tokens(c) for c in candidates]
    ref_tokens = [[caption_tokens(r) for r in refs] for refs in references]
    document_frequency: Counter = Counter()
    for refs in ref_tokens:
        document_frequency.update({g for tokens in refs for g in _ngrams(tokens, n)})
    log_images = math.log(len(references))

    def vectors(tokens: list[str]) -> tuple[list[dict], list[float]]:
        vecs: list[dict] = [{} for _ in range(n)]
        for gram, count in _ngrams(tokens, n).items():
            vecs[len(gram) - 1][gram] = count * (log_images - math.log(max(1.0, document_frequency[gram])))
        return vecs, [math.sqrt(sum(w * w for w in v.values())) for v in vecs]

    scores = []
    for cand, refs in zip(cand_tokens, ref_tokens):
        vec, norm = vectors(cand)
        total = [0.0] * n
        for ref in refs:
            ref_vec, ref_norm = vectors(ref)
            penalty = math.exp(-((len(cand) - len(ref)) ** 2) / (2 * sigma**2))
            for k in range(n):
                if norm[k] and ref_norm[k]:
                    dot = sum(min(w, ref_vec[k].get(g, 0.0)) * ref_vec[k].get(g, 0.0) for g, w in vec[k].items())
                    total[k] += dot / (norm[k] * ref_norm[k]) * penalty
        scores.append(10.0 * sum(total) / n / len(refs))
    return sum(scores) / len(scores), scores
