"""The evaluation metrics on known values: VQA normalisation and accuracy, contains, CIDEr-D.

Pure functions, no models. The CIDEr-D reference figures were computed with coco-caption's
own scorer (pycocoevalcap 1.2, `CiderScorer(n=4, sigma=6.0)`) on the same tokens; the small
cases are worked out by hand below.
"""

from __future__ import annotations

import math

import pytest

from mmchat.errors import UserFacingError
from mmchat.training.metrics import (
    MIN_CIDER_CAPTIONS,
    caption_tokens,
    cider_d,
    contains_answer,
    exact_match,
    normalize_answer,
    vqa_accuracy,
)


@pytest.mark.parametrize("text, normal", [
    ("Two", "2"), ("none", "0"), ("TEN", "10"), ("the cat.", "cat"), ("A dog", "dog"), ("an apple", "apple"),
    ("1,000", "1000"), ("3.5", "3.5"), ("It costs 3.5 dollars.", "it costs 3.5 dollars"),
    ("don't", "don't"), ("dont", "don't"), ("isnt", "isn't"), ("Yes!", "yes"), ("black/white", "black white"),
    ("red, white", "red white"), ("  Two   Dogs \n", "2 dogs"), ("its", "its"), ("10:30", "10:30"),
])
def test_normalize_answer_follows_the_official_vqa_eval(text, normal):
    assert normalize_answer(text) == normal


def test_exact_match_compares_normalised_text_against_any_reference():
    assert exact_match("Two.", "2") == 1.0
    assert exact_match("The Cat", ["dog", "cat"]) == 1.0
    assert exact_match("a cat sitting", ["cat"]) == 0.0
    assert exact_match("cat", []) == 0.0


def test_vqa_accuracy_averages_over_the_leave_one_out_sets():
    others = ["dog"] * 10
    assert vqa_accuracy("cat", ["cat"] * 4 + others[:6]) == 1.0
    assert vqa_accuracy("cat", ["cat"] * 3 + others[:7]) == pytest.approx(0.9)  # (3 x 2/3 + 7 x 1) / 10
    assert vqa_accuracy("Cat.", ["cat"] * 2 + others[:8]) == pytest.approx(0.6)  # (2 x 1/3 + 8 x 2/3) / 10
    assert vqa_accuracy("cat", ["cat"] + others[:9]) == pytest.approx(0.3)  # (0 + 9 x 1/3) / 10
    assert vqa_accuracy("bird", ["cat"] + others[:9]) == 0.0
    # Fewer references: the same average, the bar lowered to the others there are.
    assert vqa_accuracy("cat", ["cat", "cat"]) == 1.0
    assert vqa_accuracy("cat", ["cat", "dog"]) == 0.5
    assert vqa_accuracy("cat", ["cat", "cat", "dog", "dog"]) == pytest.approx(0.5)  # (2 x 1/3 + 2 x 2/3) / 4
    # One reference: exact match.
    assert vqa_accuracy("the cat", ["Cat"]) == 1.0 and vqa_accuracy("cats", ["cat"]) == 0.0
    assert vqa_accuracy("cat", []) == 0.0


def test_contains_answer_matches_whole_words_and_alternatives():
    assert contains_answer("I see four dogs.", "4")
    assert contains_answer("A robin on a branch.", "bird|robin")
    assert not contains_answer("A catalogue.", "cat")
    assert contains_answer("anything", "")


def test_caption_tokens_split_like_ptb_and_drop_punctuation():
    assert caption_tokens("A dog's ball, isn't it? A black-and-white cat, 3.5 cm.") == [
        "a", "dog", "'s", "ball", "is", "n't", "it", "a", "black-and-white", "cat", "3.5", "cm"]


REFS = [
    ["A cat sits on a red sofa.", "A grey cat is sitting on the sofa."],
    ["Two dogs run across a green field.", "Dogs playing in the grass."],
    ["A cup of espresso on a wooden table.", "Coffee in a white cup."],
    ["A man rides a bicycle down the street.", "A cyclist on a city road."],
    ["A plate of pasta with tomato sauce.", "Spaghetti with red sauce on a plate."],
    ["A red bus parked near the station.", "A double-decker bus at a bus stop."],
]


