"""The offline default on real shipped weights: SmolLM2-135M-Instruct + EfficientNet-Lite0.

This is the model a newcomer meets with no GPU and no hub: it must answer sensibly about real
photos (scikit-image's cat and coffee), stream, and say that it is a stand-in.
"""

from __future__ import annotations

import pytest

from mmchat.backends.base import GenerationParams
from mmchat.backends.offline import STAND_IN_NOTICE, flatten
from mmchat.config import load_config
from mmchat.runtime import Runtime
from mmchat.ui.style import status_details
from mmchat.session import ChatSession

pytestmark = pytest.mark.slow
GREEDY = GenerationParams(max_new_tokens=48, temperature=0.0)


@pytest.fixture
def session(offline_backend, standin_encoder, tmp_path):
    return ChatSession(offline_backend, standin_encoder, tmp_path, params=GREEDY,
                       system_prompt="You are a helpful assistant. Answer briefly and accurately.")


def ask(session, image, question):
    path = session.attach(image).attachment.path
    partials = list(session.send(question, [path]))
    return partials, session.history[-1].text


def test_cat_photo_answer_mentions_a_cat(session, cat_image):
    partials, answer = ask(session, cat_image, "What animal is this?")
    print("cat ->", answer)
    assert "cat" in answer.lower()
    assert len(partials) > 3, "the answer streams in pieces"


def test_coffee_photo_answer_mentions_coffee(session, coffee_image):
    _, answer = ask(session, coffee_image, "What is in the cup?")
    print("coffee ->", answer)
    assert any(word in answer.lower() for word in ("coffee", "espresso", "cup"))


def test_image_reaches_the_model_as_classifier_text(offline_backend, cat_image):
    texts = offline_backend.pathway.render([cat_image])
    assert texts[0].startswith("[Image 1: a photo of a cat (") and "tiger cat" in texts[0]
    flat = flatten([{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "hi"}]}], texts)
    assert flat[0]["role"] == "system" and texts[0] in flat[1]["content"]


def test_ui_says_it_is_a_stand_in(offline_backend, standin_encoder, tmp_path):
    assert offline_backend.info.is_stand_in
    config = load_config(env={}, overrides={"": {"data_dir": str(tmp_path)}})
    status = status_details(Runtime(config, backend=offline_backend, encoder=standin_encoder))
    assert STAND_IN_NOTICE in status and "offline" in status


def test_each_distinct_image_is_classified_once_across_turns(offline_backend, cat_image, coffee_image, monkeypatch):
    pathway = offline_backend.pathway
    calls = []
    real = pathway.classifier.classify
    monkeypatch.setattr(pathway.classifier, "classify", lambda imgs, top_k: calls.append(len(imgs)) or real(imgs, top_k=top_k))
    first = pathway.render([cat_image.rotate(90, expand=True), coffee_image])
    calls_after_first = list(calls)
    again = pathway.render([coffee_image, cat_image.rotate(90, expand=True)])
    assert first[0].split(":", 1)[1] == again[1].split(":", 1)[1]  # same labels, renumbered
    assert calls_after_first and sum(calls_after_first) >= 1  # the rotated cat was new
    assert calls == calls_after_first  # the second turn classified nothing
