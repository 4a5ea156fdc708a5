"""AdapterRegistry on real parts: a real store on disk, real peft adapters, the tiny LLaVA.

Each test builds its own tiny backend (loading adapters changes the model it is given).
"""

from __future__ import annotations

import dataclasses
import json
import shutil

import pytest

from mmchat.adapters.card import CARD_FILE
from mmchat.adapters.registry import BASE_LABEL, AdapterRegistry
from mmchat.backends.base import GenerationParams
from mmchat.errors import UserFacingError

GREEDY = GenerationParams(max_new_tokens=6, temperature=0.0)
MESSAGES = [{"role": "user", "content": [{"type": "text", "text": "Say something."}]}]


@pytest.fixture
def backend(model_cache_dir):
    from mmchat.backends.llava import LlavaBackend
    from mmchat.config import PRESETS

    return LlavaBackend.from_preset(PRESETS["tiny"], model_cache_dir)


def _answer(backend, adapter=None) -> str:
    return "".join(backend.stream(backend.prepare(MESSAGES, [], adapter=adapter), GREEDY))


def test_sync_loads_the_adapters_that_fit_and_says_why_the_others_are_not_offered(backend, make_adapters, tmp_path):
    store = make_adapters(backend, tmp_path / "store", {"alpha": 1, "beta": 2, "other-base": 3})
    # One trained on another base: its card names a different fingerprint.
    card_path = store.root / "other-base" / CARD_FILE
    card = json.loads(card_path.read_text())
    card.update(base_fingerprint="f" * 64, base_model="hf-hub:someone/else")
    card_path.write_text(json.dumps(card))
    # One incomplete (no card), one with pickled weights.
    shutil.copytree(store.root / "alpha", store.root / "half")
    (store.root / "half" / CARD_FILE).unlink()
    shutil.copytree(store.root / "beta", store.root / "pickled")
    card = json.loads((store.root / "pickled" / CARD_FILE).read_text())
    (store.root / "pickled" / CARD_FILE).write_text(json.dumps({**card, "name": "pickled"}))
    (store.root / "pickled" / "adapter_model.bin").write_bytes(b"\x80\x04")

    registry = AdapterRegistry(store, backend).sync()

    assert [a.name for a in registry.adapters()] == ["alpha", "beta"]
    assert backend.adapters.names == ["alpha", "beta"]
    assert registry.choices()[0] == (BASE_LABEL, "base")
    assert registry.choices()[1] == ("alpha — test adapter alpha", "alpha")
    assert registry.summary() == "2 adapters"
    notes = "\n".join(registry.notes)
    assert "other-base: trained on hf-hub:someone/else" in notes
    assert f"not the loaded base {backend.info.source} (fingerprint {backend.base_fingerprint()[:12]}" in notes
    assert "half: no adapter_card.json" in notes
    assert "pickled: pickled weights (.bin/.pt) are refused" in notes
    answers = {name: _answer(backend, name) for name in ("alpha", "beta", "base")}
    assert len(set(answers.values())) == 3, answers


def test_delete_unloads_and_a_broken_weights_file_does_not_stop_the_others(backend, make_adapters, tmp_path):
    store = make_adapters(backend, tmp_path / "store", {"alpha": 1, "beta": 2})
    (store.root / "beta" / "adapter_model.safetensors").write_bytes(b"not safetensors at all")
    registry = AdapterRegistry(store, backend).sync()
    assert [a.name for a in registry.adapters()] == ["alpha"]
    assert any(note.startswith("beta: could not be loaded") for note in registry.notes), registry.notes

    registry.delete("alpha")
    assert registry.adapters() == [] and backend.adapters.names == []
    assert not (store.root / "alpha").exists()
    with pytest.raises(UserFacingError, match="no adapter named 'alpha' is loaded"):
        registry.delete("alpha")


