"""Held-out evaluation through real backends: the tiny LLaVA with a real LoRA adapter, and the
offline SmolLM2 built on a trainer's copy of its base.

Real parts: the tiny random LLaVA (built from configs) behind the real `LlavaBackend`, peft
adapters from `make_adapters` loaded through its `AdapterHost`, a real photo written to disk,
the real offline weights and classifier. The only stand-in is for `Example`'s `turns` and
`images` fields while examples.py does not have them yet.
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import dataclasses  # noqa: E402
from types import SimpleNamespace  # noqa: E402

import pytest  # noqa: E402

from mmchat.config import PRESETS  # noqa: E402
from mmchat.errors import UserFacingError  # noqa: E402
from mmchat.training.evaluate import (  # noqa: E402
    EvalResult,
    Evaluator,
    LabelledPathway,
    evaluate_examples,
    evaluation_backend,
    reference_answer,
)
from mmchat.training.examples import Example  # noqa: E402
from mmchat.training.metrics import MIN_CIDER_CAPTIONS, exact_match, vqa_accuracy  # noqa: E402

SYSTEM = "You are a helpful assistant."
CAPTIONS = [
    ("Describe the photo.", "A cat sits on a red sofa."),
    ("Caption this picture.", "Two dogs run across a green field."),
    ("What does the photo show?", "A cup of espresso on a wooden table."),
    ("Write a caption.", "A man rides a bicycle down the street."),
    ("Describe the image in one sentence.", "A plate of pasta with tomato sauce."),
]


def example(question: str, answer: str, **fields):
    """An `Example`; one with `turns`/`images` as a stand-in until examples.py has those fields."""
    known = {f.name for f in dataclasses.fields(Example)}
    if set(fields) <= known:
        return Example(question, answer, **fields)
    defaults = {"image_labels": (), "kind": "", "expected": "", "extra": {}, "turns": (), "images": ()}
    return SimpleNamespace(question=question, answer=answer, **{**defaults, **fields})


@pytest.fixture
def photo(tmp_path, cat_image):
    path = tmp_path / "cat.png"
    cat_image.resize((64, 48)).save(path)
    return path


@pytest.fixture
def tiny_adapter(tiny_backend, make_adapters, tmp_path):
    """A real LoRA adapter loaded on the shared tiny backend for one test (unloaded after)."""
    store = make_adapters(tiny_backend, tmp_path / "store", {"eval-test": 11})
    (stored,), _ = store.scan()
    tiny_backend.adapters.load("eval-test", stored.folder)
    yield "eval-test"
    tiny_backend.adapters.unload("eval-test")


def test_evaluate_examples_scores_base_and_adapter_on_the_tiny_model(tiny_backend, tiny_adapter, photo):
    examples = [example(q, a, kind="caption") for q, a in CAPTIONS]
    examples.append(example("What animal is this?", "cat", kind="vqa", images=(str(photo),)))
    examples.append(example("What colour is the sofa?", "red", kind="vqa",
                            extra={"answers": ["red"] * 4 + ["maroon"] * 6}))
    calls = []
    evaluator = Evaluator(tiny_backend, SYSTEM, max_new_tokens=6)
    result = evaluate_examples(evaluator, examples, tiny_adapter,
                               progress=lambda done, total: calls.append((done, total)))

    assert isinstance(result, EvalResult)
    assert calls == [(n, 2 * len(examples)) for n in range(1, 2 * len(examples) + 1)]
    metrics = result.metrics
    assert set(metrics) == {"held_out", "base", "adapter"}
    held_out = metrics["held_out"]
    assert held_out["count"] == 7 and held_out["captions"] == 5 and "notes" not in held_out
    assert "caption 5" in held_out["description"] and "vqa 2" in held_out["description"]
    for side in ("base", "adapter"):
        # Captions are the majority: CIDEr-D is the headline (the card shows the first key).
        assert list(metrics[side]) == ["cider_d", "exact_match", "vqa_accuracy", "contains"]
        assert metrics[side]["cider_d"] >= 0.0
        assert all(0.0 <= metrics[side][k] <= 1.0 for k in ("exact_match", "vqa_accuracy", "contains"))

    gallery = result.gallery
    assert [set(row) for row in gallery] == [{"prompt", "image", "expected", "base", "adapter"}] * 7
    assert [row["image"] for row in gallery] == [""] * 5 + [str(photo), ""]
    assert gallery[0]["prompt"] == "Describe the photo." and gallery[5]["prompt"] == "[Image 1]\nWhat animal is this?"
    assert gallery[0]["expected"] == "A cat sits on a red sofa."
    assert any(row["base"] != row["adapter"] for row in gallery), gallery  # the adapter changes the answers
    for side in ("base", "adapter"):  # the scores are those of the replies the gallery shows
        replies = [row[side] for row in gallery]
        em = sum(exact_match(r, e.answer) for r, e in zip(replies, examples)) / 7
        vqa = (sum(vqa_accuracy(r, [e.answer]) for r, e in zip(replies[:6], examples))
               + vqa_accuracy(replies[6], examples[6].extra["answers"])) / 7
        assert metrics[side]["exact_match"] == round(em, 3) and metrics[side]["vqa_accuracy"] == round(vqa, 3)


def test_a_style_run_leads_with_format_and_explains_a_missing_cider(tiny_backend, tiny_adapter):
    examples = [example(q, a, kind="caption") for q, a in CAPTIONS[:2]]
    examples.append(example("How many legs does a cat have?", "4", kind="count", expected="4|four"))
    evaluator = Evaluator(tiny_backend, SYSTEM, max_new_tokens=3)
    metrics = evaluate_examples(evaluator, examples, tiny_adapter, style="one-word").metrics

    assert list(metrics["adapter"]) == ["format", "format_and_answers", "exact_match", "vqa_accuracy", "contains"]
    assert metrics["held_out"]["style"] == "one-word"
    (note,) = metrics["held_out"]["notes"]
    assert "2 caption" in note and f"at least {MIN_CIDER_CAPTIONS}" in note and "IDF" in note


def test_ask_example_sends_earlier_turns_as_history_and_the_photo_where_its_marker_is(tiny_backend, spy, photo):
    turns = (("user", "What colour is the sky?"), ("assistant", "Blue."),
             ("user", "<image>\nAnd this animal?"), ("assistant", "A cat."))
    chat = example("What colour is the sky?", "A cat.", turns=turns, images=(str(photo),))
    evaluator = Evaluator(tiny_backend, SYSTEM, max_new_tokens=2)
    evaluator.ask_example(chat)

    (messages, images), = spy
    assert [m["role"] for m in messages] == ["system", "user", "assistant", "user"]
    assert messages[2]["content"] == [{"type": "text", "text": "Blue."}]
    assert messages[3]["content"] == [{"type": "image"}, {"type": "text", "text": "And this animal?"}]
    assert "A cat." not in str(messages)  # the answer to predict is not in the prompt
    assert len(images) == 1 and images[0].mode == "RGB" and images[0].size == (64, 48)
    assert reference_answer(chat) == "A cat."
    assert evaluator.example_text(chat).splitlines() == [
        "[Image 1]", "user: What colour is the sky?", "assistant: Blue.", "user: And this animal?"]

    plain = tuple((role, text.replace("<image>\n", "")) for role, text in turns)
    history, _ = evaluator.example_prompt(example("And this animal?", "A cat.", turns=plain, images=(str(photo),)))
    assert [turn.image_ids for turn in history] == [("image-0",), (), ()]  # no markers: the first user turn
    twice = example("x", "A cat.", turns=(("user", "<image> <image> Compare."), ("assistant", "A cat.")),
                    images=(str(photo),))
    with pytest.raises(UserFacingError, match="2 <image> markers and 1 images"):
        evaluator.example_prompt(twice)


def test_labels_without_a_photo_are_refused_on_a_model_that_sees_pixels(tiny_backend):
    evaluator = Evaluator(tiny_backend, SYSTEM, max_new_tokens=2)
    assert not hasattr(tiny_backend, "pathway")  # nothing was wrapped on a backend without one
    with pytest.raises(UserFacingError, match="image labels but no image file.*tiny"):
        evaluator.ask_example(example("What is this?", "a cat", image_labels=(("tabby", 0.9),)))


def test_evaluation_backend_wraps_a_trainers_copy_as_chat_serves_it(model_cache_dir, tmp_path):
    from peft import LoraConfig, get_peft_model

    from mmchat.backends.llava import LlavaBackend
    from mmchat.backends.offline import ClassifierLabelPathway, OfflineBackend
    from mmchat.backends.registry import load_base_copy

    offline = PRESETS["offline"]
    backend = evaluation_backend(*load_base_copy(offline, model_cache_dir), offline, model_cache_dir)
    assert isinstance(backend, OfflineBackend) and isinstance(backend.pathway, ClassifierLabelPathway)
    assert backend.info.preset == "offline" and backend.info.is_stand_in
    evaluator = Evaluator(backend, SYSTEM, max_new_tokens=4)
    assert isinstance(backend.pathway, LabelledPathway)
    photo_question = example("What animal is this?", "cat", image_labels=(("tabby cat", 0.8), ("tiger cat", 0.1)))
    assert evaluator.example_text(photo_question).startswith("[Image 1: a photo of a cat (tabby cat 80%")
    assert evaluator.ask_example(photo_question)  # the real offline chat path answers

    tiny = PRESETS["tiny"]
    model, processor = load_base_copy(tiny, model_cache_dir)
    assert isinstance(evaluation_backend(model, processor, tiny, model_cache_dir), LlavaBackend)
    trained = get_peft_model(model, LoraConfig(r=2, target_modules=["q_proj"]))
    with pytest.raises(ValueError, match="bare base model"):
        evaluation_backend(trained, processor, tiny, model_cache_dir)
