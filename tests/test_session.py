"""ChatSession over the real transformers backend with a tiny random LLaVA (built from configs).

The tiny model's words are noise; these tests check the plumbing: streaming, stop, several
images, regenerate, undo, context trimming, export/import and rejected uploads.
"""

from __future__ import annotations

import json

import pytest

from mmchat.backends.base import GenerationParams
from mmchat.config import UploadLimits
from mmchat.errors import InvalidUpload, PromptTooLong, UserFacingError
from mmchat.session import ChatSession

GREEDY = GenerationParams(max_new_tokens=12, temperature=0.0)


@pytest.fixture
def session(tiny_backend, tmp_path):
    return ChatSession(tiny_backend, None, tmp_path / "uploads", params=GREEDY, system_prompt="sys")


def test_send_streams_growing_text_and_records_stats(session, cat_image):
    session.attach(cat_image)  # warm path: attaching ahead of sending is allowed
    partials = list(session.send("What animal is this?", [cat_image_path(session, cat_image)]))
    assert len(partials) >= 2
    assert all(b.startswith(a) for a, b in zip(partials, partials[1:]))
    assert [m.role for m in session.history] == ["user", "assistant"]
    stats = session.history[-1].stats
    assert stats["output_tokens"] >= 1 and stats["prompt_tokens"] > 16
    assert stats["time_to_first_token_s"] is not None and stats["finish_reason"] in ("stop", "length")


def cat_image_path(session, image):
    return session.attach(image).attachment.path


def test_multiple_images_in_one_conversation(session, cat_image, coffee_image, tiny_backend):
    first = session.attach(cat_image).attachment.path
    second = session.attach(coffee_image).attachment.path
    list(session.send("compare", [first, second]))
    list(session.send("and again", [first]))
    assert session.history[0].image_ids == [session.attach(cat_image).attachment.sha256,
                                            session.attach(coffee_image).attachment.sha256]
    # Three image slots in the last prompt: 16 image tokens each in the tiny model.
    assert session.history[-1].stats["prompt_tokens"] > 3 * 16


def test_stop_ends_generation_early_and_keeps_text(session):
    long = GenerationParams(max_new_tokens=400, temperature=0.0)
    stream = session.send("tell me a long story", params=long)
    next(stream)
    session.stop()
    rest = list(stream)
    answer = session.history[-1]
    assert answer.stats["finish_reason"] == "cancelled"
    assert answer.stats["output_tokens"] < 400
    assert rest and rest[-1] == answer.text


def test_abandoned_stream_stops_the_worker(session, tiny_backend):
    prompt = tiny_backend.prepare([{"role": "user", "content": [{"type": "text", "text": "hello"}]}], [])
    stream = tiny_backend.stream(prompt, GenerationParams(max_new_tokens=400, temperature=0.0))
    deltas = iter(stream)
    next(deltas)
    deltas.close()  # e.g. the browser went away
    assert stream.finished and stream.stats.finish_reason == "cancelled"
    assert stream.stats.output_tokens < 400
    # a session whose answer was abandoned is usable again
    answer = session.send("hello", params=GenerationParams(max_new_tokens=400, temperature=0.0))
    next(answer)
    answer.close()
    assert list(session.send("again"))


def test_regenerate_replaces_only_the_last_answer(session):
    list(session.send("first"))
    first_answer = session.history[-1]
    list(session.regenerate(GenerationParams(max_new_tokens=5, temperature=1.0, top_p=0.9)))
    assert len(session.history) == 2 and session.history[-1] is not first_answer


def test_history_cannot_change_under_a_streaming_answer(session):
    answer = session.send("long", params=GenerationParams(max_new_tokens=300, temperature=0.0))
    assert next(answer) == ""  # the question is in the history before the first token
    assert [m.role for m in session.history] == ["user", "assistant"]
    for action in (session.undo, session.clear):
        with pytest.raises(UserFacingError, match="while an answer is streaming"):
            action()
    session.stop()
    list(answer)
    assert session.undo() == "long" and session.history == []


def test_undo_returns_text_and_removes_exchange(session):
    list(session.send("one"))
    list(session.send("two"))
    assert session.undo() == "two"
    assert [m.text for m in session.history if m.role == "user"] == ["one"]
    session.clear()
    assert session.history == [] and session.undo() == ""
    with pytest.raises(UserFacingError, match="no question"):
        list(session.regenerate())