def test_a_second_sync_picks_up_new_adapters_and_drops_removed_ones(backend, make_adapters, tmp_path):
    store = make_adapters(backend, tmp_path / "store", {"alpha": 1})
    registry = AdapterRegistry(store, backend).sync()
    alpha = _answer(backend, "alpha")
    make_adapters(backend, tmp_path / "store", {"beta": 2})
    shutil.rmtree(store.root / "alpha")
    registry.sync()
    assert backend.adapters.names == ["beta"] and [a.name for a in registry.adapters()] == ["beta"]
    assert _answer(backend, "beta") != alpha


def test_weights_that_do_not_fit_leave_the_base_as_it_was(backend, make_adapters, tmp_path):
    before = _answer(backend)
    store = make_adapters(backend, tmp_path / "store", {"alpha": 1})
    config_path = store.root / "alpha" / "adapter_config.json"
    config = json.loads(config_path.read_text())
    config_path.write_text(json.dumps({**config, "r": 8}))  # the weights are rank 4: peft fails after injecting
    registry = AdapterRegistry(store, backend).sync()
    assert registry.adapters() == [] and backend.adapters.names == []
    assert any(note.startswith("alpha: could not be loaded") for note in registry.notes), registry.notes
    assert backend.adapters.model is backend.model
    assert not any("lora" in name for name, _ in backend.model.named_modules())
    assert _answer(backend) == before


def test_shipped_and_user_adapters_are_listed_and_a_user_copy_never_shadows_a_shipped_one(
        backend, make_adapters, tmp_path):
    from mmchat.adapters.store import AdapterStore

    make_adapters(backend, tmp_path / "shipped", {"alpha": 1})
    make_adapters(backend, tmp_path / "user", {"beta": 2})
    make_adapters(backend, tmp_path / "elsewhere", {"alpha": 7})
    shutil.copytree(tmp_path / "elsewhere" / "alpha", tmp_path / "user" / "alpha")  # copied by hand
    shutil.copytree(tmp_path / "user" / "beta", tmp_path / "user" / "half")
    (tmp_path / "user" / "half" / CARD_FILE).unlink()
    shipped = AdapterStore(tmp_path / "shipped", read_only=True)
    shipped_answer = _answer(AdapterRegistry(shipped, backend).sync().backend, "alpha")
    copied_answer = _answer(AdapterRegistry(AdapterStore(tmp_path / "elsewhere"), backend).sync().backend, "alpha")
    assert copied_answer != shipped_answer
    registry = AdapterRegistry(shipped, backend, user_store=AdapterStore(tmp_path / "user")).sync()

    assert [(a.name, registry.store_label(a)) for a in registry.adapters()] == [("alpha", "shipped"), ("beta", "yours")]
    assert registry.get("alpha").folder == tmp_path / "shipped" / "alpha"
    notes = "\n".join(registry.notes)
    assert f"alpha: is the name of a shipped adapter; your copy in {tmp_path / 'user'} is not loaded" in notes
    assert "half: no adapter_card.json" in notes
    assert registry.reserved_names() == {"alpha", "beta", "half"}
    assert _answer(backend, "alpha") == shipped_answer, "the shipped alpha answers, not the copy"

    # Publishing under a shipped name is refused, and a shipped adapter cannot be deleted.
    with pytest.raises(UserFacingError, match="'alpha' is the name of a shipped adapter; choose another name"):
        registry.user_store.publish(dataclasses.replace(registry.get("beta").card, name="alpha"), lambda folder: None)
    with pytest.raises(UserFacingError, match=r"'alpha' is a shipped adapter .* read-only"):
        registry.delete("alpha")
    assert (tmp_path / "shipped" / "alpha").is_dir() and "alpha" in backend.adapters.names
    registry.delete("beta")
    assert [a.name for a in registry.adapters()] == ["alpha"] and "beta" not in backend.adapters.names
    registry.delete("half")  # the user's own folder, though it never loaded
    assert not (tmp_path / "user" / "half").exists()
