"""Prompt building and context fitting (pure functions; token counts from a stand-in counter)."""

from __future__ import annotations

import pytest

from mmchat.errors import PromptTooLong
from mmchat.prompt import Turn, fit_to_context, render_messages


def words(messages, image_ids):
    """Counts words plus 10 per image: a simple, exact stand-in for a tokenizer."""
    total = 0
    for m in messages:
        for item in m["content"]:
            total += len(item["text"].split()) if item["type"] == "text" else 10
    return total


def test_render_orders_images_and_skips_notes():
    turns = [
        Turn("user", "compare these", ("a", "b")),
        Turn("note", "trimmed"),
        Turn("assistant", "they differ"),
        Turn("user", "and this?", ("c",)),
    ]
    messages, ids = render_messages("be brief", turns)
    assert [m["role"] for m in messages] == ["system", "user", "assistant", "user"]
    assert ids == ["a", "b", "c"]
    assert [i["type"] for i in messages[1]["content"]] == ["image", "image", "text"]


def test_consecutive_same_role_turns_are_merged():
    messages, _ = render_messages("", [Turn("user", "one"), Turn("user", "two")])
    assert len(messages) == 1 and [i["text"] for i in messages[0]["content"]] == ["one", "two"]


def test_fit_drops_oldest_exchanges_first():
    turns = []
    for i in range(5):
        turns += [Turn("user", f"question {i} " + "x " * 20), Turn("assistant", "answer " * 20)]
    turns.append(Turn("user", "final question"))
    prompt = fit_to_context("sys", turns, words, context_length=150, reserve_for_answer=50)
    assert prompt.dropped_turns > 0 and prompt.prompt_tokens <= 100
    texts = [i["text"] for m in prompt.messages for i in m["content"] if i["type"] == "text"]
    assert texts[-1] == "final question"
    assert not any("question 0" in t for t in texts)


def test_fit_keeps_everything_when_it_fits():
    turns = [Turn("user", "hi"), Turn("assistant", "hello"), Turn("user", "bye")]
    prompt = fit_to_context("", turns, words, context_length=1000, reserve_for_answer=100)
    assert prompt.dropped_turns == 0 and len(prompt.messages) == 3


def test_latest_message_too_long_is_refused_with_numbers():
    with pytest.raises(PromptTooLong, match=r"needs \d+ tokens but only 50 fit"):
        fit_to_context("", [Turn("user", "w " * 500)], words, context_length=100, reserve_for_answer=50)