def test_context_overflow_trims_with_visible_note(tiny_backend, tmp_path):
    session = ChatSession(tiny_backend, None, tmp_path, params=GenerationParams(max_new_tokens=200, temperature=0))
    for i in range(6):
        list(session.send(f"message {i} " + "word " * 120, params=GenerationParams(max_new_tokens=4, temperature=0)))
    list(session.send("last one"))
    notes = [m for m in session.history if m.role == "note"]
    assert notes and "1024-token context" in notes[-1].text
    assert session.history[-1].role == "assistant" and session.history[-2].text == "last one"
    # an unchanged window is not announced again (regenerate sends the very same prompt)
    list(session.regenerate())
    assert len([m for m in session.history if m.role == "note"]) == len(notes)


def test_message_that_cannot_fit_is_refused_and_not_kept(session):
    limits_ok = "word " * 1500
    with pytest.raises(PromptTooLong, match="tokens but only"):
        list(session.send(limits_ok))
    assert session.history == []


def test_over_long_prompt_and_too_many_images_are_refused(tiny_backend, tmp_path, cat_image):
    session = ChatSession(tiny_backend, None, tmp_path, limits=UploadLimits(max_prompt_chars=10, max_images_per_message=1))
    with pytest.raises(UserFacingError, match="limit is 10"):
        list(session.send("x" * 11))
    path = session.attach(cat_image).attachment.path
    with pytest.raises(InvalidUpload, match="at most 1"):
        list(session.send("hi", [path, path]))
    with pytest.raises(UserFacingError, match="empty"):
        list(session.send("   "))
    assert session.history == []


def test_bad_upload_leaves_history_untouched_and_session_usable(session, tmp_path):
    bad = tmp_path / "notes.png"
    bad.write_bytes(b"%PDF-1.7 not an image")
    list(session.send("first"))
    with pytest.raises(InvalidUpload, match="notes.png"):
        list(session.send("look", [bad]))
    assert [m.role for m in session.history] == ["user", "assistant"]
    assert list(session.send("still here?"))


def test_bad_generation_params_are_named():
    with pytest.raises(UserFacingError, match="temperature 3"):
        GenerationParams(temperature=3)
    with pytest.raises(UserFacingError, match="max_new_tokens 0"):
        GenerationParams(max_new_tokens=0)
    with pytest.raises(UserFacingError, match="top_p 0"):
        GenerationParams(top_p=0)


def test_export_import_round_trip(session, tiny_backend, cat_image, tmp_path):
    path = session.attach(cat_image).attachment.path
    list(session.send("what is it?", [path]))
    json_path = session.export(tmp_path / "export")
    data = json.loads(json_path.read_text())
    sha = session.history[0].image_ids[0]
    assert data["images"][sha]["file"].startswith("images/") and (tmp_path / "export" / data["images"][sha]["file"]).is_file()

    fresh = ChatSession(tiny_backend, None, tmp_path / "other-uploads")
    fresh.import_chat(json_path)
    assert [m.text for m in fresh.history] == [m.text for m in session.history]
    assert fresh.history[0].image_ids == [sha] and sha in fresh.images
    assert fresh.system_prompt == "sys"

    zipped = session.export_zip(tmp_path / "chat.zip")
    again = ChatSession(tiny_backend, None, tmp_path / "third")
    again.import_chat(zipped)
    assert len(again.history) == 2
    # the imported session keeps chatting, with the imported image in context
    assert list(again.send("and now?"))


def test_import_rejects_tampered_exports(session, tiny_backend, cat_image, tmp_path):
    path = session.attach(cat_image).attachment.path
    list(session.send("q", [path]))
    json_path = session.export(tmp_path / "export")
    data = json.loads(json_path.read_text())
    sha = next(iter(data["images"]))
    data["images"][sha]["file"] = "../../../etc/passwd"
    json_path.write_text(json.dumps(data))
    target = ChatSession(tiny_backend, None, tmp_path / "t")
    with pytest.raises(InvalidUpload, match="outside the export folder"):
        target.import_chat(json_path)
    (tmp_path / "junk.json").write_text("{not json")
    with pytest.raises(InvalidUpload, match="not valid JSON"):
        target.import_chat(tmp_path / "junk.json")
    assert target.history == []