def test_cider_d_equals_coco_captions_scorer_on_the_same_captions():
    candidates = ["A cat on a sofa.", "Two dogs in a field.", "A cup of coffee on a table.", "A man on a bike.",
                  "A plate of spaghetti.", "A bus on the street."]
    mean, scores = cider_d(candidates, REFS)
    expected = [1.9841955294909464, 1.5352021484436282, 2.1458531585560294, 0.6245866876665761,
                2.2752656699324016, 1.2760816982290757]
    assert scores == pytest.approx(expected, rel=1e-9)
    assert mean == pytest.approx(1.6401974820531098, rel=1e-9)


def test_cider_d_is_high_for_the_references_themselves_and_near_zero_for_unrelated_text():
    mean, _ = cider_d([refs[0] for refs in REFS], REFS)
    assert mean == pytest.approx(5.441497315452579, rel=1e-9)  # coco-caption's figure
    assert cider_d([refs[0] for refs in REFS], [refs[:1] for refs in REFS])[0] == pytest.approx(10.0)
    unrelated = ["Stock prices fell sharply today.", "The meeting is at noon.", "Rain expected tomorrow.",
                 "Please close the door.", "Quantum physics lecture notes.", "Vote for me."]
    assert cider_d(unrelated, REFS)[0] < 0.02


def test_cider_d_by_hand_clipping_and_length_penalty():
    # Five images whose words appear nowhere else: every n-gram's IDF is log(5 / 1) = w.
    refs = [["cat dog"], ["owl hen"], ["apple pear plum fig"], ["red blue green"], ["sun moon"]]
    candidates = ["cat cat", "owl hen duck", "apple pear plum fig", "red blue", "rain"]
    _, scores = cider_d(candidates, refs)
    # "cat cat" vs "cat dog": unigrams (2w) vs (w, w), clipped min(2w, w) * w / (2w * sqrt(2) w);
    # no shared bigram, no trigrams; same length.
    assert scores[0] == pytest.approx(10 * (1 / (2 * math.sqrt(2))) / 4)
    # "owl hen duck" vs "owl hen": unigrams 2w^2 / (sqrt(3) w * sqrt(2) w), bigrams w^2 / (sqrt(2) w * w),
    # one word longer: exp(-1 / 72).
    assert scores[1] == pytest.approx(10 * (2 / math.sqrt(6) + 1 / math.sqrt(2)) * math.exp(-1 / 72) / 4)
    assert scores[2] == pytest.approx(10.0)  # identical, four words: every n-gram size matches
    # "red blue" vs "red blue green": unigrams 2 / sqrt(6), bigram 1 / sqrt(2), one word shorter.
    assert scores[3] == pytest.approx(10 * (2 / math.sqrt(6) + 1 / math.sqrt(2)) * math.exp(-1 / 72) / 4)
    assert scores[4] == 0.0


def test_cider_d_refuses_too_few_captions_and_says_why():
    assert MIN_CIDER_CAPTIONS == 5
    with pytest.raises(UserFacingError, match=r"at least 5 captions; got 4.*IDF.*evaluated set"):
        cider_d(["a cat"] * 4, [["a cat"]] * 4)
    with pytest.raises(UserFacingError, match="one reference set per caption"):
        cider_d(["a cat"] * 5, [["a cat"]] * 6)
    with pytest.raises(UserFacingError, match="caption 2 has reference"):
        cider_d(["a cat"] * 5, [["a cat"], [], ["a"], ["b"], ["c"]])


def test_one_image_scores_zero_by_construction(monkeypatch):
    # Why the minimum exists: with one image every n-gram's IDF is log(1 / 1) = 0.
    from mmchat.training import metrics

    monkeypatch.setattr(metrics, "MIN_CIDER_CAPTIONS", 1)
    assert metrics.cider_d(["a cat on a sofa"], [["a cat on a sofa"]]) == (0.0, [0.0])
