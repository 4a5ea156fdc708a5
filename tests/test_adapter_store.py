"""The adapter store and cards: complete folders only, cards checked field by field, the base
fingerprint, and a published adapter that plain peft loads and the host switches to.

Real parts: files on disk, real peft LoRA weights on the tiny random LLaVA (built from configs),
safetensors. A "killed publish" is a writer that raises part-way.
"""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pytest

from mmchat.adapters.card import CARD_FILE, AdapterCard, CardError, base_fingerprint
from mmchat.adapters.store import AdapterStore
from mmchat.errors import UserFacingError

FINGERPRINT = "a" * 64


def card(name: str = "one-word", fingerprint: str = FINGERPRINT, **values) -> AdapterCard:
    fields = dict(name=name, description="answers with one word", task="vqa-short", base_model="builtin:test",
                  base_fingerprint=fingerprint, rank=8, alpha=16, target_modules=("q_proj", "v_proj"))
    fields.update(values)
    return AdapterCard(**fields)


def fake_weights(folder: Path) -> None:
    """peft's two files (their content is not read by the store; the host test loads real ones)."""
    import numpy as np
    from safetensors.numpy import save_file

    (folder / "adapter_config.json").write_text(json.dumps({"peft_type": "LORA", "r": 8}))
    save_file({"w": np.zeros(2, dtype=np.float32)}, str(folder / "adapter_model.safetensors"))


def test_publish_writes_the_card_last_and_scan_lists_only_complete_adapters(tmp_path):
    store = AdapterStore(tmp_path / "adapters")
    published = store.publish(card(), fake_weights)
    assert published.folder == tmp_path / "adapters" / "one-word" and published.peft_type == "LORA"
    assert (published.folder / CARD_FILE).is_file()

    def killed(folder: Path) -> None:
        fake_weights(folder)
        raise KeyboardInterrupt("killed part-way")

    with pytest.raises(KeyboardInterrupt):
        store.publish(card("caption"), killed)
    assert not (tmp_path / "adapters" / "caption").exists()
    assert [p.name for p in (tmp_path / "adapters").iterdir()] == ["one-word"]  # no staging leftovers
    # Folders the store did not publish completely are skipped with the reason.
    incomplete = tmp_path / "adapters" / "half"
    incomplete.mkdir()
    fake_weights(incomplete)
    pickled = tmp_path / "adapters" / "pickled"
    shutil.copytree(published.folder, pickled)
    (pickled / CARD_FILE).write_text(card("pickled").to_json())
    (pickled / "adapter_model.bin").write_bytes(b"\x80\x04")
    renamed = tmp_path / "adapters" / "renamed"
    shutil.copytree(published.folder, renamed)
    adapters, skipped = store.scan()
    assert [a.name for a in adapters] == ["one-word"]
    reasons = dict(skipped)
    assert "no adapter_card.json" in reasons["half"]
    assert "pickled weights (.bin/.pt) are refused" in reasons["pickled"]
    assert "its card names it 'one-word'" in reasons["renamed"]
    with pytest.raises(UserFacingError, match="already exists"):
        store.publish(card(), fake_weights)
    store.delete("one-word")
    assert store.scan()[0] == []


def test_cards_are_checked_field_by_field():
    good = json.loads(card().to_json())
    assert AdapterCard.from_json(json.dumps(good)) == card(created=good["created"])
    for key, value, message in [
        ("format", "other/1", "format is 'other/1'"),
        ("name", "../up", "name is '../up'"),
        ("rank", 0, "rank is 0; expected an integer 1..256"),
        ("rank", True, "rank is True"),
        ("base_fingerprint", "short", "expected a sha256"),
        ("target_modules", [], "target_modules is []"),
        ("metrics", [1], "metrics must be an object"),
        ("created", "today", "created is 'today'"),
    ]:
        with pytest.raises(CardError, match=re.escape(message)):
            AdapterCard.from_json(json.dumps({**good, key: value}))
    with pytest.raises(CardError, match="not valid JSON"):
        AdapterCard.from_json("{")


def test_only_adapters_of_the_loaded_base_are_offered_and_the_others_say_which_base(tmp_path):
    store = AdapterStore(tmp_path)
    store.publish(card("ours"), fake_weights)
    store.publish(card("theirs", fingerprint="b" * 64, base_model="hf-hub:org/other"), fake_weights)
    usable, refused = store.compatible(FINGERPRINT)
    assert [a.name for a in usable] == ["ours"]
    assert refused == [f"theirs: trained on hf-hub:org/other (fingerprint bbbbbbbbbbbb…), "
                       f"not the loaded base (fingerprint aaaaaaaaaaaa…)"]


def test_the_fingerprint_follows_shapes_and_vocabulary_not_bookkeeping():
    config = {"hidden_size": 64, "num_hidden_layers": 2, "text_config": {"vocab_size": 10}}
    vocab = {"a": 0, "b": 1}
    same = base_fingerprint({**config, "_name_or_path": "/elsewhere", "transformers_version": "9"}, vocab)
    assert base_fingerprint(config, vocab) == same
    assert base_fingerprint({**config, "hidden_size": 128}, vocab) != same
    assert base_fingerprint(config, {"a": 0, "c": 1}) != same


def test_a_published_peft_adapter_loads_with_plain_peft_and_in_the_host(tmp_path, model_cache_dir):
    import torch
    from peft import LoraConfig, PeftModel, get_peft_model

    from mmchat.backends.base import GenerationParams
    from mmchat.backends.llava import LlavaBackend
    from mmchat.config import PRESETS

    def tiny():
        return LlavaBackend.from_preset(PRESETS["tiny"], model_cache_dir)

    backend = tiny()
    fingerprint = base_fingerprint(backend.model.config.to_dict(), backend.processor.tokenizer.get_vocab())
    torch.manual_seed(3)
    lora = LoraConfig(r=4, lora_alpha=64, target_modules=r".*language_model.*\.(q_proj|v_proj)", init_lora_weights=False)
    trained = get_peft_model(tiny().model, lora)
    store = AdapterStore(tmp_path)
    stored = store.publish(card("shouty", fingerprint=fingerprint, rank=4, alpha=64), trained.save_pretrained)
    assert [a.name for a in store.compatible(fingerprint)[0]] == ["shouty"]
    PeftModel.from_pretrained(tiny().model, str(stored.folder))  # the standard format
    backend.adapters.load(stored.name, stored.folder)
    messages = [{"role": "user", "content": [{"type": "text", "text": "hello"}]}]
    greedy = GenerationParams(max_new_tokens=6, temperature=0.0)
    with_adapter = "".join(backend.stream(backend.prepare(messages, [], adapter="shouty"), greedy))
    assert with_adapter != "".join(backend.stream(backend.prepare(messages, []), greedy))