POISONS = {
    "stats number": (lambda d: d["messages"][1].update(stats={"time_to_first_token_s": "soon"}),
                     "time_to_first_token_s is 'soon'"),
    "stats bool": (lambda d: d["messages"][1].update(stats={"output_tokens": True}), "output_tokens is True"),
    "role": (lambda d: d["messages"][0].update(role="system"), "role is 'system'; accepted: user, assistant, note"),
    "text": (lambda d: d["messages"][0].update(text=["a"]), r"text is \['a'\]"),
    "unknown image": (lambda d: d["messages"][0].update(image_ids=["f" * 64]), "which the export lacks"),
    "image ids type": (lambda d: d["messages"][0].update(image_ids="abc"), "image_ids must be a list"),
    "message type": (lambda d: d["messages"].append("hello"), "must be an object"),
    "messages type": (lambda d: d.update(messages={"role": "user"}), "'messages' must be a list"),
    "trace hits": (lambda d: d["messages"][1].update(retrieval={"hits": "x"}), "retrieval.hits must be a list"),
    "trace score": (lambda d: d["messages"][1].update(retrieval={"images": [{"file_name": "a", "score": "high"}]}),
                    "score is 'high'"),
    "trace mode": (lambda d: d["messages"][1].update(retrieval={"mode": "<script>"}), "mode is '<script>'"),
    "image key": (lambda d: d["images"].update({"../../etc/passwd": {"file": "images/x.png"}}), "is not a sha256"),
    "system prompt": (lambda d: d.update(system_prompt=7), "system_prompt is 7"),
}


@pytest.mark.parametrize("poison", sorted(POISONS))
def test_a_poisoned_export_is_refused_whole(session, tiny_backend, cat_image, tmp_path, poison):
    path = session.attach(cat_image).attachment.path
    list(session.send("q", [path]))
    json_path = session.export(tmp_path / "export")
    data = json.loads(json_path.read_text())
    change, message = POISONS[poison]
    change(data)
    json_path.write_text(json.dumps(data))
    target = ChatSession(tiny_backend, None, tmp_path / "t", system_prompt="mine")
    list(target.send("kept question"))
    before = [(m.role, m.text) for m in target.history]
    with pytest.raises(InvalidUpload, match=message):
        target.import_chat(json_path)
    assert [(m.role, m.text) for m in target.history] == before and target.system_prompt == "mine"
    assert list(target.send("still works")), "the session is not left busy"


def test_import_drops_paths_and_unknown_keys_from_traces(session, tiny_backend, tmp_path):
    list(session.send("q"))
    session.history[-1].retrieval = {
        "query": "q", "mode": "hybrid", "used": 1, "notes": ["n"], "timings_ms": {"total": 2.5},
        "hits": [{"id": "c1", "doc_id": "d" * 64, "file_name": "a.md", "text": "t", "score": 0.1, "page": 2,
                  "image_path": "/etc/passwd", "evidence": "e", "html": "<b>x</b>"}],
        "images": [{"id": "i1", "doc_id": "d" * 64, "file_name": "cat.png", "score": 0.5, "image_path": "/tmp/x"}],
        "context_images": ["0" * 64], "extra": {"path": "/etc"},
    }
    json_path = session.export(tmp_path / "export")
    fresh = ChatSession(tiny_backend, None, tmp_path / "other")
    fresh.import_chat(json_path)
    trace = fresh.history[-1].retrieval
    assert trace["hits"] == [{"id": "c1", "doc_id": "d" * 64, "file_name": "a.md", "text": "t", "score": 0.1,
                              "page": 2, "evidence": "e"}]
    assert trace["images"] == [{"id": "i1", "doc_id": "d" * 64, "file_name": "cat.png", "score": 0.5}]
    assert trace["context_images"] == [] and "extra" not in trace and trace["timings_ms"] == {"total": 2.5}


def test_export_download_is_random_and_old_exports_are_purged(session, tmp_path):
    import os
    import time

    from mmchat.session import purge_exports

    list(session.send("q"))
    old = tmp_path / "exports" / "gone" / "mmchat-chat-1.zip"
    old.parent.mkdir(parents=True)
    old.write_bytes(b"x")
    os.utime(old, (time.time() - 4000, time.time() - 4000))
    first = session.export_download(tmp_path / "exports" / "me")
    second = session.export_download(tmp_path / "exports" / "me")
    assert first != second and first.parent == second.parent == tmp_path / "exports" / "me"
    assert not old.exists() and not old.parent.exists()
    assert purge_exports(tmp_path / "exports", max_age_s=0, now=time.time() + 1) == 2
    assert not any((tmp_path / "exports").iterdir())
