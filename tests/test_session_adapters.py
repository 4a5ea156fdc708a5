"""Session logic around adapters on the fake `EchoBackend` (tests/fakes.py): no model, so each
test runs in milliseconds. The model-level behaviour (adapters really change answers and never
mix) is tested on real models in test_adapter_host.py and test_compare.py."""

from __future__ import annotations

import pytest

from fakes import EchoBackend
from mmchat.backends.base import GenerationParams
from mmchat.errors import UserFacingError
from mmchat.session import ChatSession

PARAMS = GenerationParams(max_new_tokens=32, temperature=0.0)


@pytest.fixture
def session(tmp_path):
    return ChatSession(EchoBackend(), None, tmp_path / "uploads", params=PARAMS)


def ask(session, text, adapter=None) -> str:
    return list(session.send(text, params=PARAMS, adapter=adapter))[-1]


def test_each_message_answers_with_its_own_adapter_and_remembers_it(session):
    assert ask(session, "first question", "alpha") == "[alpha] first question"
    assert ask(session, "second question") == "[base] second question"
    assert ask(session, "third question", "base") == "[base] third question"
    assert ask(session, "fourth question", "beta") == "[beta] fourth question"
    assert [m.adapter for m in session.history if m.role == "assistant"] == ["alpha", None, None, "beta"]


def test_regenerate_and_undo_keep_each_answers_adapter(session):
    ask(session, "one", "alpha")
    ask(session, "two", "beta")
    assert list(session.regenerate(PARAMS))[-1] == "[beta] two"
    assert session.undo() == "two"
    assert list(session.regenerate(PARAMS))[-1] == "[alpha] one"
    assert session.backend.prepared[-1].adapter == "alpha"


def test_an_unknown_adapter_is_refused_before_anything_is_added_or_prepared(session):
    ask(session, "kept", "alpha")
    prepared = len(session.backend.prepared)
    with pytest.raises(UserFacingError, match=r"no adapter named 'gamma' is loaded; choose one of: base, alpha, beta"):
        ask(session, "refused", "gamma")
    assert [m.text for m in session.history] == ["kept", "[alpha] kept"]
    assert len(session.backend.prepared) == prepared


def test_export_and_import_keep_adapters_and_refuse_a_forged_one(session, tmp_path):
    import json
    import zipfile

    ask(session, "one", "alpha")
    ask(session, "two")
    exported = session.export_download(tmp_path / "exports")
    restored = ChatSession(EchoBackend(), None, tmp_path / "uploads2", params=PARAMS)
    restored.import_chat(exported)
    assert [m.adapter for m in restored.history if m.role == "assistant"] == ["alpha", None]

    forged = tmp_path / "forged.zip"
    with zipfile.ZipFile(exported) as source, zipfile.ZipFile(forged, "w") as target:
        for item in source.infolist():
            data = source.read(item)
            if item.filename == "chat.json":
                chat = json.loads(data)
                next(m for m in chat["messages"] if m["role"] == "assistant")["adapter"] = 7
                data = json.dumps(chat).encode()
            target.writestr(item, data)
    fresh = ChatSession(EchoBackend(), None, tmp_path / "uploads3", params=PARAMS)
    with pytest.raises(UserFacingError, match="adapter"):
        fresh.import_chat(forged)
    assert fresh.history == []
