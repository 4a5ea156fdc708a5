"""The adapter store and cards: complete folders only, cards checked field by field, the base
fingerprint, and a published adapter that plain peft loads and the host switches to.

Real parts: files on disk, real peft LoRA weights on the tiny random LLaVA (built from configs),
safetensors. A "killed publish" is a writer that raises part-way.
"""

from __future__ import annotations

import json
import os
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


# ----- staging shared by processes: only leftovers of processes that are gone are removed -----
def test_another_process_opening_the_store_keeps_a_publish_in_progress(tmp_path):
    import subprocess
    import sys

    root = tmp_path / "adapters"
    store = AdapterStore(root)
    seen = []

    def write_while_another_process_opens_the_store(folder: Path) -> None:
        fake_weights(folder)
        seen.append(folder.name)
        # A trainer process (or the server) opens the same store while this publish is staged.
        subprocess.run([sys.executable, "-c", "import sys; from mmchat.adapters.store import AdapterStore; "
                        "AdapterStore(sys.argv[1])", str(root)], check=True, timeout=60)
        AdapterStore(root)  # and this process too
        assert folder.is_dir(), "the staged publish was deleted by another opener"

    published = store.publish(card(), write_while_another_process_opens_the_store)
    assert published.folder == root / "one-word" and store.scan()[0][0].name == "one-word"
    assert re.fullmatch(rf"\.staging-one-word-{os.getpid()}-[a-z0-9_]+", seen[0]), seen
    assert [p.name for p in root.iterdir()] == ["one-word"]


def test_staging_leftovers_go_only_when_their_process_is_gone_or_they_are_old(tmp_path):
    import subprocess
    import time

    from mmchat.files import process_alive

    root = tmp_path / "adapters"
    AdapterStore(root)
    sleeper = subprocess.Popen(["sleep", "60"])
    finished = subprocess.Popen(["true"])
    finished.wait()
    try:
        folders = {
            "mine": root / f".staging-run-1-{os.getpid()}-a1b2c3d4",  # this process: a publish in progress
            "child": root / f".staging-x-{sleeper.pid}-zz_9",  # a live trainer process
            "dead": root / f".staging-x-{finished.pid}-abcd1234",  # its process has exited
            "old format": root / ".staging-one-word-k3j4h5g6",  # no pid: from before pids were named
            "stale": root / f".staging-y-{os.getpid()}-qqqq1111",  # alive, but untouched for two hours
        }
        for folder in folders.values():
            folder.mkdir()
            (folder / "adapter_config.json").write_text("{}")
        two_hours_ago = time.time() - 7200
        os.utime(folders["stale"], (two_hours_ago, two_hours_ago))

        AdapterStore(root)
        assert {k for k, f in folders.items() if f.exists()} == {"mine", "child"}

        sleeper.kill()  # killed but not yet reaped: a zombie is not a live process
        deadline = time.time() + 10
        while process_alive(sleeper.pid) and time.time() < deadline:
            time.sleep(0.05)
        assert not process_alive(sleeper.pid)
        AdapterStore(root)
        assert {k for k, f in folders.items() if f.exists()} == {"mine"}
    finally:
        sleeper.kill()
        sleeper.wait()


# ----- the shipped store is read-only; the user's may not take a shipped name -----------------
def test_shipped_store_is_read_only_and_its_names_are_refused_in_the_user_store(tmp_path):
    AdapterStore(tmp_path / "shipped").publish(card(), fake_weights)  # as the project's build does
    shipped = AdapterStore(tmp_path / "shipped", read_only=True)
    user = AdapterStore(tmp_path / "user", shipped=shipped)
    with pytest.raises(UserFacingError, match=r"'one-word' is the name of a shipped adapter; choose another name"):
        user.publish(card(), fake_weights)
    assert list((tmp_path / "user").iterdir()) == [], "nothing is left behind"
    with pytest.raises(UserFacingError, match=r"'one-word' is a shipped adapter .* and read-only"):
        shipped.delete("one-word")
    with pytest.raises(UserFacingError, match="read-only"):
        shipped.publish(card("other"), fake_weights)
    assert [a.name for a in shipped.scan()[0]] == ["one-word"]
    assert user.publish(card("mine"), fake_weights).folder == tmp_path / "user" / "mine"
    # A read-only store is never created (the app writes nothing into the source tree).
    missing = AdapterStore(tmp_path / "not-there", read_only=True)
    assert missing.scan() == ([], []) and not (tmp_path / "not-there").exists()
